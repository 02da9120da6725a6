"""Checkpoints: one file with the weights and everything needed to rebuild and use them.

The file is a torch zip archive holding only tensors and plain containers, read
with ``weights_only=True``: loading never runs code from the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from segbatch import location
from segbatch.atomic import atomic_path
from segbatch.errors import CheckpointError
from segbatch.model.catalog import width_problem
from segbatch.model.segnet import SegNet, build_model, count_parameters, lrn_problem

FORMAT = "segbatch-checkpoint"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint says about its model; enough to rebuild it and to label its output."""

    arch: str
    num_classes: int
    in_channels: int = 3
    width: float = 1.0
    dropout: str = "central"
    p: float = 0.5
    class_names: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # provenance: training command, data, scores
    lrn: tuple[float, ...] = ()  # input local response normalisation (local_size, alpha, beta, k): imported SegNet-Basic

    def __post_init__(self) -> None:
        names = self.class_names or tuple(f"class{i}" for i in range(self.num_classes))
        palette = self.palette or default_palette(self.num_classes)
        if len(names) != self.num_classes:
            raise CheckpointError(f"{len(names)} class names for {self.num_classes} classes")
        if len(palette) != self.num_classes:
            raise CheckpointError(f"{len(palette)} palette colours for {self.num_classes} classes")
        object.__setattr__(self, "class_names", tuple(str(n) for n in names))
        object.__setattr__(self, "palette", tuple(tuple(int(v) for v in c) for c in palette))
        problem = lrn_problem(self.lrn)
        if problem:
            raise CheckpointError(problem)
        object.__setattr__(self, "lrn", tuple(float(v) for v in self.lrn))

    @classmethod
    def of(cls, model: SegNet, **kwargs: Any) -> ModelSpec:
        """The spec of a built model, with names, palette or provenance added."""
        kwargs.setdefault("lrn", model.lrn)
        return cls(model.arch, model.num_classes, model.in_channels, model.width, model.dropout_placement, model.p, **kwargs)

    def build(self) -> SegNet:
        return build_model(self.arch, self.num_classes, self.in_channels, self.dropout, self.p, self.width, self.lrn)


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct colours for classes without a palette (golden-ratio hues, full value)."""
    import colorsys

    return tuple(
        tuple(int(round(255 * v)) for v in colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95))  # type: ignore[misc]
        for i in range(num_classes)
    )


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, on CPU), its spec, and the file's digest."""

    model: SegNet
    spec: ModelSpec
    sha256: str
    path: location.Location  # a path, or the fsspec URL it was read from

    @property
    def calibration_temperature(self) -> float:
        """What runs divide every MC sample's logits by: the temperature `segbatch calibrate` recorded, else 1."""
        found = self.spec.extra.get("calibration")
        if found is None:
            return 1.0
        t = found.get("temperature") if isinstance(found, dict) else None
        if not isinstance(t, int | float) or isinstance(t, bool) or not math.isfinite(t) or t <= 0:
            raise CheckpointError(f"{self.path}: its calibration has no valid temperature ({t!r}); calibrate it again")
        return float(t)

    def describe(self) -> dict[str, Any]:
        """The summary `segbatch info CKPT` prints (and `--json` emits)."""
        return {
            "kind": "checkpoint",
            "path": str(self.path),
            "arch": self.spec.arch,
            "parameters": count_parameters(self.model),
            "classes": list(self.spec.class_names),
            "palette": [list(c) for c in self.spec.palette],
            "in_channels": self.spec.in_channels,
            "width": self.spec.width,
            "dropout": {"placement": self.spec.dropout, "p": self.spec.p},
            "input_normalisation": {
                "mean": [round(v, 6) for v in self.model.input_mean.tolist()],
                "std": [round(v, 6) for v in self.model.input_std.tolist()],
                **({"lrn": dict(zip(("local_size", "alpha", "beta", "k"), self.spec.lrn))} if self.spec.lrn else {}),
            },
            "sha256": self.sha256,
            **({"provenance": self.spec.extra} if self.spec.extra else {}),
        }


def save_checkpoint(model: SegNet, path: str | Path, spec: ModelSpec | None = None) -> Path:
    """Write the model and its spec to one file, atomically (a crash never leaves half a file)."""
    spec = spec or ModelSpec.of(model)
    meta = asdict(spec)
    meta["class_names"] = list(spec.class_names)
    meta["palette"] = [list(c) for c in spec.palette]
    meta["lrn"] = list(spec.lrn)
    if not spec.lrn:
        del meta["lrn"]  # files without one stay exactly as before
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": meta,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint safely (a path, or an fsspec URL); any missing, corrupt or foreign file raises CheckpointError."""
    path = location.parse(path)
    if location.is_url(path) and not location.exists(path) or not location.is_url(path) and not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    data = location.read_bytes(path)  # hash exactly the bytes that are loaded
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean "not ours"
        raise CheckpointError(f"{path} is not a readable segbatch checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a segbatch checkpoint (no '{FORMAT}' header)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {payload.get('format_version')}; this segbatch reads {FORMAT_VERSION}")
    try:
        spec = _spec_from_meta(payload["meta"])
        model = spec.build()
        model.load_state_dict(payload["state_dict"], strict=True)
    except Exception as exc:  # anything a damaged or hand-edited file can trigger
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is a damaged segbatch checkpoint: {reason}") from None
    model.eval()
    return Checkpoint(model=model, spec=spec, sha256=hashlib.sha256(data).hexdigest(), path=path)


def _spec_from_meta(meta: Any) -> ModelSpec:
    """Validate the metadata's types and ranges before building anything from it."""
    if not isinstance(meta, dict):
        raise CheckpointError("metadata is not a mapping")
    problem = width_problem(meta.get("width", 1.0))  # the range models are built with: a wider one is a damaged file
    if problem:
        raise CheckpointError(problem)
    names, palette, extra = meta.get("class_names", ()), meta.get("palette", ()), meta.get("extra", {})
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise CheckpointError("class names must be a list of strings")
    if not isinstance(palette, (list, tuple)) or not all(
        isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in palette
    ):
        raise CheckpointError("the palette must be [r, g, b] triples of 0-255")
    if not isinstance(extra, dict):
        raise CheckpointError("provenance must be a mapping")
    json.dumps(extra)  # plain JSON only (no tensors)
    lrn = meta.get("lrn", ())
    problem = lrn_problem(lrn)
    if problem:
        raise CheckpointError(problem)
    return ModelSpec(**{**meta, "class_names": tuple(names), "palette": tuple(tuple(c) for c in palette), "lrn": tuple(lrn)})
