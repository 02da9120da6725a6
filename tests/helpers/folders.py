"""Seeded generators of small image folders: mixed formats and sizes, nested folders, and broken files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def pixels(seed: int, height: int, width: int, bands: int = 3) -> np.ndarray:
    """A smooth ramp plus noise (uint8), different for every seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    base = np.stack([(xx * (b + 1) + yy * (3 - b)) * 255 / (width + height) / 3 for b in range(bands)], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape) + seed * 17 % 60, 0, 255).astype(np.uint8)


def write_image(path: Path, image: np.ndarray, **save: object) -> Path:
    """PNG/JPEG through Pillow, TIFF through rasterio (any band count)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        import warnings

        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        h, w, bands = image.shape
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a plain TIFF, as image datasets have them
            with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=bands, dtype=image.dtype) as ds:
                ds.write(np.moveaxis(image, -1, 0))
    else:
        Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(path, **save)
    return path


def write_truncated_jpeg(path: Path, seed: int, height: int, width: int) -> Path:
    """A JPEG whose header is whole but whose data stops half-way: its size is known, its pixels are not."""
    buf = io.BytesIO()
    Image.fromarray(pixels(seed, height, width)).save(buf, format="JPEG", quality=95)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def write_mixed_folder(root: Path) -> Path:
    """PNG, JPEG, grey PNG and TIFF of different sizes in nested folders, plus a 4-band TIFF, random bytes named .png, a truncated JPEG and a text file."""
    write_image(root / "a.png", pixels(1, 40, 56))
    write_image(root / "b.jpg", pixels(2, 64, 48), quality=95)
    write_image(root / "nested" / "c.png", pixels(3, 30, 50, bands=1))
    write_image(root / "nested" / "deeper" / "d.tif", pixels(4, 32, 40))
    write_image(root / "nested" / "four.tif", pixels(5, 24, 24, bands=4))
    write_truncated_jpeg(root / "nested" / "truncated.jpg", 6, 36, 44)
    (root / "corrupt.png").write_bytes(np.random.default_rng(7).integers(0, 256, 500, dtype=np.uint8).tobytes())
    (root / "notes.txt").write_text("not an image")
    return root


def write_many(root: Path, count: int, seed: int = 0) -> Path:
    """`count` RGB PNGs of random sizes (40-96 pixels a side), ten to a subfolder."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = (int(v) for v in rng.integers(40, 97, 2))
        write_image(root / f"part{i // 10}" / f"img{i:03d}.png", pixels(seed * 1000 + i, h, w))
    return root
