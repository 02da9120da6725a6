"""`segbatch run`: segment a video into a Zarr store on a pool of Ray actors."""

from __future__ import annotations

from pathlib import Path

import click

from segbatch.cli.options import overwrite_opt, parse_size, quiet_opt, seed_opt


def _parse_frames(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int | None, int | None] | None:
    """A:B, A: or :B (B exclusive), as Python slices."""
    if value is None:
        return None
    try:
        a, b = value.split(":")
        return (int(a) if a else None, int(b) if b else None)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not A:B (e.g. 100:200, 100: or :200)") from None


def _parse_outputs(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    from segbatch.store import OPTIONAL_OUTPUTS

    names = tuple(v.strip() for v in (value or "").split(",") if v.strip())
    bad = [n for n in names if n not in OPTIONAL_OUTPUTS]
    if bad:
        raise click.BadParameter(f"{', '.join(bad)}: choose from {', '.join(OPTIONAL_OUTPUTS)}")
    return names


@click.command()
@click.option("--input", "input_path", type=click.Path(path_type=Path), required=True, help="Video file (MP4, MKV, MOV, AVI, ...).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Zarr store to write (a folder).")
@click.option("--model", type=click.Path(path_type=Path), help="Checkpoint (default: the built-in demo model).")
@click.option("--samples", type=click.IntRange(min=0), default=8, show_default=True, help="MC dropout samples; 0 = one pass with dropout off.")
@seed_opt
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Frames per model call.")
@click.option("--actors", type=click.IntRange(min=1), help="Ray actors (default: one per GPU, else one per --cpus-per-actor CPUs).")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0), help="GPUs per actor (fractions allowed; default 1 on a GPU cluster, else 0).")
@click.option("--cpus-per-actor", type=click.FloatRange(min=0.1), default=1.0, show_default=True, help="CPUs per actor (also its torch threads).")
@click.option("--address", help="Ray cluster to join (auto, HOST:PORT, ray://HOST:PORT); default: a local Ray runtime.")
@click.option("--frames", callback=_parse_frames, help="Only frames A:B (B exclusive).")
@click.option("--resize", callback=parse_size, help="Run the model at HxW; outputs are resampled back to the source size.")
@click.option("--outputs", "extra_outputs", callback=_parse_outputs, help="Extra arrays: mutual_information, probs (comma-separated).")
@click.option("--float32", is_flag=True, help="Store uncertainty/entropy as float32 (default float16).")
@click.option("--resume", is_flag=True, help="Finish an interrupted run in STORE (same input, model and settings).")
@overwrite_opt
@quiet_opt
def run(input_path: Path, out: Path, model: Path | None, samples: int, seed: int, batch_size: int, actors: int | None, gpus_per_actor: float | None,
        cpus_per_actor: float, address: str | None, frames: tuple[int | None, int | None] | None, resize: tuple[int, int] | None,
        extra_outputs: tuple[str, ...], float32: bool, resume: bool, overwrite: bool, quiet: bool) -> None:
    """Segment a video into a Zarr store: labels, uncertainty, entropy per frame."""
    from segbatch.engine.driver import run_video
    from segbatch.engine.job import RunConfig

    cfg = RunConfig(
        input=input_path, out=out, model=model, samples=samples, seed=seed, batch_size=batch_size, actors=actors,
        gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor, address=address, frames=frames, resize=resize,
        extra_outputs=extra_outputs, float_dtype="float32" if float32 else "float16", resume=resume, overwrite=overwrite, quiet=quiet,
    )
    summary = run_video(cfg)
    click.echo(summary.line(out), err=True)
    for p in summary.problems:
        parts = [f"frames {a}:{b} missing" for a, b in p["missing"]] + [f"frames {a}:{b} decoded with errors" for a, b in p["damaged"]]
        click.echo(f"warning: {', '.join(parts)}" + (f" ({p['messages'][0]})" if p["messages"] else ""), err=True)
