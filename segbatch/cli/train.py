"""`segbatch train`: fit a SegNet-family model to image/mask pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segbatch.cli.options import (
    arch_opt,
    check_writable,
    classes_file_opt,
    dropout_opt,
    overwrite_opt,
    parse_names,
    parse_size,
    path_type,
    quiet_opt,
    refuse_existing,
    resolve_classes,
    seed_opt,
    width_opt,
)

_dir = path_type(exists=True, file_okay=False)


@click.command()
@click.option("--images", type=_dir, required=True, help="Folder of images (PNG, JPEG, GeoTIFF; nested folders allowed).")
@click.option("--masks", type=_dir, required=True, help="Folder of class-index masks, same relative names as the images.")
@click.option("--out", type=path_type(dir_okay=False), required=True, help="Checkpoint to write (the best epoch is kept).")
@arch_opt
@width_opt
@dropout_opt
@click.option("--classes", "num_classes", type=click.IntRange(1, 255), help="Number of classes (default: largest id in the masks + 1).")
@click.option("--class-names", callback=parse_names, help="Comma-separated class names.")
@classes_file_opt
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True, help="SGD learning rate.")
@click.option("--momentum", type=click.FloatRange(0, 1), default=0.9, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=5e-4, show_default=True)
@click.option("--ignore-index", type=click.IntRange(0, 65535), default=255, show_default=True, help="Mask value that is not a class.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True, help="Share of images held out for validation.")
@click.option("--crop", callback=parse_size, help="Train on random HxW crops (needed when image sizes differ).")
@click.option("--no-flip", is_flag=True, help="No random horizontal flips.")
@click.option("--no-balance", is_flag=True, help="No median-frequency class weights.")
@click.option(
    "--init",
    "init_ckpt",
    type=path_type(exists=True, dir_okay=False),
    help="Start from this checkpoint (its architecture, classes and normalisation win over --arch/--width/--dropout).",
)
@click.option("--vgg16", type=path_type(exists=True, dir_okay=False), help="torchvision VGG16 state dict for the encoder (segnet only).")
@seed_opt
@overwrite_opt
@quiet_opt
def train(
    images: Path,
    masks: Path,
    out: Path,
    arch: str,
    width: float,
    dropout: str,
    num_classes: int | None,
    class_names: tuple[str, ...],
    classes_file: dict[str, Any] | None,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    ignore_index: int,
    val_fraction: float,
    crop: tuple[int, int] | None,
    no_flip: bool,
    no_balance: bool,
    init_ckpt: Path | None,
    vgg16: Path | None,
    seed: int,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Train on image/mask pairs (SGD, median-frequency class weights); keep the best checkpoint."""
    from segbatch.train import TrainConfig
    from segbatch.train import train as run_training

    refuse_existing(out, overwrite)
    check_writable(out)
    class_names, palette = resolve_classes(class_names, classes_file, num_classes)
    cfg = TrainConfig(
        arch=arch,
        width=width,
        dropout=dropout,
        num_classes=num_classes or (len(class_names) or None),
        class_names=class_names,
        palette=palette,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        ignore_index=ignore_index,
        val_fraction=val_fraction,
        crop=crop,
        flip=not no_flip,
        balance=not no_balance,
        seed=seed,
        init=init_ckpt,
        vgg16=vgg16,
    )
    result = run_training(images, masks, out, cfg, quiet=quiet)
    best = result.val_miou[result.best_epoch - 1]
    click.echo(f"wrote {out}: best epoch {result.best_epoch}/{epochs}, validation mIoU {best:.3f}", err=True)
