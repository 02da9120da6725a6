"""What a run is asked to do (its options), and the pieces of its fingerprint every source shares."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segbatch import location
from segbatch.location import Location


@dataclass(frozen=True)
class RunConfig:
    """The options of `segbatch run`."""

    input: Location  # a path, or an fsspec URL (rasters through GDAL's /vsi*, videos through a file object)
    out: Location  # a path, or an fsspec URL of the Zarr store
    model: Path | None = None  # None: the built-in demo model
    samples: int = 8
    seed: int = 0
    batch_size: int = 4
    actors: int | None = None  # None: one per GPU, else one per `cpus_per_actor` CPUs
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    actors_per_gpu: int | None = 1  # actors feeding each GPU; None: `auto` (segbatch.engine.sharing)
    cpus_per_actor: float = 1.0
    address: str | None = None
    frames: tuple[int | None, int | None] | None = None
    resize: tuple[int, int] | None = None
    extra_outputs: tuple[str, ...] = ()
    float_dtype: str = "float16"
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    verbose: int = 0  # -v: a line per finished unit and the stage times; -vv: Ray's own logs too
    progress: str = "bar"  # bar (at a terminal) | json (one line per finished unit on stderr)
    bands: tuple[int, ...] | None = None  # rasters: 1-based bands for the model, in order
    tile: int = 512  # rasters: tile side (core + 2 x overlap)
    overlap: int = 64  # rasters: margin of context on each side of a tile's core
    keep_tiles: bool = False
    precision: str = "fp32"  # fp32 | fp16 | bf16: autocast for the network (softmax statistics stay float32)
    hwaccel: str | None = None  # video: hardware decoding (e.g. "cuda" for NVDEC) where FFmpeg offers it


def software_versions() -> dict[str, str]:
    """Versions that can change the output's bits: resuming under others could mix results."""
    import av
    import torch

    from segbatch import __version__

    return {"segbatch": __version__, "torch": torch.__version__, "av": av.__version__, "ffmpeg": str(av.library_versions.get("libavcodec"))}


def source_identity(path: Location) -> dict[str, Any]:
    """Size plus a digest of the first and last MiB: the same file even after a copy, cheap on terabytes."""
    size = location.size(path)
    h = hashlib.sha256()
    with location.open_binary(path) as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return {"size": size, "head_tail_sha256": h.hexdigest()}


def config_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
