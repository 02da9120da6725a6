"""`segbatch export`: turn a store into files for people and GIS tools (COG, overlay video, PNG panels)."""

from __future__ import annotations

from pathlib import Path

import click

from segbatch.cli.options import LOCATION, overwrite_opt, path_type, quiet_opt, refuse_existing


@click.command()
@click.argument("store", type=LOCATION)
@click.option("--to", type=path_type(), required=True, help="overlay.mp4 (or .mkv/.mov), or a folder for PNG frames.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Video: opacity of the label colours.")
@click.option(
    "--what",
    type=click.Choice(["labels", "uncertainty", "entropy", "confidence"]),
    default="labels",
    show_default=True,
    help="Raster: the array to export as a COG.",
)
@overwrite_opt
@quiet_opt
def export(store: Path | str, to: Path, alpha: float, what: str, overwrite: bool, quiet: bool) -> None:
    """Export a store: a raster one as a COG (.tif); a video one as source | labels blended in, beside the uncertainty heat map."""
    from segbatch.export import export as run_export

    if to.suffix or (to.is_dir() and any(to.iterdir())):
        refuse_existing(to, overwrite)
    n = run_export(store, to, alpha=alpha, what=what, quiet=quiet)
    click.echo(f"wrote {to} ({n} {'rows' if to.suffix.lower() in ('.tif', '.tiff') else 'frames'})", err=True)
