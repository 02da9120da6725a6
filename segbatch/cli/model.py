"""`segbatch model init`: write an untrained (or ImageNet-initialised) checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segbatch.cli.options import (
    arch_opt,
    classes_file_opt,
    dropout_opt,
    overwrite_opt,
    parse_names,
    path_type,
    refuse_existing,
    resolve_classes,
    seed_opt,
    width_opt,
)


@click.group()
def model() -> None:
    """Create and manage model checkpoints."""


@model.command("init")
@arch_opt
@click.option("--classes", "num_classes", type=click.IntRange(1, 255), help="Number of classes (or give names with --class-names / --classes-file).")
@width_opt
@click.option("--in-channels", type=click.IntRange(min=1), default=3, show_default=True, help="Input bands (e.g. 4 for RGB+NIR).")
@dropout_opt
@click.option("--p", "p", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True, help="Dropout probability.")
@click.option("--class-names", callback=parse_names, help="Comma-separated class names (default class0, class1, ...).")
@classes_file_opt
@click.option("--vgg16", type=path_type(exists=True, dir_okay=False), help="torchvision VGG16 state dict for the encoder (segnet only).")
@seed_opt
@click.option("--out", type=path_type(dir_okay=False), required=True, help="Checkpoint file to write.")
@overwrite_opt
def init(
    arch: str,
    num_classes: int | None,
    width: float,
    in_channels: int,
    dropout: str,
    p: float,
    class_names: tuple[str, ...],
    classes_file: dict[str, Any] | None,
    vgg16: Path | None,
    seed: int,
    out: Path,
    overwrite: bool,
) -> None:
    """Write an untrained checkpoint (weights from --seed)."""
    import torch

    from segbatch.model.checkpoint import ModelSpec, save_checkpoint
    from segbatch.model.pretrained import load_vgg16_encoder
    from segbatch.model.segnet import build_model, count_parameters

    refuse_existing(out, overwrite)
    class_names, palette = resolve_classes(class_names, classes_file, num_classes)
    num_classes = num_classes or len(class_names)
    if not num_classes:
        raise click.UsageError("give --classes K (or class names)")
    torch.manual_seed(seed)
    net = build_model(arch, num_classes, in_channels=in_channels, dropout=dropout, p=p, width=width)
    if vgg16 is not None:
        load_vgg16_encoder(net, vgg16)
    save_checkpoint(net, out, ModelSpec.of(net, class_names=class_names, palette=palette))
    click.echo(f"wrote {out}: {arch}, {count_parameters(net):,} parameters, {num_classes} classes", err=True)
