"""Tiny models for tests: untrained, but with BatchNorm statistics that are not the identity."""

from __future__ import annotations

import torch

from segbatch.model import build_model
from segbatch.model.segnet import SegNet


def tiny_segnet_basic(num_classes: int, seed: int = 0) -> SegNet:
    """SegNet-Basic at width 0.25 with random BatchNorm running statistics (so eval-mode outputs are non-trivial)."""
    torch.manual_seed(seed)
    model = build_model("segnet-basic", num_classes, width=0.25)
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval()
