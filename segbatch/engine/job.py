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


@dataclass(frozen=True)
class JobBasics:
    """What every source's worker job holds: where to write and read, the run that owns the store, the model step's settings."""

    store: str  # absolute location of the store (a path or a URL)
    checkpoint: str
    run: str  # the run that owns the store (its lease): every write is fenced by it
    threads: int  # torch threads per actor
    samples: int
    seed: int
    precision: str

    def where(self, unit: Any) -> tuple[str, int]:
        """A single input's store: the unit writes into the store itself, in its own ledger row."""
        from segbatch.engine.source import unit_id

        return "", unit_id(unit)

    @staticmethod
    def of(cfg: RunConfig, store: str, checkpoint: str, run: str) -> dict[str, Any]:
        """These fields for a job's constructor, from the run's options."""
        return {
            "store": store,
            "checkpoint": checkpoint,
            "run": run,
            "threads": max(1, int(cfg.cpus_per_actor)),
            "samples": cfg.samples,
            "seed": cfg.seed,
            "precision": cfg.precision,
        }
