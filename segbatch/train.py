"""Training a SegNet-family model on image/mask pairs, as the SegNet paper does.

Cross-entropy with median-frequency class balancing, SGD with momentum 0.9 and
weight decay 5e-4, random horizontal flips, validation mIoU after every epoch,
and the best checkpoint kept (written atomically, so a crash mid-save never
leaves a broken file).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segbatch.audit.metrics import confusion_matrix, mean_iou
from segbatch.errors import DataError, InputError
from segbatch.model.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from segbatch.model.pretrained import load_vgg16_encoder
from segbatch.model.segnet import SegNet, build_model
from segbatch.progress import note, progress_bar
from segbatch.sources.images import IMAGE_SUFFIXES, find_images, image_shape, read_image, read_mask, to_unit_float


@dataclass(frozen=True)
class TrainConfig:
    """Everything `segbatch train` can be told; defaults follow the paper where it says."""

    arch: str = "segnet-basic"
    width: float = 1.0
    dropout: str = "central"
    num_classes: int | None = None  # None: the largest class id found in the masks, plus one
    class_names: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    epochs: int = 20
    batch_size: int = 4
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    ignore_index: int = 255
    val_fraction: float = 0.1
    crop: tuple[int, int] | None = None
    flip: bool = True
    balance: bool = True  # median-frequency class weights
    seed: int = 0
    init: Path | None = None  # start from this checkpoint's weights
    vgg16: Path | None = None  # ImageNet VGG16 state dict for the encoder


@dataclass
class TrainResult:
    """Per-epoch figures, and which epoch was kept."""

    losses: list[float] = field(default_factory=list)
    val_miou: list[float] = field(default_factory=list)
    best_epoch: int = 0
    class_weights: list[float] = field(default_factory=list)


def pair_images_and_masks(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    """Match every image to the mask with the same relative path and stem (any image suffix)."""
    for folder, what in ((images, "--images"), (masks, "--masks")):
        if not folder.is_dir():
            raise InputError(f"{what} {folder} is not a folder")
    by_stem = {p.relative_to(masks).with_suffix(""): p for p in find_images(masks)}
    pairs, missing = [], []
    for img in find_images(images):
        key = img.relative_to(images).with_suffix("")
        if key in by_stem:
            pairs.append((img, by_stem[key]))
        else:
            missing.append(img)
    if missing:
        raise DataError(f"{missing[0]}: no mask with the same name under {masks} ({len(missing)} images lack one)")
    if not pairs:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {images}")
    return pairs


def median_frequency_weights(class_pixels: np.ndarray, image_pixels: np.ndarray) -> np.ndarray:
    """Class weights by median frequency balancing (Eigen & Fergus, as SegNet).

    freq(c) = pixels of class c / pixels of the images in which c appears;
    weight(c) = median(freq) / freq(c). Classes that never appear get 0.
    """
    present = image_pixels > 0
    freq = np.zeros(len(class_pixels), dtype=np.float64)
    freq[present] = class_pixels[present] / image_pixels[present]
    weights = np.zeros_like(freq)
    if present.any():
        weights[present] = np.median(freq[present]) / freq[present]
    return weights


def _scan(pairs: Sequence[tuple[Path, Path]], cfg: TrainConfig) -> tuple[int, np.ndarray, np.ndarray, int]:
    """Check every pair once before training; count class pixels for the weights.

    Returns (num_classes, class pixel counts, pixel counts of images holding each class, bands).
    """
    counts: list[np.ndarray] = []
    sizes: list[int] = []
    shapes: set[tuple[int, int]] = set()
    bands = None
    for img, msk in pairs:
        mask = read_mask(msk)
        h, w, b = image_shape(img)
        if (h, w) != mask.shape:
            raise DataError(f"{msk}: mask is {mask.shape[1]}x{mask.shape[0]} but image {img.name} is {w}x{h}")
        if bands is not None and b != bands:
            raise DataError(f"{img}: {b} bands where the images before it have {bands}")
        bands = b
        shapes.add(mask.shape)
        labelled = mask[mask != cfg.ignore_index]
        counts.append(np.bincount(labelled.ravel().astype(np.int64)))
        sizes.append(labelled.size)
        if cfg.num_classes is not None and labelled.size and labelled.max() >= cfg.num_classes:
            raise DataError(f"{msk}: class id {int(labelled.max())} is out of range for {cfg.num_classes} classes (ignore value {cfg.ignore_index})")
    num_classes = cfg.num_classes or max(len(c) for c in counts)
    class_pixels = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    for c, n in zip(counts, sizes):
        class_pixels[: len(c)] += c
        image_pixels[: len(c)] += np.where(c > 0, n, 0)
    if cfg.crop is None and len(shapes) > 1:
        first, second = sorted(shapes)[:2]
        raise DataError(f"images differ in size ({first[1]}x{first[0]}, {second[1]}x{second[0]}, ...): pass --crop HxW to train on crops")
    assert bands is not None
    return num_classes, class_pixels, image_pixels, bands


def _load_pair(img: Path, msk: Path, crop: tuple[int, int] | None, flip: bool, rng: np.random.Generator, ignore: int) -> tuple[np.ndarray, np.ndarray]:
    x = to_unit_float(read_image(img))
    y = read_mask(msk).astype(np.int64)
    if crop is not None:
        ch, cw = crop
        h, w = y.shape
        if h < ch or w < cw:  # pad small images: zeros in the image, ignore in the mask
            ph, pw = max(0, ch - h), max(0, cw - w)
            x = np.pad(x, ((0, 0), (0, ph), (0, pw)))
            y = np.pad(y, ((0, ph), (0, pw)), constant_values=ignore)
            h, w = y.shape
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        x, y = x[:, top : top + ch, left : left + cw], y[top : top + ch, left : left + cw]
    if flip and rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def _set_input_normalisation(model: SegNet, pairs: Sequence[tuple[Path, Path]], rng: np.random.Generator) -> None:
    """Per-band mean and std of (up to 64) training images, stored in the model's buffers."""
    picks = rng.choice(len(pairs), size=min(64, len(pairs)), replace=False)
    stats = np.array([[x.mean(axis=(1, 2)), (x**2).mean(axis=(1, 2))] for x in (to_unit_float(read_image(pairs[i][0])) for i in picks)])
    mean = stats[:, 0].mean(axis=0)
    std = np.sqrt(np.maximum(stats[:, 1].mean(axis=0) - mean**2, 1e-6))
    with torch.no_grad():
        model.input_mean.copy_(torch.from_numpy(mean).float())
        model.input_std.copy_(torch.from_numpy(std).float())


def evaluate(model: SegNet, pairs: Sequence[tuple[Path, Path]], num_classes: int, ignore_index: int, device: torch.device) -> float:
    """mIoU of the deterministic (dropout off) prediction over `pairs`."""
    model.eval()
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    with torch.inference_mode():
        for img, msk in pairs:
            x = torch.from_numpy(to_unit_float(read_image(img)))[None].to(device)
            pred = model(x).argmax(1)[0].cpu().numpy()
            confusion += confusion_matrix(pred, read_mask(msk), num_classes, ignore_index)
    return mean_iou(confusion)


def train(images: Path, masks: Path, out: Path, cfg: TrainConfig, quiet: bool = False) -> TrainResult:
    """Train, validating each epoch, and keep the best checkpoint at `out`."""
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise InputError("epochs and batch size must be >= 1")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise InputError(f"the validation fraction must be in [0, 1), got {cfg.val_fraction}")
    pairs = pair_images_and_masks(images, masks)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.init is not None:
        ckpt = load_checkpoint(cfg.init)
        model, spec = ckpt.model, ckpt.spec
        if cfg.num_classes is not None and cfg.num_classes != spec.num_classes:
            raise InputError(f"--init {cfg.init} has {spec.num_classes} classes, not {cfg.num_classes}")
        cfg = replace(cfg, num_classes=spec.num_classes)
    num_classes, class_pixels, image_pixels, bands = _scan(pairs, cfg)
    if cfg.init is None:
        model = build_model(cfg.arch, num_classes, in_channels=bands, dropout=cfg.dropout, width=cfg.width)
        spec = ModelSpec.of(model, class_names=cfg.class_names, palette=cfg.palette)
        if cfg.vgg16 is not None:
            load_vgg16_encoder(model, cfg.vgg16)
        else:
            _set_input_normalisation(model, pairs, rng)
    if model.in_channels != bands:
        raise DataError(f"{pairs[0][0]} has {bands} bands but the model takes {model.in_channels}")

    order = rng.permutation(len(pairs))
    n_val = min(int(round(len(pairs) * cfg.val_fraction)), len(pairs) - 1)  # at least one training image
    val = [pairs[i] for i in order[:n_val]] or [pairs[i] for i in order]  # no split: score on training data
    trainset: list[tuple[Path, Path]] = [pairs[i] for i in order[n_val:]]
    if n_val == 0:
        note("note: no validation split; mIoU is measured on the training images", quiet)

    weights = median_frequency_weights(class_pixels, image_pixels) if cfg.balance else (class_pixels > 0).astype(np.float64)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    weight_t = torch.tensor(weights, dtype=torch.float32, device=device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    result = TrainResult(class_weights=[round(float(w), 6) for w in weights])
    best = -1.0
    steps = (len(trainset) + cfg.batch_size - 1) // cfg.batch_size
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        total, seen = 0.0, 0
        perm = rng.permutation(len(trainset))
        with progress_bar(steps, f"epoch {epoch}/{cfg.epochs}", "batch", quiet) as bar:
            for lo in range(0, len(perm), cfg.batch_size):
                batch = [_load_pair(*trainset[int(i)], cfg.crop, cfg.flip, rng, cfg.ignore_index) for i in perm[lo : lo + cfg.batch_size]]
                x = torch.from_numpy(np.stack([b[0] for b in batch])).to(device)
                y = torch.from_numpy(np.stack([b[1] for b in batch])).to(device)
                labelled = y[y != cfg.ignore_index]
                if labelled.numel() == 0 or weight_t[labelled].sum() == 0:
                    bar.update(1)  # a crop of ignored (or zero-weight) pixels only: nothing to learn from
                    continue
                loss = F.cross_entropy(model(x), y, weight=weight_t, ignore_index=cfg.ignore_index)
                if not torch.isfinite(loss):
                    raise InputError(f"training diverged at epoch {epoch} (loss {loss.item()}); lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
                opt.step()
                total += loss.item() * len(batch)
                seen += len(batch)
                bar.set_postfix(loss=f"{total / seen:.3f}")
                bar.update(1)
        miou = evaluate(model, val, num_classes, cfg.ignore_index, device)
        if seen == 0:
            raise DataError("no training batch had a labelled pixel: check --ignore-index and the masks")
        result.losses.append(total / seen)
        result.val_miou.append(miou)
        kept = miou > best
        if kept:
            best, result.best_epoch = miou, epoch
            provenance = {
                "epoch": epoch,
                "val_miou": round(miou, 4),
                "train_images": len(trainset),
                "val_images": n_val,
                "class_weights": result.class_weights,
                "seed": cfg.seed,
            }
            save_checkpoint(model, out, replace(spec, extra={"training": provenance}))
        note(f"epoch {epoch}/{cfg.epochs}: loss {total / seen:.4f}, val mIoU {miou:.3f}{' (kept)' if kept else ''}", quiet)
    return result
