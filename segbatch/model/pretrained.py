"""ImageNet VGG16 weights into SegNet's encoder, from a torchvision-format state-dict file.

SegNet's encoder is VGG16's 13 convolutions, so the paper initialises it from
ImageNet. torchvision's `vgg16` (keys `features.N.weight/bias`) and `vgg16_bn`
(BatchNorm after every convolution) are both understood; the file is read with
``weights_only=True`` and nothing is downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn

from segbatch.errors import CheckpointError
from segbatch.model.segnet import SegNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FEATURE_KEY = re.compile(r"^features\.(\d+)\.(weight|bias|running_mean|running_var)$")


def _feature_layers(state: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """The `features.N` layers in index order, each as {param name: tensor}."""
    layers: dict[int, dict[str, Tensor]] = {}
    for key, value in state.items():
        m = _FEATURE_KEY.match(key)
        if m:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return [layers[i] for i in sorted(layers)]


def load_vgg16_encoder(model: SegNet, path: str | Path) -> int:
    """Copy VGG16 convolution (and, for vgg16_bn, BatchNorm) weights into the encoder.

    Extra input bands (multispectral) get the mean of the RGB filters, scaled so
    that the first layer's response keeps its size; the model's input
    normalisation becomes ImageNet's for the first three bands. Returns the
    number of convolutions loaded (13).
    """
    path = Path(path)
    if model.arch != "segnet" or model.width != 1.0:
        raise CheckpointError("VGG16 weights fit only the full-width 'segnet' architecture (width 1.0)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable state-dict file ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    layers = _feature_layers(state)
    convs = [lay for lay in layers if lay.get("weight") is not None and lay["weight"].ndim == 4]
    norms = [lay for lay in layers if "running_mean" in lay]
    ours = [m for m in model.encoders.modules() if isinstance(m, nn.Conv2d)]
    our_norms = [m for m in model.encoders.modules() if isinstance(m, nn.BatchNorm2d)]
    if len(convs) != len(ours):
        raise CheckpointError(f"{path} has {len(convs)} convolutions under 'features.'; VGG16 has {len(ours)}")
    if norms and len(norms) != len(our_norms):
        raise CheckpointError(f"{path} has {len(norms)} BatchNorm layers; vgg16_bn has {len(our_norms)}")
    with torch.no_grad():
        for k, (src, dst) in enumerate(zip(convs, ours)):
            weight = src["weight"]
            if k == 0:
                weight = _adapt_first_conv(weight, dst.in_channels)
            if weight.shape != dst.weight.shape:
                raise CheckpointError(f"{path}: convolution {k + 1} has shape {tuple(weight.shape)}, expected {tuple(dst.weight.shape)}")
            dst.weight.copy_(weight)
            if "bias" in src and dst.bias is not None:
                dst.bias.copy_(src["bias"])
        for src, norm in zip(norms, our_norms):
            norm.weight.copy_(src["weight"])
            norm.bias.copy_(src["bias"])
            # SegNet's BatchNorm layers always track running statistics, so these buffers exist
            cast(Tensor, norm.running_mean).copy_(src["running_mean"])
            cast(Tensor, norm.running_var).copy_(src["running_var"])
        bands = min(3, model.in_channels)
        model.input_mean[:bands] = torch.tensor(IMAGENET_MEAN[:bands])
        model.input_std[:bands] = torch.tensor(IMAGENET_STD[:bands])
    return len(convs)


def _adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Fit VGG's 3-band first filters to `in_channels` bands."""
    if weight.shape[1] != 3 or in_channels == 3:
        return weight
    if in_channels < 3:
        return weight.sum(dim=1, keepdim=True).expand(-1, in_channels, -1, -1) / in_channels
    extra = weight.mean(dim=1, keepdim=True).expand(-1, in_channels - 3, -1, -1)
    return torch.cat([weight, extra], dim=1) * (3.0 / in_channels)
