"""Exports for people: the source video with labels blended in and the uncertainty beside it.

Reads the store chunk by chunk and the source video sequentially, so memory
stays bounded whatever the length; every file appears atomically.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from segbatch import location
from segbatch.atomic import atomic_path
from segbatch.colour import blend, colourise, heatmap
from segbatch.errors import InputError
from segbatch.progress import progress_bar
from segbatch.store import open_complete_store, sample_values

VIDEO_OUT_SUFFIXES = (".mp4", ".mkv", ".mov")
_HEAT_SAMPLE_CHUNKS = 16


def check_export_target(store: Path | str, attrs: dict[str, Any], to: Path) -> None:
    """Never write over a file of the job: the store's source, its checkpoint, or anything inside the store."""
    if location.inside(to, store):
        raise InputError(f"{to} is inside the store {store}; export somewhere else")
    for what, path in (("source", attrs["source"].get("path")), ("checkpoint", attrs["model"].get("path"))):
        if isinstance(path, str) and not location.is_url(path) and not location.is_url(to) and location.inside(path, to):
            raise InputError(f"{to} is the store's {what} ({path}); export somewhere else")


def export(store: location.Location, to: Path, alpha: float = 0.5, what: str = "labels", quiet: bool = False) -> int:
    """Export STORE: a raster store to a COG (.tif); a video store to an overlay video or a folder of PNG panels.

    Returns the frames (video) or pixels rows (raster) written.
    """
    root, attrs = open_complete_store(store, "exporting")
    check_export_target(store, attrs, to)
    source = attrs["source"]
    if source.get("kind") == "raster":
        if to.suffix.lower() not in (".tif", ".tiff"):
            raise InputError(f"{to}: a raster store exports to a Cloud-Optimised GeoTIFF (.tif)")
        return export_cog(root, attrs, to, what, quiet)
    if source.get("kind") != "video":
        raise InputError(f"{store} holds a {source.get('kind')} result, which has no export yet")
    panels = _panels(root, attrs, alpha)
    total = root["labels"].shape[0]
    with progress_bar(total, "exporting", "frame", quiet) as bar:
        if to.suffix.lower() in VIDEO_OUT_SUFFIXES:
            return _write_video(panels, to, root["time"][...], bar)
        if to.suffix:
            raise InputError(f"{to}: export writes {', '.join(VIDEO_OUT_SUFFIXES)} overlays or a folder of PNGs (no suffix)")
        return _write_pngs(panels, to, source["frame_range"][0], bar)


def _panels(root: Any, attrs: dict[str, Any], alpha: float) -> Iterator[np.ndarray]:
    """Frame by frame: the source with the palette blended in | the uncertainty heat map."""
    from segbatch.sources.video import probe_video, read_frames

    source = attrs["source"]
    path = location.parse(source["path"])
    if not location.exists(path):
        raise InputError(f"the source video {path} is gone; the overlay needs it")
    plan = probe_video(path)
    if plan.frames != source["frames"] or (plan.height, plan.width) != (source["height"], source["width"]):
        raise InputError(
            f"{path} changed since the run ({plan.frames} frames {plan.width}x{plan.height}, "
            f"store says {source['frames']} {source['width']}x{source['height']})"
        )
    first, stop = source["frame_range"]
    heat_name = "uncertainty" if "uncertainty" in root else "entropy"
    labels, heat = root["labels"], root[heat_name]
    vmax = heat_scale(heat)
    palette = attrs["model"]["palette"]
    chunk = labels.chunks[0]
    frames = read_frames(plan, first, stop)
    pending = next(frames, None)
    missing = np.full((plan.height, plan.width, 3), 96, np.uint8)  # grey: the source frame would not decode
    for lo in range(0, stop - first, chunk):
        lab = labels[lo : lo + chunk]
        unc = heat[lo : lo + chunk].astype(np.float32)
        for k in range(lab.shape[0]):
            rgb = missing
            if pending is not None and pending[0] == first + lo + k:
                rgb = pending[1]
                pending = next(frames, None)
            yield np.concatenate([blend(rgb, colourise(lab[k], palette), alpha), heatmap(unc[k], vmax)], axis=1)


def heat_scale(arr: Any) -> float:
    """One colour scale for a whole store: the 99th percentile over up to 16 chunks spread across it."""
    values = sample_values(arr, _HEAT_SAMPLE_CHUNKS)
    return float(np.quantile(values, 0.99)) if values.size and values.max() > 0 else 1.0


def _write_video(panels: Iterator[np.ndarray], to: Path, times: np.ndarray, bar: Any) -> int:
    """H.264 at the source's own timing (variable frame rate kept), written atomically."""
    import av

    time_base = Fraction(1, 90000)
    count = 0
    with atomic_path(to) as tmp:
        with av.open(str(tmp), "w") as out:
            stream = None
            for panel in panels:
                if stream is None:
                    rate = _nominal_rate(times)
                    stream = out.add_stream("libx264", rate=rate)
                    stream.height, stream.width = panel.shape[0] + panel.shape[0] % 2, panel.shape[1] + panel.shape[1] % 2
                    stream.pix_fmt, stream.time_base = "yuv420p", time_base
                    stream.options = {"crf": "20", "preset": "veryfast"}
                padded = np.pad(panel, ((0, stream.height - panel.shape[0]), (0, stream.width - panel.shape[1]), (0, 0)))
                frame = av.VideoFrame.from_ndarray(padded, format="rgb24")
                frame.pts, frame.time_base = int(round((times[count] - times[0]) / float(time_base))), time_base
                for packet in stream.encode(frame):
                    out.mux(packet)
                count += 1
                bar.update(1)
            if stream is not None:
                for packet in stream.encode():
                    out.mux(packet)
    return count


def _nominal_rate(times: np.ndarray) -> Fraction:
    """The encoder's nominal rate: the median frame step (frames still carry their own times)."""
    if len(times) < 2:
        return Fraction(25)
    step = float(np.median(np.diff(times)))
    return Fraction(1 / step).limit_denominator(1001) if step > 0 else Fraction(25)


def _write_pngs(panels: Iterator[np.ndarray], folder: Path, first: int, bar: Any) -> int:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for count, panel in enumerate(panels, start=1):
        with atomic_path(folder / f"frame_{first + count - 1:06d}.png") as tmp:
            Image.fromarray(panel).save(tmp)
        bar.update(1)
    return count


def export_cog(root: Any, attrs: dict[str, Any], to: Path, what: str, quiet: bool) -> int:
    """A Cloud-Optimised GeoTIFF (tiled, DEFLATE, overviews) of one array, with the source's CRS and transform.

    Labels are uint8 with the class palette as a colour map and 255 as nodata
    (overviews by nearest neighbour); uncertainty and entropy are float32 with
    NaN as nodata (overviews by average). Written chunk by chunk into a plain
    tiled GeoTIFF beside the target, then copied to COG layout, atomically.
    """
    import rasterio.shutil
    from rasterio.transform import Affine

    if what not in root or what == "ledger":
        raise InputError(f"the store has no {what!r} array (choose labels, uncertainty, entropy or confidence)")
    if attrs.get("status") != "complete":
        raise InputError(f"the store is not complete (status {attrs.get('status')}); finish it with segbatch run --resume first")
    arr = root[what]
    ref = root["spatial_ref"].attrs
    transform = Affine.from_gdal(*(float(v) for v in ref["GeoTransform"].split()))
    is_labels = what == "labels"
    profile = {
        "driver": "GTiff",
        "height": arr.shape[0],
        "width": arr.shape[1],
        "count": 1,
        "dtype": "uint8" if is_labels else "float32",
        "crs": ref.get("crs_wkt"),
        "transform": transform,
        "nodata": 255 if is_labels else float("nan"),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    with atomic_path(to) as final:
        plain = final.with_name(final.stem + ".plain.tif")  # a hidden temporary beside the target
        try:
            _write_plain(arr, plain, profile, attrs if is_labels else None, quiet)
            rasterio.shutil.copy(
                plain, final, driver="COG", compress="DEFLATE", overview_resampling="nearest" if is_labels else "average", blocksize=512, bigtiff="IF_SAFER"
            )
        finally:
            plain.unlink(missing_ok=True)
    return int(arr.shape[0])


def _write_plain(arr: Any, path: Path, profile: dict[str, Any], attrs: dict[str, Any] | None, quiet: bool) -> None:
    """The array into a tiled GeoTIFF, one store chunk at a time (bounded memory); with `attrs`, the palette too."""
    import rasterio
    from rasterio.windows import Window as RioWindow

    ch, cw = arr.chunks
    with rasterio.open(path, "w", **profile) as dst:
        if attrs is not None:
            dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(attrs["model"]["palette"])} | {255: (0, 0, 0, 0)})
        with progress_bar(arr.shape[0], "exporting", "row", quiet) as bar:
            for r in range(0, arr.shape[0], ch):
                for c in range(0, arr.shape[1], cw):
                    block = arr[r : r + ch, c : c + cw]
                    dst.write(block.astype(profile["dtype"]), 1, window=RioWindow(c, r, block.shape[1], block.shape[0]))
                bar.update(min(ch, arr.shape[0] - r))
