"""`segbatch export`: turn a store into files for people and GIS tools (COG, overlay video, PNG panels)."""

from __future__ import annotations

from pathlib import Path

import click

from segbatch.cli.options import LOCATION, SOURCE_HELP, overwrite_opt, path_type, quiet_opt, refuse_existing

# as in segbatch.export, which imports numpy: kept here so `segbatch --help` stays instant
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")


def _creation_options(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """Repeated --co KEY=VALUE -> {KEY: VALUE} (keys upper-cased; a later one wins, as with rio)."""
    if not values:
        return {}
    from segbatch.errors import InputError
    from segbatch.export import parse_creation_option

    options: dict[str, str] = {}
    for text in values:
        try:
            key, value = parse_creation_option(text)
        except InputError as exc:
            raise click.BadParameter(str(exc).removeprefix("--co ")) from None
        options[key] = value
    return options


@click.command()
@click.argument("store", type=LOCATION)
@click.option(
    "--to",
    type=path_type(),
    required=True,
    help="labels.tif (raster store); overlay.mp4 (or .mkv/.mov), or a folder for PNG frames (video store). "
    "A job of many inputs: with --group one input, else a pattern with {name} for every input, e.g. 'overlays/{name}.mp4'.",
)
@click.option("--group", metavar="NAME", help="A job of many inputs: export the group of input NAME.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Video: opacity of the label colours.")
@click.option(
    "--what",
    type=click.Choice(["labels", "uncertainty", "entropy", "confidence"]),
    default="labels",
    show_default=True,
    help="Raster: the array to export as a COG.",
)
@click.option(
    "--co",
    "creation_options",
    metavar="KEY=VALUE",
    multiple=True,
    callback=_creation_options,
    help="Raster: a GDAL creation option for the COG, as with rio/gdal_translate (repeatable), e.g. --co COMPRESS=ZSTD --co LEVEL=15. "
    "Defaults: COMPRESS=DEFLATE BLOCKSIZE=512 BIGTIFF=IF_SAFER, OVERVIEW_RESAMPLING=NEAREST (labels) or AVERAGE.",
)
@click.option(
    "--crf",
    type=click.FloatRange(0, 51),
    default=None,
    help="Video: libx264's constant rate factor, as ffmpeg's -crf: 0 best, 51 worst; lower is better and bigger.  [default: 20]",
)
@click.option(
    "--preset",
    type=click.Choice(X264_PRESETS),
    default=None,
    help="Video: libx264's speed/size preset, as ffmpeg's -preset: slower presets make smaller files at the same --crf.  [default: veryfast]",
)
@click.option("--source", type=LOCATION, help=f"{SOURCE_HELP} Video: the overlay's frames, checked against the store's.")
@overwrite_opt
@quiet_opt
def export(
    store: Path | str,
    to: Path,
    group: str | None,
    alpha: float,
    what: str,
    creation_options: dict[str, str],
    crf: float | None,
    preset: str | None,
    source: Path | str | None,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Export a store: a raster one as a COG (.tif); a video one as source | labels blended in, beside the uncertainty heat map, with a legend below.

    The COG's band is named after the array; labels carry the class palette as its colour map, and the class names as GDAL
    category names and a raster attribute table in the `.aux.xml` beside it (where GDAL and QGIS read them). The overlay
    keeps the source's timestamps: an export of `run --frames 100:112` starts where frame 100 is in the source.
    """
    from segbatch import location
    from segbatch.errors import InputError
    from segbatch.export import export as run_export
    from segbatch.jobstore import group_location, live_inputs, reader_target

    job, target = reader_target(store, group, "export")
    if job is not None:
        if "{name}" not in str(to):
            example = f"out/{{name}}{to.suffix}"
            raise InputError(f"{store} is a job of many inputs: pass --group NAME, or a --to with {{name}} to export every input (e.g. '{example}')")
        inputs = live_inputs(store, job)  # the groups' own statuses: live after a stopped job
        names = [i["name"] for i in inputs if i["status"] == "complete"]
        if not names:
            raise InputError(f"no input of {store} is complete yet; finish it with `segbatch run ... --resume` before exporting")
        if len(names) < len(inputs):
            click.echo(f"warning: {len(inputs) - len(names)} of {len(inputs)} inputs have no complete results and are not exported", err=True)
        targets = [(group_location(store, name), Path(str(to).replace("{name}", name))) for name in names]
    else:
        targets = [(target, to)]
    for _, target in targets:  # every target is checked before anything is written
        if location.inside(target, store):
            raise InputError(f"{target} is inside the store {store}; export somewhere else")
        if target.suffix or (target.is_dir() and any(target.iterdir())):
            refuse_existing(target, overwrite)
        if target.suffix.lower() in (".tif", ".tiff"):
            refuse_existing(f"{target}.aux.xml", overwrite)  # GDAL's sidecar: the export replaces (labels) or removes it
    if source is not None and len(targets) > 1:
        raise InputError(f"--source names one input's source, and {store} is a job of many inputs: export one with --group NAME --source ...")
    for result, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        n = run_export(result, target, alpha=alpha, what=what, quiet=quiet, creation_options=creation_options, crf=crf, preset=preset, source=source)
        click.echo(f"wrote {target} ({n} {'rows' if target.suffix.lower() in ('.tif', '.tiff') else 'frames'})", err=True)
