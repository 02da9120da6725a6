"""A labelled dataset with known label errors: the demo's street scenes, some of whose masks get classes swapped in a region
and others random labels in a region (what the audit's label-error search must rank first)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segbatch.demo.scenes import BUILDING, CAR, PAVEMENT, ROAD, SKY, TREE

SWAPS = ((ROAD, PAVEMENT), (BUILDING, TREE), (SKY, BUILDING), (CAR, ROAD))


def corrupt(mask: np.ndarray, how: str, rng: np.random.Generator) -> np.ndarray:
    """`mask` with a label error: "swap" relabels one present class pair's pixels in the lower or upper half (whichever holds
    more of it), "noise" gives random classes to a block of about a sixth of the image."""
    out = mask.copy()
    h, w = mask.shape
    if how == "swap":
        a, b = max(SWAPS, key=lambda pair: int((mask == pair[0]).sum()))  # the most present class of the pairs
        region = np.zeros_like(mask, bool)
        rows = slice(h // 2, h) if (mask[h // 2 :] == a).sum() >= (mask[: h // 2] == a).sum() else slice(0, h // 2)
        region[rows] = True
        out[region & (mask == a)] = b
        return out
    y, x = rng.integers(0, h - h // 3), rng.integers(0, w - w // 2)
    block = out[y : y + h // 3, x : x + w // 2]
    block[...] = rng.integers(0, 11, block.shape)
    return out


def write_noisy_dataset(folder: Path, count: int, height: int, width: int, swapped: int, noisy: int, seed: int = 11) -> tuple[Path, Path, set[str]]:
    """folder/images, folder/masks (the true masks with `swapped` + `noisy` corrupted, chosen at random); returns the two
    folders and the corrupted images' names."""
    from PIL import Image

    from segbatch.demo.scenes import write_dataset

    write_dataset(folder, count, height, width, seed)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(count)[: swapped + noisy]
    corrupted = set()
    for k, index in enumerate(chosen):
        path = folder / "masks" / f"{index:05d}.png"
        mask = np.asarray(Image.open(path))
        Image.fromarray(corrupt(mask, "swap" if k < swapped else "noise", rng), "L").save(path)
        corrupted.add(f"{index:05d}.png")
    return folder / "images", folder / "masks", corrupted
