"""`segbatch info`: a human summary of a checkpoint (or, with --json, the same for machines)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from segbatch.cli.options import json_opt


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@json_opt
def info(path: Path, as_json: bool) -> None:
    """Summarise a checkpoint file."""
    from segbatch.model.checkpoint import load_checkpoint

    summary = load_checkpoint(path).describe()
    click.echo(json.dumps(summary, indent=2) if as_json else format_checkpoint(summary))


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
    if training:
        rows.append(("trained", f"epoch {training['epoch']}, validation mIoU {training['val_miou']:.3f}"))
    return "\n".join(f"{k:<11} {v}" for k, v in rows)
