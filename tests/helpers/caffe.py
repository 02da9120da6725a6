"""Write a segbatch SegNet as a Caffe model (.prototxt + .caffemodel) in the released models' layer naming.

The model's input normalisation must be Caffe's: mean 0, std 1/255 (BGR 0-255
input), which the writer expresses by reversing the first convolution's input
channels. BatchNorm is folded into the SegNet fork's inference-mode BN
(y = scale * x + shift), as SegNet-Tutorial's compute_bn_statistics.py does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from segbatch.model.caffe import _messages
from segbatch.model.segnet import SegNet


def _units(seq: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d, bool]]:
    mods = list(seq.children())
    return [
        (m, mods[i + 1], i + 2 < len(mods) and isinstance(mods[i + 2], nn.ReLU))  # type: ignore[misc]
        for i, m in enumerate(mods)
        if isinstance(m, nn.Conv2d)
    ]


def write_caffe(model: SegNet, folder: Path, *, height: int = 45, width: int = 61, legacy_shape: bool = False) -> tuple[Path, Path]:
    """Write MODEL.prototxt and MODEL.caffemodel for `model` into `folder`; returns their paths."""
    model = model.eval()
    basic = model.arch == "segnet-basic"
    text: list[str] = [f'name: "{model.arch}-test"', 'input: "data"']
    text += [f"input_dim: {d}" for d in (1, model.in_channels, height, width)]
    blobs: dict[str, list[Tensor]] = {}
    current = "data"

    def layer(name: str, kind: str, bottoms: list[str], tops: list[str], params: str = "") -> None:
        body = "".join(f' bottom: "{b}"' for b in bottoms) + "".join(f' top: "{t}"' for t in tops)
        text.append(f'layer {{ name: "{name}" type: "{kind}"{body} {params} }}')

    def conv(name: str, mod: nn.Conv2d, first: bool = False) -> None:
        nonlocal current
        k = mod.kernel_size[0]
        layer(
            name,
            "Convolution",
            [current],
            [name],
            f'param {{ lr_mult: 1 }} convolution_param {{ num_output: {mod.out_channels} kernel_size: {k} pad: {k // 2} weight_filler {{ type: "msra" }} }}',
        )
        w = mod.weight.detach().double()
        if first and model.in_channels == 3:
            w = w.flip(1)  # Caffe's input is BGR
        assert mod.bias is not None
        blobs[name] = [w, mod.bias.detach().double()]
        current = name

    def bn(name: str, mod: nn.BatchNorm2d) -> None:
        assert mod.running_var is not None and mod.running_mean is not None
        scale = mod.weight.detach().double() / torch.sqrt(mod.running_var.double() + mod.eps)
        shift = mod.bias.detach().double() - mod.running_mean.double() * scale
        c = scale.numel()
        layer(name, "BN", [current], [current], 'bn_param { bn_mode: INFERENCE scale_filler { type: "constant" value: 1 } }')
        blobs[name] = [scale.reshape(1, c, 1, 1), shift.reshape(1, c, 1, 1)]

    def drop(name: str, place: str) -> None:
        nonlocal current
        if place in model.drops:
            layer(name, "Dropout", [current], [name], f"dropout_param {{ dropout_ratio: {model.p} sample_weights_test: true }}")
            current = name

    if model.lrn:
        size, alpha, beta, k = model.lrn
        layer("norm", "LRN", [current], ["norm"], f"lrn_param {{ local_size: {int(size)} alpha: {alpha} beta: {beta} k: {k} }}")
        current = "norm"
    depth = len(model.encoders)
    sizes = []
    h, w = height, width
    first = True
    for k in range(1, depth + 1):
        units = _units(model.encoders[f"enc{k}"])
        for j, (c, b, relu) in enumerate(units, start=1):
            name = f"conv{k}" if basic else f"conv{k}_{j}"
            conv(name, c, first)
            first = False
            bn(f"{name}_bn", b)
            if relu:
                layer(f"relu{k}" if basic else f"relu{k}_{j}", "ReLU", [current], [current])
        layer(f"pool{k}", "Pooling", [current], [f"pool{k}", f"pool{k}_mask"], "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
        current = f"pool{k}"
        sizes.append((h, w))
        h, w = -(-h // 2), -(-w // 2)
        drop(f"encdrop{k}", f"pool{k}")
    for k in range(depth, 0, -1):
        uh, uw = sizes[k - 1]
        layer(f"upsample{k}", "Upsample", [current, f"pool{k}_mask"], [f"pool{k}_D"], f"upsample_param {{ scale: 2 upsample_h: {uh} upsample_w: {uw} }}")
        current = f"pool{k}_D"
        units = _units(model.decoders[f"dec{k}"])
        n = len(units) + (1 if k == 1 and not basic else 0)  # SegNet's conv1_1_D is the classifier
        for j, (c, b, relu) in enumerate(units):
            name = f"conv_decode{k}" if basic else f"conv{k}_{n - j}_D"
            conv(name, c)
            bn(f"{name}_bn", b)
            if relu:
                layer(f"relu{k}_{n - j}_D", "ReLU", [current], [current])
        drop(f"decdrop{k}", f"dec{k}")
    drop("clsdrop", "classifier")
    conv("conv_classifier" if basic else "conv1_1_D", model.classifier)
    layer("prob", "Softmax", [current], ["prob"])

    proto = folder / "model.prototxt"
    proto.write_text("\n".join(text) + "\n")
    msgs = _messages()
    net: Any = msgs["NetParameter"]()
    net.name = f"{model.arch}-test"
    for name, tensors in blobs.items():
        lay = net.layer.add(name=name, type="BN" if name.endswith("_bn") else "Convolution")
        for t in tensors:
            blob = lay.blobs.add()
            if legacy_shape and t.ndim == 4:
                blob.num, blob.channels, blob.height, blob.width = t.shape
            else:
                blob.shape.dim.extend(t.shape)
            blob.data.extend(t.flatten().tolist())
    weights = folder / "model.caffemodel"
    weights.write_bytes(net.SerializeToString())
    return proto, weights
