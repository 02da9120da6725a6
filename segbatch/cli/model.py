"""`segbatch model init`: write an untrained (or ImageNet-initialised) checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segbatch.cli.options import (
    CommandGroup,
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


@click.group(cls=CommandGroup)
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


def _read_import_classes(path: Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Class names (and optional colours) from a JSON list / {"names", "palette"} or a text file: `name [r g b]` a line."""
    import json

    from segbatch.errors import InputError

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the classes file ({type(exc).__name__})") from None
    names: list[str] = []
    colours: list[tuple[int, int, int]] = []
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    try:
        if isinstance(data, dict):
            names = [str(n) for n in data["names"]]
            colours = [(int(c[0]), int(c[1]), int(c[2])) for c in data.get("palette", ())]
        elif isinstance(data, list):
            for item in data:
                if isinstance(item, str):
                    names.append(item)
                else:  # {"name": ..., "colour": [r, g, b]}
                    names.append(str(item["name"]))
                    colour = item.get("colour", item.get("color"))
                    if colour is not None:
                        colours.append((int(colour[0]), int(colour[1]), int(colour[2])))
        else:
            for line in text.splitlines():
                parts = line.replace(",", " ").split()
                if not parts or parts[0].startswith("#"):
                    continue
                if len(parts) >= 4 and all(p.lstrip("-").isdigit() for p in parts[-3:]):
                    names.append(" ".join(parts[:-3]))
                    colours.append((int(parts[-3]), int(parts[-2]), int(parts[-1])))
                else:
                    names.append(" ".join(parts))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise InputError(f"{path}: not a classes file ({type(exc).__name__})") from None
    if not names:
        raise InputError(f"{path}: no class names")
    if colours and (len(colours) != len(names) or any(not 0 <= v <= 255 for c in colours for v in c)):
        raise InputError(f"{path}: give a colour (r g b, 0-255) for every class or for none")
    return tuple(names), tuple(colours)


@model.command("import")
@click.option("--prototxt", type=path_type(exists=True, dir_okay=False), required=True, help="Caffe model definition (text .prototxt).")
@click.option("--weights", type=path_type(exists=True, dir_okay=False), required=True, help="Caffe weights (binary .caffemodel).")
@click.option(
    "--classes",
    "classes_path",
    type=path_type(exists=True, dir_okay=False),
    help='Class names: JSON list (or {"names", "palette"}) or text, one `name [r g b]` a line (default for 11 classes: CamVid\'s).',
)
@click.option("--out", type=path_type(dir_okay=False), required=True, help="Checkpoint file to write.")
@overwrite_opt
def import_(prototxt: Path, weights: Path, classes_path: Path | None, out: Path, overwrite: bool) -> None:
    """Import a released SegNet / Bayesian SegNet Caffe model (no Caffe needed)."""
    from segbatch.errors import InputError
    from segbatch.model.caffe import import_caffe
    from segbatch.model.catalog import CAMVID_CLASSES, CAMVID_PALETTE
    from segbatch.model.checkpoint import ModelSpec, save_checkpoint
    from segbatch.model.segnet import count_parameters

    refuse_existing(out, overwrite)
    imported = import_caffe(prototxt, weights)
    net = imported.model
    names: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    if classes_path is not None:
        names, palette = _read_import_classes(Path(classes_path))
        if len(names) != net.num_classes:
            raise InputError(f"{classes_path} names {len(names)} classes; the model has {net.num_classes}")
    elif net.num_classes == len(CAMVID_CLASSES):
        names, palette = CAMVID_CLASSES, CAMVID_PALETTE
    save_checkpoint(net, out, ModelSpec.of(net, class_names=names, palette=palette, extra=imported.provenance))
    drop = f"dropout {net.dropout_placement} p={net.p:g}" if net.drops else "no dropout"
    click.echo(f"wrote {out}: {net.arch} (width {net.width:g}), {count_parameters(net):,} parameters, {net.num_classes} classes, {drop}", err=True)
