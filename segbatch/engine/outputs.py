"""The arrays a video or image run writes, and the fill values of rows the model never reached.

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


def fill_value(name: str) -> float | int:
    """What an output holds where the model never ran: 255 labels, NaN floats."""
    return NODATA_LABEL if name == "labels" else np.nan


def empty_outputs(names: Sequence[str], shape: tuple[int, ...], num_classes: int, float_dtype: str) -> dict[str, np.ndarray]:
    """Uninitialised store arrays of `shape` (probs with a class axis), for a caller that sets every row (`fill_value` for
    those the model never reached): filling them first would cost a pass over them."""
    out = {}
    for name in names:
        dtype = np.uint8 if name == "labels" else np.dtype(float_dtype)
        out[name] = np.empty((*shape, num_classes) if name == "probs" else shape, dtype)
    return out
