"""The SegNet model family, checkpoints and pretrained-weight loading.

Names are resolved lazily so that importing `segbatch.model.catalog` (for the
CLI's choices) does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "SegNet": "segbatch.model.segnet",
    "build_model": "segbatch.model.segnet",
    "count_parameters": "segbatch.model.segnet",
    "ModelSpec": "segbatch.model.checkpoint",
    "Checkpoint": "segbatch.model.checkpoint",
    "save_checkpoint": "segbatch.model.checkpoint",
    "load_checkpoint": "segbatch.model.checkpoint",
    "load_vgg16_encoder": "segbatch.model.pretrained",
    "ARCHS": "segbatch.model.catalog",
    "PLACEMENTS": "segbatch.model.catalog",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'segbatch.model' has no attribute {name!r}")
