"""`segbatch demo`: make synthetic street scenes (training data for the demo model, samples to try)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from segbatch.cli.options import CommandGroup, overwrite_opt, parse_size, path_type, refuse_existing, seed_opt


@click.group(cls=CommandGroup)
def demo() -> None:
    """Synthetic street scenes with CamVid's 11 classes."""


@demo.command("scenes")
@click.option("--out", type=path_type(file_okay=False), required=True, help="Folder to write images/, masks/ and classes.json into.")
@click.option("--count", type=click.IntRange(min=1), default=100, show_default=True, help="Number of scenes.")
@click.option("--size", callback=parse_size, default="360x480", show_default=True, help="Image size HxW.")
@seed_opt
def scenes(out: Path, count: int, size: tuple[int, int], seed: int) -> None:
    """Write COUNT scene images with their class masks (a training set for `segbatch train`)."""
    from segbatch.atomic import atomic_path
    from segbatch.demo.scenes import CLASSES, PALETTE, write_dataset

    out.mkdir(parents=True, exist_ok=True)
    write_dataset(out, count, size[0], size[1], seed=seed)
    with atomic_path(out / "classes.json") as tmp:
        tmp.write_text(json.dumps({"names": list(CLASSES), "palette": [list(c) for c in PALETTE]}, indent=1))
    click.echo(f"wrote {count} scenes to {out}/images and {out}/masks, class names in {out}/classes.json", err=True)


@demo.command("video")
@click.option("--out", type=path_type(dir_okay=False), required=True, help="Video file to write (.mp4, .mkv, .mov).")
@click.option("--frames", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--size", callback=parse_size, default="360x480", show_default=True, help="Frame size HxW.")
@click.option("--fps", type=click.IntRange(min=1), default=25, show_default=True)
@seed_opt
@overwrite_opt
def video(out: Path, frames: int, size: tuple[int, int], fps: int, seed: int, overwrite: bool) -> None:
    """Write a dash-cam-like video of a drive down a synthetic street (H.264)."""
    from segbatch.demo.video import write_demo_video

    refuse_existing(out, overwrite)
    write_demo_video(out, frames, size[0], size[1], fps=fps, seed=seed)
    click.echo(f"wrote {frames} frames ({size[1]}x{size[0]}, {fps} fps) to {out}", err=True)
