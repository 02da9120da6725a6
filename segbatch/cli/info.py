"""`segbatch info`: a human summary of a store or a checkpoint (with --json, the same for machines)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from segbatch.cli.options import LOCATION, json_opt


@click.command()
@click.argument("path", type=LOCATION)
@json_opt
def info(path: Path | str, as_json: bool) -> None:
    """Summarise a store (a folder) or a checkpoint (a file)."""
    from segbatch import location

    if not location.exists(path):
        raise click.BadParameter(f"{path}: no such store or checkpoint", param_hint="PATH")
    if location.is_dir(path):
        from segbatch.store import describe_store

        summary = describe_store(path)
        text = format_store
    else:
        from segbatch.model.checkpoint import load_checkpoint

        summary = load_checkpoint(path).describe()
        text = format_checkpoint
    click.echo(json.dumps(summary, indent=2) if as_json else text(summary))


def format_store(s: dict[str, Any]) -> str:
    """The `info` text for a store: status, source, model, arrays, problems (per kind, long lists cut short)."""
    from segbatch.problems import printable, problem_counts, problem_lines

    src, model = s.get("source") or {}, s.get("model") or {}
    rows = [
        ("store", printable(s["path"])),
        ("status", f"{s['status']} ({s['units']['finished']}/{s['units']['total']} units finished)"),
        *([("run", _lease_line(s["lease"]))] if s.get("lease") and not s["lease"]["released"] else []),
        ("source", f"{src.get('kind')} {printable(src.get('path'))}"),
        ("model", f"{model.get('arch')} ({len(model.get('classes', []))} classes, sha256 {str(model.get('sha256'))[:12]})"),
        ("samples", f"{s['samples']} (seed {s['seed']})"),
    ]
    if src.get("kind") == "raster":
        rows.append(("raster", f"{src['width']}x{src['height']} {src['dtype']}, bands {src['bands']}, tile {src['tile']} overlap {src['overlap']}"))
    if src.get("kind") == "video":
        rows.append(
            (
                "frames",
                f"{src['frame_range'][0]}:{src['frame_range'][1]} of {src['frames']}"
                + (f" (the index declares {src['declared_frames']}: truncated)" if (src.get("declared_frames") or 0) > src["frames"] else "")
                + " "
                f"({src['codec']}, {src['width']}x{src['height']}, rotation {src['rotation']})",
            )
        )
    if src.get("kind") == "images":
        rows.append(("images", f"{src['images']} (largest {src['max_width']}x{src['max_height']}; smaller ones padded with nodata)"))
    for name, a in s["arrays"].items():
        rows.append((name, f"{a['dtype']} ({', '.join(f'{d}={n}' for d, n in zip(a['dims'], a['shape']))}) chunks {a['chunks']}"))
    summary = s.get("summary") or {}
    if summary.get("inference_seconds") is not None:
        rows.append(
            (
                "run",
                f"{summary['tiles']} tiles ({summary['skipped_tiles']} all nodata) in {summary['inference_seconds']:.1f} s, "
                f"stitched in {summary['stitch_seconds']:.1f} s on {summary['actors']} actor(s) [{summary['device']}]",
            )
        )
    if summary.get("wall_seconds"):
        noun = "images" if "images" in summary else "frames"
        rows.append(("run", f"{summary[noun]} {noun} in {summary['wall_seconds']:.1f} s on {summary['actors']} actor(s) [{summary['device']}]"))
    if (summary.get("stages") or {}).get("seconds"):
        rows.append(("stages", _stages_line(summary["stages"])))
    problems = s.get("problems") or []
    counts = problem_counts(problems)
    rows.append(("problems", "the video ends early" if counts == "none" and src.get("demux_error") else counts))
    if src.get("demux_error"):
        rows.append(("", f"the file ends early: {src['demux_error']}"))
    rows.extend(("", line) for line in problem_lines(problems))
    return "\n".join(f"{k:<12} {v}" for k, v in rows)


def format_checkpoint(s: dict[str, Any]) -> str:
    """The `info` text for a checkpoint: one fact per line, names aligned."""
    rows = [
        ("checkpoint", s["path"]),
        ("arch", f"{s['arch']} (width {s['width']:g}, {s['in_channels']} input bands)"),
        ("parameters", f"{s['parameters']:,}"),
        ("dropout", f"{s['dropout']['placement']}, p={s['dropout']['p']:g}"),
        ("classes", f"{len(s['classes'])}: {', '.join(s['classes'])}"),
        ("input mean", " ".join(f"{v:.3f}" for v in s["input_normalisation"]["mean"])),
        ("input std", " ".join(f"{v:.3f}" for v in s["input_normalisation"]["std"])),
        ("sha256", s["sha256"]),
    ]
    training = s.get("provenance", {}).get("training")
    if isinstance(training, dict) and "epoch" in training:
        rows.append(("trained", f"epoch {training['epoch']}, validation mIoU {training.get('val_miou', float('nan')):.3f}"))
    return "\n".join(f"{k:<11} {v}" for k, v in rows)


def _lease_line(lease: dict[str, Any]) -> str:
    """Who holds the store: a live run, or one that stopped without letting go (its lease is taken over by the next run)."""
    state = "in progress" if lease["live"] else "stopped without releasing the store"
    return f"{state}: run {lease['run']} on {lease['host']} (pid {lease['pid']}), heartbeat {lease['heartbeat_age_s']:.0f} s ago"


def _stages_line(stages: dict[str, Any]) -> str:
    """Worker seconds per pipeline stage over the whole run, largest first, and the stage that bounds it."""
    seconds = stages["seconds"]
    parts = ", ".join(f"{name} {value:.1f} s" for name, value in sorted(seconds.items(), key=lambda kv: -kv[1]))
    return f"{parts} (bottleneck: {stages.get('bottleneck')})"
