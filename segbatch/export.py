"""Exports for people and GIS tools: overlay videos (labels blended in, uncertainty beside, a legend below) and COGs.

Reads the store chunk by chunk and the source video sequentially, so memory
stays bounded whatever the length; every file appears atomically.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from segbatch import kinds, location
from segbatch.atomic import atomic_path
from segbatch.colour import blend, colourise, heatmap, legend_font_px, legend_strip
from segbatch.errors import InputError, first_line
from segbatch.progress import progress_bar
from segbatch.sampling import sample_values
from segbatch.store import open_complete_store

VIDEO_OUT_SUFFIXES = (".mp4", ".mkv", ".mov")
_HEAT_SAMPLE_CHUNKS = 16
# libx264's presets, fastest first, and the overlay's encoder defaults
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
DEFAULT_CRF, DEFAULT_PRESET = 20.0, "veryfast"
MAX_CRF = 51.0
MAX_LEGEND_CLASSES = 32  # more than this: the legend lists only the classes the store holds
# GDAL's COG driver: compressions that would change class ids (labels must stay exact)
_LOSSY_COMPRESS = ("JPEG", "WEBP", "JXL")
_LABEL_RESAMPLING = ("NEAREST", "MODE")  # the resamplings that keep overview pixels class ids
_CO_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def check_export_target(store: Path | str, attrs: dict[str, Any], to: Path) -> None:
    """Never write over a file of the job: the store's source, its checkpoint, or anything inside the store."""
    if location.inside(to, store):
        raise InputError(f"{to} is inside the store {store}; export somewhere else")
    for what, path in (("source", attrs["source"].get("path")), ("checkpoint", attrs["model"].get("path"))):
        if isinstance(path, str) and location.inside(path, to):
            raise InputError(f"{to} is the store's {what} ({path}); export somewhere else")


def export(
    store: location.Location,
    to: Path,
    alpha: float = 0.5,
    what: str = "labels",
    quiet: bool = False,
    creation_options: Mapping[str, str] | None = None,
    crf: float | None = None,
    preset: str | None = None,
    source: location.Location | None = None,
) -> int:
    """Export STORE: a raster store to a COG (.tif); a video store to an overlay video or a folder of PNG panels.

    `creation_options` (GDAL's, for the COG) and `crf` / `preset` (libx264's,
    for the overlay video) are refused where they do not apply. `source`:
    where the store's input is now, when not where the run read it. Returns
    the frames (video) or pixels rows (raster) written.
    """
    root, attrs = open_complete_store(store, "exporting")
    check_export_target(store, attrs, to)
    if source is not None and location.inside(source, to):
        raise InputError(f"{to} is the store's source ({source}); export somewhere else")
    kind = attrs["source"]["kind"]
    write = kinds.kind(kind).exporter()
    if write is None:
        raise InputError(f"{store} holds a {kind} result, which has no export yet")
    return write(root, attrs, to, ExportOptions(alpha, what, quiet, creation_options, crf, preset, source))


@dataclass(frozen=True)
class ExportOptions:
    """What `segbatch export` was asked for: each kind's export (`Kind.exporter`) takes what applies to it and refuses the rest."""

    alpha: float = 0.5  # the labels' opacity over a video frame
    what: str = "labels"  # the array a COG holds
    quiet: bool = False
    creation_options: Mapping[str, str] | None = None  # GDAL's, for a COG
    crf: float | None = None  # libx264's, for an overlay video
    preset: str | None = None
    source: location.Location | None = None  # where the store's input is now (--source); None: where the run read it

    @property
    def encoder(self) -> str:
        """The overlay encoder's flags that were given ("--crf and --preset"), or ""."""
        return " and ".join(flag for flag, value in (("--crf", self.crf), ("--preset", self.preset)) if value is not None)


def export_raster(root: Any, attrs: dict[str, Any], to: Path, options: ExportOptions) -> int:
    """A raster store's export: a COG of `options.what`."""
    if to.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"{to}: a raster store exports to a Cloud-Optimised GeoTIFF (.tif)")
    if options.encoder:
        raise InputError(f"{options.encoder} set the overlay video's encoder; a raster store exports a COG (its GDAL creation options: --co KEY=VALUE)")
    return export_cog(root, attrs, to, options.what, options.quiet, options.creation_options)


def export_overlay(root: Any, attrs: dict[str, Any], to: Path, options: ExportOptions) -> int:
    """A video store's export: an overlay video (`to` ends in a video suffix), else a folder of PNG panels."""
    source = attrs["source"]
    if options.creation_options:
        raise InputError("--co passes GDAL creation options to the COG of a raster store; a video store exports an overlay video or PNG frames")
    is_video = to.suffix.lower() in VIDEO_OUT_SUFFIXES
    if to.suffix and not is_video:
        raise InputError(f"{to}: export writes {', '.join(VIDEO_OUT_SUFFIXES)} overlays or a folder of PNGs (no suffix)")
    if options.encoder and not is_video:
        raise InputError(f"{options.encoder} set the overlay video's encoder; PNG frames have none (export to {', '.join(VIDEO_OUT_SUFFIXES)} to use them)")
    x264 = x264_options(options.crf, options.preset)
    panels = _panels(root, attrs, options.alpha, options.source)
    total = root["labels"].shape[0]
    with progress_bar(total, "exporting", "frame", options.quiet) as bar:
        if is_video:
            return _write_video(panels, to, root["time"][...], bar, x264, source["frame_range"])
        return _write_pngs(panels, to, source["frame_range"][0], bar)


def x264_options(crf: float | None = None, preset: str | None = None) -> dict[str, str]:
    """libx264's options for the overlay, as ffmpeg's -crf and -preset take them (defaults: crf 20, veryfast)."""
    crf = DEFAULT_CRF if crf is None else float(crf)
    preset = DEFAULT_PRESET if preset is None else preset
    if not 0 <= crf <= MAX_CRF:
        raise InputError(f"--crf {crf:g}: libx264's quality scale runs from 0 (best) to {MAX_CRF:g} (worst)")
    if preset not in X264_PRESETS:
        raise InputError(f"--preset {preset!r}: libx264 has {', '.join(X264_PRESETS)}")
    return {"crf": f"{crf:g}", "preset": preset}


def _panels(root: Any, attrs: dict[str, Any], alpha: float, moved: location.Location | None) -> Iterator[np.ndarray]:
    """Frame by frame: the source with the palette blended in | the uncertainty heat map."""
    from segbatch.sources.video import probe_video, read_frames

    source = attrs["source"]
    path = location.parse(moved if moved is not None else source["path"])
    if not location.exists(path):
        given = "" if moved is not None else "; --source: where it is now (a signed URL's signature is never recorded)"
        raise InputError(f"the source video {path} cannot be read; the overlay needs it{given}")  # the CLI redacts every line
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
    heat_label = "uncertainty" if heat_name == "uncertainty" else "entropy (nats)"
    legend = _legend(labels, attrs["model"], vmax, heat_label, labels.shape[1], labels.shape[2])
    missing = np.full((plan.height, plan.width, 3), 96, np.uint8)  # grey: the source frame would not decode
    with closing(read_frames(plan, first, stop)) as frames:  # its decoder closed when this stops, however it stops
        pending = next(frames, None)
        for lo in range(0, stop - first, chunk):
            lab = labels[lo : lo + chunk]
            unc = heat[lo : lo + chunk].astype(np.float32)
            for k in range(lab.shape[0]):
                rgb = missing
                if pending is not None and pending[0] == first + lo + k:
                    rgb = pending[1]
                    pending = next(frames, None)
                panels = np.concatenate([blend(rgb, colourise(lab[k], palette), alpha), heatmap(unc[k], vmax)], axis=1)
                yield np.concatenate([panels, legend], axis=0)


def _legend(labels: Any, model: dict[str, Any], vmax: float, heat_label: str, height: int, width: int) -> np.ndarray:
    """The strip under the panels: class colours and names (all of them, or those the store holds if there are many), and the heat scale."""
    palette, names = model["palette"], _class_names(model)
    shown = list(range(len(palette)))
    if len(palette) > MAX_LEGEND_CLASSES:
        present: set[int] = set()
        for lo in range(0, labels.shape[0], labels.chunks[0]):
            present.update(int(v) for v in np.unique(labels[lo : lo + labels.chunks[0]]))
        shown = sorted(c for c in present if c < len(palette)) or shown
    return legend_strip(2 * width, [names[c] for c in shown], [palette[c] for c in shown], vmax, heat_label, bar_left=width, font_px=legend_font_px(height))


def heat_scale(arr: Any) -> float:
    """One colour scale for a whole store: the 99th percentile over up to 16 chunks spread across it."""
    values = sample_values(arr, _HEAT_SAMPLE_CHUNKS)
    return float(np.quantile(values, 0.99)) if values.size and values.max() > 0 else 1.0


def _write_video(panels: Iterator[np.ndarray], to: Path, times: np.ndarray, bar: Any, x264: dict[str, str], frame_range: Sequence[int] = (0, 0)) -> int:
    """H.264 at the source's own timing (variable frame rate kept, a subclip starting where it starts in the source), written atomically."""
    import av

    time_base = Fraction(1, 90000)
    origin = min(0.0, float(times[0])) if len(times) else 0.0  # the source's times, unless they start below zero
    count = 0
    with atomic_path(to) as tmp:
        with av.open(str(tmp), "w") as out:
            if len(times):
                out.metadata["comment"] = (
                    f"segbatch overlay of source frames {frame_range[0]}-{frame_range[1] - 1}; "
                    f"the first is at {float(times[0]):.3f} s in the source, {float(times[0]) - origin:.3f} s here"
                )
            stream = None
            for panel in panels:
                if stream is None:
                    rate = _nominal_rate(times)
                    stream = out.add_stream("libx264", rate=rate)
                    stream.height, stream.width = panel.shape[0] + panel.shape[0] % 2, panel.shape[1] + panel.shape[1] % 2
                    stream.pix_fmt, stream.time_base = "yuv420p", time_base
                    stream.options = dict(x264)
                padded = np.pad(panel, ((0, stream.height - panel.shape[0]), (0, stream.width - panel.shape[1]), (0, 0)))
                frame = av.VideoFrame.from_ndarray(padded, format="rgb24")
                frame.pts, frame.time_base = int(round((times[count] - origin) / float(time_base))), time_base
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


def export_cog(root: Any, attrs: dict[str, Any], to: Path, what: str, quiet: bool, creation_options: Mapping[str, str] | None = None) -> int:
    """A Cloud-Optimised GeoTIFF (tiled, DEFLATE, overviews) of one array, with the source's CRS and transform.

    Labels are uint8 with the class palette as a colour map and 255 as nodata
    (overviews by nearest neighbour); uncertainty and entropy are float32 with
    NaN as nodata (overviews by average). The band is described by the array's
    name, the overview resampling is recorded in the dataset tag
    OVERVIEW_RESAMPLING, and `creation_options` (GDAL's, as `--co KEY=VALUE`)
    override the defaults. Labels carry the class names as GDAL category names
    and a raster attribute table: a GeoTIFF keeps those only in GDAL's
    `.aux.xml` sidecar (which GDAL and QGIS read), so that file is written
    beside the COG; the band's tags CLASS_<id> hold the names in the COG too.
    Written chunk by chunk into a plain tiled GeoTIFF beside the target, then
    copied to COG layout, atomically.
    """
    import rasterio.shutil
    from rasterio.transform import Affine

    if what not in root or what == "ledger":
        raise InputError(f"the store has no {what!r} array (choose labels, uncertainty, entropy or confidence)")
    if attrs.get("status") != "complete":
        raise InputError(f"the store is not complete (status {attrs.get('status')}); finish it with segbatch run --resume first")
    is_labels = what == "labels"
    options = cog_options(is_labels, creation_options)
    if creation_options:
        check_cog_options(options, creation_options, "uint8" if is_labels else "float32", is_labels)
    arr = root[what]
    ref = root["spatial_ref"].attrs
    transform = Affine.from_gdal(*(float(v) for v in ref["GeoTransform"].split()))
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
    tags = {} if options.get("OVERVIEWS", "").upper() == "NONE" else {"OVERVIEW_RESAMPLING": options["OVERVIEW_RESAMPLING"].upper()}
    model = attrs["model"] if is_labels else None
    sidecar = Path(f"{to}.aux.xml")
    with atomic_path(to) as final:
        plain = final.with_name(final.stem + ".plain.tif")  # hidden temporaries beside the target
        described = final.with_name(final.stem + ".plain.vrt")
        made_sidecar = Path(f"{final}.aux.xml")
        try:
            _write_plain(arr, plain, profile, what, tags, model, quiet)
            if model is not None:
                _describe_classes(plain, described, model)
            rasterio.shutil.copy(described if model is not None else plain, final, driver="COG", **options)
            if made_sidecar.exists():
                os.replace(made_sidecar, sidecar)
            else:
                sidecar.unlink(missing_ok=True)  # one left by an export this one replaces would describe the wrong file
        finally:
            for temporary in (plain, described, made_sidecar):
                temporary.unlink(missing_ok=True)
    return int(arr.shape[0])


def cog_options(is_labels: bool, user: Mapping[str, str] | None = None) -> dict[str, str]:
    """GDAL's COG creation options: segbatch's defaults, then the user's (keys upper-cased, as GDAL reads them)."""
    options = {"COMPRESS": "DEFLATE", "BLOCKSIZE": "512", "BIGTIFF": "IF_SAFER", "OVERVIEW_RESAMPLING": "NEAREST" if is_labels else "AVERAGE"}
    options.update({key.upper(): str(value) for key, value in (user or {}).items()})
    return options


def parse_creation_option(text: str) -> tuple[str, str]:
    """'KEY=VALUE' -> (KEY, VALUE), as rio's --co takes it; a key is a GDAL option name, the value is not empty."""
    key, sep, value = text.partition("=")
    if not sep or not _CO_KEY.fullmatch(key.strip()) or not value.strip():
        raise InputError(f"--co {text!r} is not KEY=VALUE (a GDAL creation option, e.g. COMPRESS=ZSTD)")
    return key.strip().upper(), value.strip()


def check_cog_options(options: Mapping[str, str], user: Mapping[str, str], dtype: str, is_labels: bool) -> None:
    """Refuse creation options GDAL's COG driver would ignore, reject or die on, before any work; and lossy ones for labels.

    GDAL only warns about an unknown option or value and carries on (with some,
    such as BLOCKSIZE=abc, it then allocates until the process aborts), so a
    tiny COG is written with the options in a child process: GDAL's first
    complaint is the error, and the child is stopped there.
    """
    given = " ".join(f"--co {key.upper()}={value}" for key, value in user.items())
    if is_labels:
        if options.get("COMPRESS", "").upper() in _LOSSY_COMPRESS:
            lossy = options["COMPRESS"].upper()
            raise InputError(f"{given}: {lossy} is lossy and would change class ids; labels take a lossless COMPRESS (DEFLATE, LZW, ZSTD, ...)")
        if options.get("MAX_Z_ERROR", "0").strip() not in ("0", "0.0"):
            raise InputError(f"{given}: MAX_Z_ERROR other than 0 is lossy and would change class ids")
        for key in ("OVERVIEW_RESAMPLING", "RESAMPLING"):
            if options.get(key, "NEAREST").upper() not in _LABEL_RESAMPLING:
                raise InputError(f"{given}: {key}={options[key]} would blend class ids; labels take {' or '.join(_LABEL_RESAMPLING)}")
    probe = dict(options)
    if "OVERVIEW_COUNT" not in probe and probe.get("OVERVIEWS", "").upper() != "NONE":
        probe["OVERVIEW_COUNT"] = "1"  # so that the tiny test image gets an overview, and the overview options are tried too
    payload = json.dumps({"options": probe, "dtype": dtype, "palette": is_labels})
    code = "from segbatch.export import _probe_cog_options; _probe_cog_options()"
    here = str(Path(__file__).resolve().parents[1])  # segbatch importable in the child, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)}
    with subprocess.Popen([sys.executable, "-c", code, payload], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) as child:
        try:
            assert child.stdout is not None
            complaint = next((line.strip() for line in child.stdout if line.strip()), "")
        finally:
            if child.poll() is None:
                child.kill()  # GDAL has complained: what it does next (with BLOCKSIZE=abc, allocate until it aborts) is not worth waiting for
            status = child.wait()
    if complaint:
        raise InputError(f"{given}: GDAL's COG driver says: {complaint}")
    if status != 0:
        raise InputError(f"{given}: GDAL's COG driver failed on these creation options (exit status {status})")


def _probe_cog_options() -> None:
    """In a child process (check_cog_options): write a 64x64 COG to memory with the options; print each GDAL complaint as it comes."""
    import logging

    import rasterio.shutil
    from rasterio.io import MemoryFile
    from rasterio.transform import Affine

    args = json.loads(sys.argv[1])

    class Echo(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            print(re.sub(r"^CPLE_\w+ in ", "", record.getMessage()).splitlines()[0], flush=True)

    logger = logging.getLogger("rasterio")
    logger.setLevel(logging.WARNING)
    logger.addHandler(Echo(logging.WARNING))
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 1, "dtype": args["dtype"], "crs": "EPSG:3857", "transform": Affine(10, 0, 0, 0, -10, 640)}
    try:
        with MemoryFile() as memory:
            with memory.open(**profile) as dst:
                dst.write(np.zeros((1, 64, 64), args["dtype"]))
                if args["palette"]:
                    dst.write_colormap(1, {0: (255, 0, 0, 255), 1: (0, 0, 255, 255)})
            rasterio.shutil.copy(memory.name, "/vsimem/segbatch-probe.tif", driver="COG", **args["options"])
            rasterio.shutil.delete("/vsimem/segbatch-probe.tif")
    except Exception as exc:
        print(first_line(exc), flush=True)


def _write_plain(arr: Any, path: Path, profile: dict[str, Any], what: str, tags: dict[str, str], model: dict[str, Any] | None, quiet: bool) -> None:
    """The array into a tiled GeoTIFF, one store chunk at a time (bounded memory), its band named `what`; with `model`, the palette and class names too."""
    import rasterio
    from rasterio.windows import Window as RioWindow

    ch, cw = arr.chunks
    with rasterio.open(path, "w", **profile) as dst:
        dst.set_band_description(1, what)
        if tags:
            dst.update_tags(**tags)
        if what == "entropy":
            dst.set_band_unit(1, "nats")
        if model is not None:
            dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(model["palette"])} | {255: (0, 0, 0, 0)})
            dst.update_tags(1, **{f"CLASS_{i}": name for i, name in enumerate(_class_names(model))})
        with progress_bar(arr.shape[0], "exporting", "row", quiet) as bar:
            for r in range(0, arr.shape[0], ch):
                for c in range(0, arr.shape[1], cw):
                    block = arr[r : r + ch, c : c + cw]
                    dst.write(block.astype(profile["dtype"]), 1, window=RioWindow(c, r, block.shape[1], block.shape[0]))
                bar.update(min(ch, arr.shape[0] - r))


def _class_names(model: dict[str, Any]) -> list[str]:
    palette = model["palette"]
    names = list(model.get("classes") or [])
    return [str(names[i]) if i < len(names) else f"class{i}" for i in range(len(palette))]


def _describe_classes(plain: Path, vrt: Path, model: dict[str, Any]) -> None:
    """A VRT of `plain` whose band adds the class names as GDAL category names and a raster attribute table.

    rasterio has no API for either; GDAL's VRT XML has, and the COG driver
    copies both from it (into the COG's `.aux.xml`, where a GeoTIFF keeps them).
    """
    import xml.etree.ElementTree as ET

    import rasterio.shutil

    rasterio.shutil.copy(plain, vrt, driver="VRT")
    tree = ET.parse(vrt)
    band = tree.find("VRTRasterBand")
    if band is None:
        raise RuntimeError(f"GDAL wrote a VRT without a band: {vrt}")
    names, palette = _class_names(model), model["palette"]
    categories = ET.SubElement(band, "CategoryNames")
    for name in names:
        ET.SubElement(categories, "Category").text = name
    # a thematic table: value, name, colour (GDAL's field types: 0 integer, 2 string; usages: 5 min-max, 2 name, 6-8 red-blue)
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    for index, (field, kind, usage) in enumerate((("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8))):
        defn = ET.SubElement(rat, "FieldDefn", index=str(index))
        ET.SubElement(defn, "Name").text = field
        ET.SubElement(defn, "Type").text = str(kind)
        ET.SubElement(defn, "Usage").text = str(usage)
    for value, (name, rgb) in enumerate(zip(names, palette)):
        row = ET.SubElement(rat, "Row", index=str(value))
        for cell in (value, name, *rgb):
            ET.SubElement(row, "F").text = str(cell)
    tree.write(vrt, encoding="utf-8")
