"""Write a segbatch SegNet as a Caffe model (.prototxt + .caffemodel) in the released models' layer naming.

The model's input normalisation must be one Caffe can state: mean 0 and std
1/255 (BGR 0-255 input, the released models), written as a plain `input`; or
any mean with one std for all bands, written as a data layer whose
``transform_param`` has ``mean_value`` (BGR order) and ``scale``. The first
convolution's input channels are reversed (Caffe's input is BGR).

Batch normalisation is written in one of three forms (``bn``):
- ``"folded"``: the SegNet fork's inference-mode BN (y = scale * x + shift), as
  SegNet-Tutorial's compute_bn_statistics.py leaves it;
- ``"stats"``: a BN with 4 blobs (scale, shift, running mean, running
  variance), its variance eps being the SegNet fork's 1e-9;
- ``"batchnorm"``: upstream Caffe's BatchNorm (mean * s, variance * s, s) and
  a Scale layer with bias.

``legacy_weights`` writes the caffemodel's layers as legacy V1 ``layers``
entries (enum types, blobs field 6). ``legacy_definition`` writes the
prototxt in the V1 form too; the V1 type list has no Upsample, so that file
names ``UPSAMPLE``, which no Caffe reads: it exists to test the refusal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from segbatch.model.caffe import SEGNET_BN_EPS
from segbatch.model.caffe.schema import _messages
from segbatch.model.segnet import SegNet

# The V1 enum names of the types the writer uses (UPSAMPLE is not one of caffe.proto's).
_V1_NAMES = {
    "Convolution": ("CONVOLUTION", 4),
    "BN": ("BN", 43),
    "ReLU": ("RELU", 18),
    "Pooling": ("POOLING", 17),
    "Dropout": ("DROPOUT", 6),
    "LRN": ("LRN", 15),
    "Softmax": ("SOFTMAX", 20),
    "ImageData": ("IMAGE_DATA", 12),
    "Upsample": ("UPSAMPLE", None),
}
BATCHNORM_FACTOR = 0.75  # the moving-average sum s that upstream BatchNorm's blobs are multiplied by


def _units(seq: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d, bool]]:
    mods = list(seq.children())
    return [
        (m, mods[i + 1], i + 2 < len(mods) and isinstance(mods[i + 2], nn.ReLU))  # type: ignore[misc]
        for i, m in enumerate(mods)
        if isinstance(m, nn.Conv2d)
    ]


def _transform(model: SegNet) -> tuple[list[float], float] | None:
    """The data layer's (mean_value in Caffe's channel order, scale) for the model's normalisation; None for plain BGR 0-255."""
    mean = [float(v) for v in model.input_mean.double()]
    std = [float(v) for v in model.input_std.double()]
    if all(m == 0 for m in mean) and all(abs(v * 255 - 1) < 1e-6 for v in std):
        return None
    if max(std) - min(std) > 1e-9 * max(std):
        raise ValueError(f"Caffe's transform_param has one scale for all bands; the model's std is {std}")
    values = [m * 255 for m in mean]
    return (values[::-1] if model.in_channels == 3 else values), 1 / (255 * std[0])


def write_caffe(
    model: SegNet,
    folder: Path,
    *,
    height: int = 45,
    width: int = 61,
    legacy_shape: bool = False,
    bn: str = "folded",
    legacy_weights: bool = False,
    legacy_definition: bool = False,
    released: bool = False,
    classifier: str | None = None,
) -> tuple[Path, Path]:
    """Write model.prototxt and model.caffemodel for `model` into `folder`; returns their paths.

    ``released`` writes the definition as SegNet-Tutorial's inference files are written: a ``DenseImageData`` data
    layer (no fixed input size), BN layers with their two ``param`` blocks and ``bn_param { bn_mode: INFERENCE
    scale_filler shift_filler }``, Dropout in place (``encdrop3`` top ``pool3``), Upsample sizes only where a
    pooling input is odd (``upsample_h``/``upsample_w`` for SegNet, ``pad_out_h``/``pad_out_w`` for SegNet-Basic)
    and ``softmax_param {engine: CAFFE}``. ``classifier`` renames the last convolution (SegNet-Basic's is
    ``conv_classifier`` or ``dense_softmax_inner_prod`` in the released files).
    """
    if bn not in ("folded", "stats", "batchnorm"):
        raise ValueError(f"bn={bn!r}")
    if bn == "batchnorm" and (legacy_weights or legacy_definition):
        raise ValueError("the legacy V1 layer types have no BatchNorm or Scale")
    model = model.eval()
    basic = model.arch == "segnet-basic"
    transform = _transform(model)
    text: list[str] = [f'name: "{model.arch}-test"']
    blobs: dict[str, tuple[str, list[Tensor]]] = {}  # layer name -> (type, blobs)
    current = "data"

    def layer(name: str, kind: str, bottoms: list[str], tops: list[str], params: str = "") -> None:
        body = "".join(f' bottom: "{b}"' for b in bottoms) + "".join(f' top: "{t}"' for t in tops)
        if legacy_definition:  # V1 spells learning rates as blobs_lr and has no bn_param (its BN is always LEARN)
            params = params.replace("param { lr_mult: 1 } ", "").split("bn_param {")[0]
            text.append(f'layers {{ name: "{name}" type: {_V1_NAMES[kind][0]}{body} {params} }}')
        else:
            text.append(f'layer {{ name: "{name}" type: "{kind}"{body} {params} }}')

    if transform is None and released:
        layer("data", "DenseImageData", [], ["data", "label"], 'dense_image_data_param { source: "/SegNet/CamVid/test.txt" batch_size: 1 }')
    elif transform is None:
        text += ['input: "data"', *(f"input_dim: {d}" for d in (1, model.in_channels, height, width))]
    else:
        means, scale = transform
        values = " ".join(f"mean_value: {float(f'{v:.7g}')!r}" for v in means)  # float32 fields
        kind = "ImageData" if legacy_definition else "DenseImageData"
        source = "image_data_param" if legacy_definition else "dense_image_data_param"
        layer("data", kind, [], ["data", "label"], f'transform_param {{ {values} scale: {scale:.7g} }} {source} {{ source: "test.txt" batch_size: 1 }}')

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
        blobs[name] = ("Convolution", [w, mod.bias.detach().double()])
        current = name

    def norm(name: str, mod: nn.BatchNorm2d) -> None:
        assert mod.running_var is not None and mod.running_mean is not None
        mean, var = mod.running_mean.double(), mod.running_var.double()
        gamma, beta = mod.weight.detach().double(), mod.bias.detach().double()
        c = gamma.numel()
        if bn == "folded":
            scale = gamma / torch.sqrt(var + mod.eps)
            fillers = 'scale_filler { type: "constant" value: 1 } shift_filler { type: "constant" value: 0.001 }'
            lr = "param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 1 decay_mult: 0 } " if released else ""
            layer(name, "BN", [current], [current], f"{lr}bn_param {{ bn_mode: INFERENCE {fillers} }}")
            blobs[name] = ("BN", [scale.reshape(1, c, 1, 1), (beta - mean * scale).reshape(1, c, 1, 1)])
        elif bn == "stats":  # Caffe adds 1e-9 where torch adds mod.eps: the variance written makes the two equal
            layer(name, "BN", [current], [current], 'bn_param { scale_filler { type: "constant" value: 1 } }')
            stats = [gamma, beta, mean, var + mod.eps - SEGNET_BN_EPS]
            blobs[name] = ("BN", [t.reshape(1, c, 1, 1) for t in stats])
        else:
            layer(name, "BatchNorm", [current], [current], f"batch_norm_param {{ use_global_stats: true eps: {mod.eps!r} }}")
            s = BATCHNORM_FACTOR
            blobs[name] = ("BatchNorm", [mean * s, var * s, torch.tensor([s], dtype=torch.float64)])
            scale_name = name.removesuffix("_bn") + "_scale"
            layer(scale_name, "Scale", [current], [current], "scale_param { bias_term: true }")
            blobs[scale_name] = ("Scale", [gamma, beta])

    def drop(name: str, place: str) -> None:
        nonlocal current
        if place in model.drops:
            top = current if released else name  # the released files drop in place
            layer(name, "Dropout", [current], [top], f"dropout_param {{ dropout_ratio: {model.p} sample_weights_test: true }}")
            current = top

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
            norm(f"{name}_bn", b)
            if relu:
                layer(f"relu{k}" if basic else f"relu{k}_{j}", "ReLU", [current], [current])
        layer(f"pool{k}", "Pooling", [current], [f"pool{k}", f"pool{k}_mask"], "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
        current = f"pool{k}"
        sizes.append((h, w))
        h, w = -(-h // 2), -(-w // 2)
        drop(f"encdrop{k}", f"pool{k}")
    for k in range(depth, 0, -1):
        uh, uw = sizes[k - 1]
        up = f"upsample_h: {uh} upsample_w: {uw}"
        if released:  # sizes only where the pooling input is odd, as the released files
            if basic:
                up = "".join(f" pad_out_{a}: true" for a, v in (("h", uh), ("w", uw)) if v % 2)
            elif uh % 2 == 0 and uw % 2 == 0:
                up = ""
        top = f"upsample{k}" if basic and released else f"pool{k}_D"
        layer(f"upsample{k}", "Upsample", [current, f"pool{k}_mask"], [top], f"upsample_param {{ scale: 2 {up} }}")
        current = top
        units = _units(model.decoders[f"dec{k}"])
        n = len(units) + (1 if k == 1 and not basic else 0)  # SegNet's conv1_1_D is the classifier
        for j, (c, b, relu) in enumerate(units):
            name = f"conv_decode{k}" if basic else f"conv{k}_{n - j}_D"
            conv(name, c)
            norm(f"{name}_bn", b)
            if relu:
                layer(f"relu{k}_{n - j}_D", "ReLU", [current], [current])
        drop(f"decdrop{k}", f"dec{k}")
    drop("clsdrop", "classifier")
    conv(classifier or ("conv_classifier" if basic else "conv1_1_D"), model.classifier)
    layer("prob", "Softmax", [current], ["prob"], "softmax_param { engine: CAFFE }" if released else "")

    proto = folder / "model.prototxt"
    proto.write_text("\n".join(text) + "\n")
    msgs = _messages()
    net: Any = msgs["NetParameter"]()
    net.name = f"{model.arch}-test"
    for name, (kind, tensors) in blobs.items():
        lay = net.layers.add(name=name, type=_V1_NAMES[kind][1]) if legacy_weights else net.layer.add(name=name, type=kind)
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


def write_caffemodel_for(model: SegNet, prototxt: Path, path: Path) -> Path:
    """Write `model`'s weights as a .caffemodel whose layer names are those of the definition `prototxt`.

    The definition's Convolution layers, in order, take the model's convolutions (encoders, decoders, classifier),
    and its BN layers the model's batch normalisations, folded (scale, shift: what compute_bn_statistics.py writes)
    whatever the definition's bn_mode says. Only names are read from the definition: its shapes are the model's.
    """
    from google.protobuf import text_format

    msgs = _messages()
    net: Any = msgs["NetParameter"]()
    text_format.Parse(prototxt.read_text(), net, allow_unknown_field=True, allow_unknown_extension=True)
    conv_names = [lay.name for lay in net.layer if lay.type == "Convolution"]
    bn_names = [lay.name for lay in net.layer if lay.type == "BN"]
    depth = len(model.encoders)
    seqs = [model.encoders[f"enc{k}"] for k in range(1, depth + 1)] + [model.decoders[f"dec{k}"] for k in range(depth, 0, -1)]
    units = [u for seq in seqs for u in _units(seq)]
    convs = [c for c, _, _ in units] + [model.classifier]
    bns = [b for _, b, _ in units]
    if len(conv_names) != len(convs) or len(bn_names) != len(bns):
        raise ValueError(f"{prototxt.name}: {len(conv_names)} convolutions and {len(bn_names)} BN layers; the model has {len(convs)} and {len(bns)}")
    out: Any = msgs["NetParameter"]()
    out.name = net.name
    for i, (name, mod) in enumerate(zip(conv_names, convs)):
        w = mod.weight.detach().double()
        if i == 0 and model.in_channels == 3:
            w = w.flip(1)  # Caffe's input is BGR
        assert mod.bias is not None
        _add(out.layer.add(name=name, type="Convolution"), [w, mod.bias.detach().double()])
    for name, bn in zip(bn_names, bns):
        assert bn.running_var is not None and bn.running_mean is not None
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.detach().double() - bn.running_mean.double() * scale
        c = scale.numel()
        _add(out.layer.add(name=name, type="BN"), [scale.reshape(1, c, 1, 1), shift.reshape(1, c, 1, 1)])
    path.write_bytes(out.SerializeToString())
    return path


def _add(lay: Any, tensors: list[Tensor]) -> None:
    for t in tensors:
        blob = lay.blobs.add()
        blob.shape.dim.extend(t.shape)
        blob.data.extend(t.float().flatten().numpy().tolist())
