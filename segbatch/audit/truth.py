"""Ground truth for an audit: class-index masks matched to the store's items.

- image stores: a folder of masks, matched by relative path (any image
  suffix), else by a file stem that is unique in the folder;
- video stores: a folder of per-frame masks whose names end in the source
  frame number (`000120.png`, `drive_f120.png`; sparse annotation is fine),
  or an array (`.npy`, or a Zarr array / a group with `labels`) of
  (frames, H, W) indexed by the store's frames or by the source's;
- raster stores: a single-band label raster on the store's grid (GDAL
  nodata is ignored), or a (H, W) array.

Each kind of store picks its own (`Kind.open_truth`, segbatch/kinds/).
Truth values outside [0, classes) count as "not labelled" and are ignored,
as is `--ignore-index`. Items without truth are reported, never dropped.

A job store of many inputs takes one truth per input, each of the kinds
above (`truth_per_input`): a folder holding an entry named after each input
(`truth/drive-01/`, `truth/scene-7.tif`), or a manifest of `NAME PATH` lines.
Inputs without an entry are audited without truth.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segbatch import kinds
from segbatch.audit.items import Item
from segbatch.errors import DataError, InputError
from segbatch.sources.images import find_images, read_mask
from segbatch.store import NODATA_LABEL

IGNORED = -1  # truth value of pixels that have no class (GDAL nodata)


def labelled_mask(labels: np.ndarray, truth: np.ndarray, k: int, ignore_index: int | None) -> np.ndarray:
    """Pixels that count: predicted (not nodata) and labelled with a class the model knows (not ignored)."""
    ok: np.ndarray = (labels != NODATA_LABEL) & (truth >= 0) & (truth < k)
    if ignore_index is not None:
        ok &= truth != ignore_index
    return ok


class TruthSource:
    """Reads the truth of one item as (H, W) int64 class ids (IGNORED where unlabelled), or None when it has none."""

    description = ""

    def read(self, item: Item) -> np.ndarray | None:
        raise NotImplementedError


def open_truth(path: Path, root: Any, attrs: dict[str, Any]) -> TruthSource:
    """The truth source `--truth PATH` names, checked against the store's kind and shape."""
    if not path.exists():
        raise InputError(f"--truth {path}: no such file or folder")
    return kinds.kind(attrs["source"]["kind"]).open_truth(path, root, attrs)


def is_array_truth(path: Path) -> bool:
    """Whether `--truth PATH` names an array (a .npy file, a Zarr array or group) rather than masks or a label raster."""
    return _is_zarr(path) or path.suffix.lower() == ".npy"


SINGLE_TRUTH_SUFFIXES = (".npy", ".tif", ".tiff", ".png", ".zarr")  # what one input's truth is, never a manifest


def truth_per_input(path: Path, names: Sequence[str]) -> dict[str, Path]:
    """--truth of a job of many inputs: each input's truth by its name (a folder with an entry per name, or a manifest).

    A folder's entry is the input's name itself (a folder of masks, a Zarr
    array) or the name with one suffix (`NAME.npy`, `NAME.tif`). A manifest
    has a `NAME PATH` line per input (tab or spaces; `#` comments; relative
    paths from the manifest's folder); a name that is no input is refused.
    """
    if not path.exists():
        raise InputError(f"--truth {path}: no such file or folder")
    if path.is_dir() and not _is_zarr(path):
        found = _entries_by_name(path, names)
    elif path.is_file() and path.suffix.lower() not in SINGLE_TRUTH_SUFFIXES:
        found = _manifest(path, names)
    else:
        raise InputError(f"--truth {path}: a job of many inputs takes a folder with an entry per input name, or a manifest of NAME PATH lines")
    if not found and names:
        raise InputError(f"--truth {path}: names none of the job's inputs (e.g. {path / names[0]} or a manifest line '{names[0]} PATH')")
    return found


def _entries_by_name(folder: Path, names: Sequence[str]) -> dict[str, Path]:
    wanted = set(names)
    exact: dict[str, Path] = {}
    by_stem: dict[str, list[Path]] = {}
    for p in folder.iterdir():
        if p.name.startswith("."):
            continue
        if p.name in wanted:
            exact[p.name] = p
        stem, dot, suffix = p.name.rpartition(".")
        if dot and stem in wanted and "." not in suffix:
            by_stem.setdefault(stem, []).append(p)
    found = dict(exact)
    for name, paths in by_stem.items():
        if name in found:
            continue
        paths = [p for p in paths if p.name not in exact]  # an entry named after one input is never another's
        if len(paths) > 1:
            raise InputError(f"--truth {folder}: {', '.join(sorted(p.name for p in paths))} all name input {name}; keep one")
        if paths:
            found[name] = paths[0]
    return found


def _manifest(path: Path, names: Sequence[str]) -> dict[str, Path]:
    known = set(names)
    found: dict[str, Path] = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--truth {path}: not a readable manifest of NAME PATH lines ({type(exc).__name__})") from None
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split(None, 1)
        if len(parts) != 2:
            raise InputError(f"--truth {path}, line {number}: expected NAME and PATH, got {text!r}")
        name, where = parts[0], Path(parts[1].strip())
        if name not in known:
            raise InputError(f"--truth {path}, line {number}: the job has no input named {name!r}")
        if name in found:
            raise InputError(f"--truth {path}, line {number}: input {name} is named twice")
        found[name] = where if where.is_absolute() else path.parent / where
    return found


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup"))


def _check_shape(mask: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    if mask.shape != shape:
        raise DataError(f"{where}: truth is {mask.shape[-1]}x{mask.shape[0]} but the prediction is {shape[-1]}x{shape[0]}")
    return mask.astype(np.int64)


class FolderTruth(TruthSource):
    """Masks in a folder, matched to images by relative path, else by a unique file stem."""

    def __init__(self, folder: Path) -> None:
        self.description = f"masks in {folder}"
        masks = find_images(folder)
        self.by_path = {p.relative_to(folder).with_suffix("").as_posix(): p for p in masks}
        stems: dict[str, list[Path]] = {}
        for p in masks:
            stems.setdefault(p.stem, []).append(p)
        self.by_stem = {stem: ps[0] for stem, ps in stems.items() if len(ps) == 1}
        if not masks:
            raise InputError(f"--truth {folder}: no masks (PNG, JPEG, TIFF) in it")

    def read(self, item: Item) -> np.ndarray | None:
        rel = Path(item.meta["path"])
        mask = self.by_path.get(rel.with_suffix("").as_posix()) or self.by_stem.get(rel.stem)
        if mask is None:
            return None
        return _check_shape(read_mask(mask), (item.meta["height"], item.meta["width"]), str(mask))


class FrameFolderTruth(TruthSource):
    """Per-frame masks in a folder, matched by the source frame number their names end in."""

    def __init__(self, folder: Path, shape: tuple[int, ...]) -> None:
        self.description = f"per-frame masks in {folder}"
        self.shape = shape
        self.by_frame: dict[int, Path] = {}
        for p in find_images(folder):
            m = re.search(r"(\d+)$", p.stem)
            if m is None:
                continue
            frame = int(m.group(1))
            if frame in self.by_frame:
                raise InputError(f"--truth {folder}: {self.by_frame[frame].name} and {p.name} both name frame {frame}")
            self.by_frame[frame] = p
        if not self.by_frame:
            raise InputError(f"--truth {folder}: no masks named by frame number (e.g. 000120.png)")

    def read(self, item: Item) -> np.ndarray | None:
        path = self.by_frame.get(item.meta["frame"])
        return None if path is None else _check_shape(read_mask(path), self.shape, str(path))


class ArrayTruth(TruthSource):
    """An integer array of the store's shape; `source_frames` (frames of the source, the store's first) also takes one of a video's source frames."""

    def __init__(self, path: Path, shape: tuple[int, ...], source_frames: tuple[int, int] | None = None) -> None:
        self.description = f"array {path}"
        if path.suffix.lower() == ".npy":
            try:
                self.array: Any = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise InputError(f"--truth {path}: not a readable .npy array ({exc})") from None
        else:
            import zarr

            try:
                node = zarr.open(str(path), mode="r")
            except Exception as exc:  # zarr raises several types for "not this"
                raise InputError(f"--truth {path}: not a readable Zarr array ({type(exc).__name__})") from None
            if isinstance(node, zarr.Group):
                if "labels" not in node:
                    raise InputError(f"--truth {path}: a Zarr group without a labels array")
                node = node["labels"]
            self.array = node
        if not np.issubdtype(self.array.dtype, np.integer):
            raise InputError(f"--truth {path}: holds {self.array.dtype}, not integer class ids")
        self.offset = 0
        have = tuple(self.array.shape)
        if source_frames is not None and have != shape and have[1:] == shape[1:] and have[0] == source_frames[0]:
            self.offset = source_frames[1]  # indexed by the source's frames
        elif have != shape:
            raise InputError(f"--truth {path}: shape {have} matches neither the store's {shape} nor the source's frames")

    def read(self, item: Item) -> np.ndarray | None:
        region = item.region
        if self.offset:
            region = (slice(region[0].start + self.offset, region[0].stop + self.offset), *region[1:])
        out = np.asarray(self.array[region])
        return (out[0] if out.ndim == 3 else out).astype(np.int64)


class RasterTruth(TruthSource):
    """A single-band label raster on the store's grid (GDAL nodata ignored)."""

    def __init__(self, path: Path, shape: tuple[int, ...], root: Any) -> None:
        import rasterio

        self.description = f"label raster {path}"
        self.path = path
        try:
            with rasterio.open(path) as ds:
                count, size, transform = ds.count, (ds.height, ds.width), tuple(ds.transform.to_gdal())
                dtype = ds.dtypes[0]
        except rasterio.errors.RasterioError as exc:
            raise InputError(f"--truth {path}: not a readable raster ({str(exc).splitlines()[0]})") from None
        if count != 1:
            raise InputError(f"--truth {path}: a label raster has one band of class ids, this one has {count}")
        if not np.issubdtype(np.dtype(dtype), np.integer):
            raise InputError(f"--truth {path}: holds {dtype}, not integer class ids")
        if size != shape:
            raise InputError(f"--truth {path} is {size[1]}x{size[0]} but the store is {shape[1]}x{shape[0]}; resample it to the store's grid")
        ours = tuple(float(v) for v in root["spatial_ref"].attrs.get("GeoTransform", "").split())
        if ours and transform != (0.0, 1.0, 0.0, 0.0, 0.0, 1.0) and not np.allclose(ours, transform, rtol=0, atol=1e-6 * max(1.0, abs(ours[1]))):
            raise InputError(f"--truth {path} is on another grid (transform {transform}, store {ours}); resample it to the store's grid")

    def read(self, item: Item) -> np.ndarray | None:
        import rasterio
        from rasterio.windows import Window

        rows, cols = item.region
        win = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        with rasterio.open(self.path) as ds:
            data: np.ndarray = ds.read(1, window=win).astype(np.int64)
            valid = ds.read_masks(1, window=win) > 0
        data[~valid] = IGNORED
        return data
