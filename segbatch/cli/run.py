"""`segbatch run`: segment a video, a raster or a folder of images into a Zarr store on a pool of Ray actors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from segbatch import location
from segbatch.cli.config import config_opt
from segbatch.cli.options import LOCATION, check_verbosity, overwrite_opt, parse_size, progress_opt, quiet_opt, seed_opt, verbose_opt

if TYPE_CHECKING:
    from segbatch.engine.job import RunConfig
    from segbatch.engine.outcome import JobSummary, RunSummary
    from segbatch.inputs import Input


def _parse_actors_per_gpu(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    """N (a whole number >= 1) or auto (None)."""
    if value == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise click.BadParameter(f"{value!r} is not a number of actors (1, 2, ...) or auto")
    return n


def _parse_frames(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int | None, int | None] | None:
    """A:B, A: or :B (B exclusive), as Python slices: frames counted from 0, the start below the end."""
    if value is None:
        return None
    try:
        a, b = value.split(":")
        first, stop = (int(a) if a else None, int(b) if b else None)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not A:B (e.g. 100:200, 100: or :200)") from None
    if any(v is not None and v < 0 for v in (first, stop)):
        raise click.BadParameter(f"{value!r}: frames are counted from 0 (A:B, e.g. 100:200)")
    if first is not None and stop is not None and first >= stop:
        raise click.BadParameter(f"{value!r}: the start must be below the end (A:B takes frames A to B-1; {first}:{first + 1} is frame {first} alone)")
    return first, stop


def _parse_outputs(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    from segbatch.store import OPTIONAL_OUTPUTS

    names = tuple(v.strip() for v in (value or "").split(",") if v.strip())
    bad = [n for n in names if n not in OPTIONAL_OUTPUTS]
    if bad:
        raise click.BadParameter(f"{', '.join(bad)}: choose from {', '.join(OPTIONAL_OUTPUTS)}")
    return names


def _parse_bands(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """1-based band numbers, comma-separated."""
    if not value:
        return None
    try:
        bands = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a list of band numbers like 3,2,1") from None
    if any(b < 1 for b in bands):
        raise click.BadParameter(f"{value!r}: bands are numbered from 1")
    return bands


@click.command()
@click.option(
    "--input",
    "input_path",
    type=LOCATION,
    required=True,
    help=(
        "Video (MP4, MKV, MOV, AVI, ...), raster (GeoTIFF, ...), or a folder of images (PNG, JPEG, TIFF; nested folders too). "
        "Many inputs, one group each in one store: a folder of videos or of rasters, a quoted glob ('drives/**/*.mp4'), "
        "@FILE (one path or URL per line), or a STAC Item/ItemCollection JSON with --asset."
    ),
)
@click.option("--asset", metavar="KEY", help="STAC inputs: the asset of each item to segment (e.g. visual).")
@click.option("--add-inputs", is_flag=True, help="With --resume, many inputs: add the inputs that are new since the job was made.")
@click.option("--out", type=LOCATION, required=True, help="Zarr store to write: a folder, or an fsspec URL (s3://bucket/run.zarr).")
@click.option("--model", type=LOCATION, help="Checkpoint, a path or a URL (default: the built-in demo model).")
@click.option("--samples", type=click.IntRange(min=0), default=8, show_default=True, help="MC dropout samples; 0 = one pass with dropout off.")
@seed_opt
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Frames per model call.")
@click.option("--actors", type=click.IntRange(min=1), help="Ray actors (default: one per GPU, else one per --cpus-per-actor CPUs).")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0), help="GPUs per actor (fractions allowed; default 1 on a GPU cluster, else 0).")
@click.option(
    "--actors-per-gpu",
    metavar="N|auto",
    default="1",
    show_default=True,
    callback=_parse_actors_per_gpu,
    help="Actors feeding each GPU, each with its own CPUs (a fast card needs several to stay busy); auto: added while the "
    "GPU's model stage idles over 10% and CPUs remain. Each gets its share of the card's memory budget.",
)
@click.option("--cpus-per-actor", type=click.FloatRange(min=0.1), default=1.0, show_default=True, help="CPUs per actor (also its torch threads).")
@click.option("--address", help="Ray cluster to join (auto, HOST:PORT, ray://HOST:PORT); default: a local Ray runtime.")
@click.option("--frames", callback=_parse_frames, help="Only frames A:B (B exclusive).")
@click.option("--resize", callback=parse_size, help="Run the model at HxW; outputs are resampled back to the source size.")
@click.option("--outputs", "extra_outputs", callback=_parse_outputs, help="Extra arrays: mutual_information, probs (comma-separated).")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    default="fp32",
    show_default=True,
    help="Network arithmetic (fp16/bf16: autocast for GPU tensor cores; fp16 is very slow on CPUs); softmax statistics stay float32.",
)
@click.option("--hwaccel", metavar="DEVICE", help="Video: decode with FFmpeg's hardware decoder on DEVICE (cuda = NVDEC), on each worker.")
@click.option("--float32", is_flag=True, help="Store uncertainty/entropy as float32 (default float16).")
@click.option("--tile", type=click.IntRange(min=2), default=512, show_default=True, help="Rasters: tile side in pixels (core + 2 x overlap).")
@click.option(
    "--overlap",
    type=click.IntRange(min=0),
    default=64,
    show_default=True,
    help="Rasters: context margin around each tile's core (cover the model's receptive field).",
)
@click.option("--bands", callback=_parse_bands, help="Rasters: 1-based bands for the model, in order (e.g. 3,2,1).")
@click.option("--keep-tiles", is_flag=True, help="Rasters: keep tiles/ after stitching (for segbatch stitch).")
@click.option("--resume", is_flag=True, help="Finish an interrupted run in STORE (same input, model and settings).")
@overwrite_opt
@config_opt
@quiet_opt
@verbose_opt
@progress_opt
def run(
    input_path: location.Location,
    asset: str | None,
    add_inputs: bool,
    out: Path,
    model: Path | None,
    samples: int,
    seed: int,
    batch_size: int,
    actors: int | None,
    gpus_per_actor: float | None,
    actors_per_gpu: int | None,
    cpus_per_actor: float,
    address: str | None,
    frames: tuple[int | None, int | None] | None,
    resize: tuple[int, int] | None,
    extra_outputs: tuple[str, ...],
    precision: str,
    hwaccel: str | None,
    float32: bool,
    tile: int,
    overlap: int,
    bands: tuple[int, ...] | None,
    keep_tiles: bool,
    resume: bool,
    overwrite: bool,
    quiet: bool,
    verbose: int,
    progress: str,
) -> None:
    """Segment a video, a georeferenced raster or a folder of images into a Zarr store: labels, uncertainty, entropy."""
    from segbatch.engine.job import RunConfig

    check_verbosity(quiet, verbose)
    spec = str(input_path)  # as given: a manifest (@FILE) or a glob is not a path to make absolute
    # workers on other nodes have other working folders: local paths leave the driver absolute (URLs as they are)
    input_path = location.parse(location.absolute(input_path))
    cfg = RunConfig(
        input=input_path,
        out=out,
        model=model,
        samples=samples,
        seed=seed,
        batch_size=batch_size,
        actors=actors,
        gpus_per_actor=gpus_per_actor,
        actors_per_gpu=actors_per_gpu,
        cpus_per_actor=cpus_per_actor,
        address=address,
        frames=frames,
        resize=resize,
        extra_outputs=extra_outputs,
        float_dtype="float32" if float32 else "float16",
        resume=resume,
        overwrite=overwrite,
        quiet=quiet,
        verbose=verbose,
        progress=progress,
        bands=bands,
        tile=tile,
        overlap=overlap,
        keep_tiles=keep_tiles,
        precision=precision,
        hwaccel=hwaccel,
    )
    from segbatch.engine.outcome import JobSummary
    from segbatch.inputs import many_inputs, one_input
    from segbatch.problems import problem_lines
    from segbatch.progress import StartUp, phase

    with StartUp(quiet, verbose, progress):  # the progress line says what goes on until the first unit is done
        phase("plan", f"planning {spec}", input=spec)
        many = many_inputs(spec, asset)  # None: one input (a file, an image folder)
        summary = _run(cfg, many if many is not None else [one_input(input_path)], many is not None, spec, add_inputs)
    if isinstance(summary, JobSummary):
        _report_many(cfg, summary)
        return
    click.echo(summary.line(out), err=True)
    for line in problem_lines(summary.problems):
        click.echo(f"warning: {line}", err=True)


def _run(cfg: RunConfig, inputs: list[Input], many: bool, spec: str, add_inputs: bool) -> RunSummary:
    """One input (a video, a raster, a folder of images) into the store, or many (a group each): the kind's source, one run path."""
    from segbatch.engine.run import run as run_job
    from segbatch.kinds import kind

    of = kind(inputs[0].kind)
    refuse_options_not_for(of.name)
    return run_job(cfg, inputs, of.source_class(), many=many, spec=spec, add_inputs=add_inputs)


def _report_many(cfg: RunConfig, summary: JobSummary) -> None:
    """A job's summary, each input's problems, and exit 2 when any input failed (1 when a failure was not the input's)."""
    from segbatch.errors import InputError, RunError
    from segbatch.problems import MAX_LINES, problem_lines

    click.echo(summary.line(cfg.out), err=True)
    lines = [f"{p['input']}: {line}" for p in summary.problems[:MAX_LINES] for line in problem_lines([p])]
    more = [f"and {len(summary.problems) - MAX_LINES} more problems (segbatch info {cfg.out})"] if len(summary.problems) > MAX_LINES else []
    for line in lines + more:
        click.echo(f"warning: {line}", err=True)
    for failed in summary.failed[:MAX_LINES]:
        click.echo(f"warning: {failed.input.name} ({location.absolute(failed.input.location)}) failed: {failed.error}", err=True)
    if len(summary.failed) > MAX_LINES:
        click.echo(f"warning: and {len(summary.failed) - MAX_LINES} more failed inputs (segbatch info {cfg.out})", err=True)
    if summary.failed:
        # exit 2 when every failure was the input's (retrying cannot help), else 1 (--resume retries the failed inputs)
        ran = [f for f in summary.failed if not f.bad_input]
        first = (ran or summary.failed)[0]
        error: type[InputError | RunError] = RunError if ran else InputError
        what = f"{len(summary.failed)} of {summary.inputs} inputs failed (first: {first.input.name}: {first.error})"
        raise error(f"{what}; `segbatch info {cfg.out}` lists them" + ("; --resume retries them" if ran else ""))


def refuse_options_not_for(name: str) -> None:
    """One line, exit 2, naming every option the user set that does not apply to this kind of input (and what it is for)."""
    from segbatch.errors import InputError
    from segbatch.kinds import KINDS

    only_for: dict[str, list[str]] = {}  # the options that apply to some kinds only, in the kinds' order
    for k in KINDS.values():
        for option in k.options:
            only_for.setdefault(option, []).append(k.name)
    wrong = [(option, kinds) for option, kinds in only_for.items() if name not in kinds and _given(option)]
    if wrong:
        flags = ", ".join(_flag(option) for option, _ in wrong)
        uses = "; ".join(f"{_flag(option)} is for {' and '.join(KINDS[k].plural for k in kinds)}" for option, kinds in wrong)
        raise InputError(f"{flags}: not for {KINDS[name].article} ({uses})")


def _flag(name: str) -> str:
    return "--outputs" if name == "extra_outputs" else f"--{name.replace('_', '-')}"


def _given(name: str) -> bool:
    """Whether the user set option `name` (on the command line, in the environment or in a --config file), not its default."""
    from click.core import ParameterSource

    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.DEFAULT_MAP)
    return click.get_current_context().get_parameter_source(name) in given
