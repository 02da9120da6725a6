"""The arrays a video or image run writes, and the fill values they start from.

Shared by the frame-stack sources (video, image folders): both write the same
per-pixel arrays, and a row the model never reached must read as no data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from segbatch.errors import InputError
from segbatch.store import NODATA_LABEL, OPTIONAL_OUTPUTS

if TYPE_CHECKING:
    from segbatch.engine.job import RunConfig


def output_names(cfg: RunConfig) -> tuple[str, ...]:
    """The arrays a video or image run writes: labels, entropy, confidence, uncertainty (when sampling), and --outputs."""
    if cfg.samples == 0 and "mutual_information" in cfg.extra_outputs:
        raise InputError("mutual_information needs --samples >= 1")
    return ("labels", "entropy", "confidence", *(("uncertainty",) if cfg.samples > 0 else ()), *(o for o in OPTIONAL_OUTPUTS if o in cfg.extra_outputs))


def empty_outputs(names: Sequence[str], shape: tuple[int, ...], num_classes: int, float_dtype: str) -> dict[str, np.ndarray]:
    """Store arrays of `shape` holding their fill values (255 labels, NaN floats; probs with a class axis)."""
    out = {}
    for name in names:
        if name == "labels":
            out[name] = np.full(shape, NODATA_LABEL, np.uint8)
        elif name == "probs":
            out[name] = np.full((*shape, num_classes), np.nan, float_dtype)
        else:
            out[name] = np.full(shape, np.nan, float_dtype)
    return out
