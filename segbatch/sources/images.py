"""Reading single images and class masks (PNG, JPEG, TIFF/GeoTIFF) as arrays, and planning a folder of them."""

from __future__ import annotations

import hashlib
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbatch.errors import DataError, InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_TIFF = (".tif", ".tiff")


def find_images(root: Path) -> list[Path]:
    """Every image under `root` (nested folders too), sorted by relative path for a stable order."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith("."))


def read_image(path: Path) -> np.ndarray:
    """An image as (H, W, C) in its own dtype; TIFFs through rasterio (any band count), the rest through Pillow."""
    try:
        if path.suffix.lower() in _TIFF:
            import rasterio
            from rasterio.errors import NotGeoreferencedWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a plain TIFF is an image like any other here
                with rasterio.open(path) as ds:
                    return np.moveaxis(ds.read(), 0, -1)
        from PIL import Image

        im: Image.Image
        with Image.open(path) as im:
            if im.mode not in ("L", "RGB", "I;16", "I", "F"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except Exception as exc:  # decoders raise many types; all mean "unreadable"
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def read_mask(path: Path) -> np.ndarray:
    """A class-index mask as (H, W) integers (palette PNGs give their indices, not colours)."""
    if path.suffix.lower() not in _TIFF:
        from PIL import Image

        try:
            with Image.open(path) as im:
                if im.mode in ("P", "1", "L", "I;16", "I"):
                    return np.asarray(im.convert("L") if im.mode == "1" else im)
        except Exception as exc:
            raise DataError(f"{path}: unreadable mask ({type(exc).__name__})") from None
    arr = read_image(path)
    if arr.shape[2] != 1:
        raise DataError(f"{path}: a mask must have one band of class ids, found {arr.shape[2]}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: a mask must hold integer class ids, found {arr.dtype}")
    return arr[:, :, 0]


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """(H, W, C) -> float32 (C, H, W) in [0, 1]: integers scaled by their type's range, floats clipped."""
    if np.issubdtype(image.dtype, np.integer):
        out = image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    else:
        out = np.clip(image.astype(np.float32), 0.0, 1.0)
    return np.ascontiguousarray(np.moveaxis(out, -1, 0))


def image_shape(path: Path) -> tuple[int, int, int]:
    """(height, width, bands) as `read_image` will return them, from the file's header alone."""
    try:
        if path.suffix.lower() in _TIFF:
            import rasterio

            with rasterio.open(path) as ds:
                return ds.height, ds.width, ds.count
        from PIL import Image

        with Image.open(path) as im:
            return im.height, im.width, 1 if im.mode in ("L", "I;16", "I", "F") else 3
    except Exception as exc:
        raise DataError(f"{path}: unreadable image ({type(exc).__name__})") from None


HEADER_THREADS = 16  # header reads wait on the disk (or network), not the CPU


@dataclass(frozen=True)
class ImageFolderPlan:
    """What the driver learns about an image folder before any pixel is read.

    `paths[i]` (relative, POSIX) is image i of the store; files whose header
    cannot be read are in `unreadable` and not on the image axis.
    """

    root: str  # absolute folder
    paths: tuple[str, ...]
    shapes: tuple[tuple[int, int, int], ...]  # (height, width, bands) per image, from its header
    unreadable: tuple[tuple[str, str], ...]  # (relative path, reason)
    listing_sha256: str  # "relpath\tsize\n" of every listed file (unreadable ones included)

    @property
    def images(self) -> int:
        return len(self.paths)

    @property
    def max_height(self) -> int:
        return max(h for h, _, _ in self.shapes)

    @property
    def max_width(self) -> int:
        return max(w for _, w, _ in self.shapes)


def probe_folder(root: Path) -> ImageFolderPlan:
    """List the images under `root` (sorted relative paths) and read every header; a folder with none is an InputError."""
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    files = find_images(root)
    if not files:
        raise InputError(f"{root} has no images (PNG, JPEG or TIFF, nested folders included)")
    rel = [f.relative_to(root).as_posix() for f in files]
    digest = hashlib.sha256()
    for name, f in zip(rel, files):
        digest.update(f"{name}\t{f.stat().st_size}\n".encode())

    def header(f: Path) -> tuple[int, int, int] | str:
        try:
            return image_shape(f)
        except DataError as exc:
            return str(exc).removeprefix(f"{f}: ")

    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=min(HEADER_THREADS, len(files))) as pool:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # as in read_image (one filter for all threads)
        headers = list(pool.map(header, files))
    paths: list[str] = []
    shapes: list[tuple[int, int, int]] = []
    unreadable: list[tuple[str, str]] = []
    for name, h in zip(rel, headers):
        if isinstance(h, str):
            unreadable.append((name, h))
        else:
            paths.append(name)
            shapes.append(h)
    if not paths:
        raise InputError(f"{root}: none of its {len(files)} images is readable (first: {unreadable[0][0]}: {unreadable[0][1]})")
    return ImageFolderPlan(str(root.resolve()), tuple(paths), tuple(shapes), tuple(unreadable), digest.hexdigest())
