"""The weight copy: the SegNet a walked Caffe definition describes, built and filled with the .caffemodel's blobs.

Batch normalisation comes in three forms, each mapped onto ``nn.BatchNorm2d``:
the SegNet fork's ``BN`` with 2 blobs (scale, shift; inference mode, the
statistics folded in by SegNet-Tutorial's ``compute_bn_statistics.py``), a
``BN`` with 4 blobs (scale, shift, running mean, running variance, the order of
the forks that keep statistics, e.g. PSPNet's), and upstream Caffe's
``BatchNorm`` (mean * s, variance * s, s) followed by its ``Scale`` layer.
Training definitions (BN in LEARN mode) are refused: the weights hold no
statistics for their batch normalisation.

Input: the released models take BGR images scaled 0-255 (OpenCV frames, no mean
subtracted, unless the data layer's ``transform_param`` says otherwise).
segbatch models take RGB in [0, 1] and normalise with their ``input_mean`` /
``input_std`` buffers, so the import reverses the first convolution's input
channels (BGR -> RGB, 3-band models only) and sets mean ``m / 255`` and std
``1 / (255 * scale)``: `segbatch run` then feeds an imported model exactly as
any other.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from segbatch.errors import CheckpointError
from segbatch.model.caffe.layers import Conv, Net, check_input_shape, fit_arch, fit_placement, input_size, upsample_size, walk
from segbatch.model.caffe.schema import Layer, layer_error, read_caffemodel, read_prototxt, setting
from segbatch.model.segnet import SegNet, build_model

# The variance epsilon of a 4-blob BN: the SegNet fork's bn_layer.cpp hard-codes var_eps_ = 1e-9 (no bn_param field
# sets it) and compute_bn_statistics.py folds the statistics with the same 1e-9. Upstream BatchNorm reads its own eps.
SEGNET_BN_EPS = 1e-9


@dataclass
class Imported:
    """What an import produced: the model and what the checkpoint records about where it came from."""

    model: SegNet
    provenance: dict[str, Any]


def import_caffe(prototxt: str | Path, weights: str | Path) -> Imported:
    """Read a SegNet-family Caffe model (definition + weights) into a segbatch SegNet in eval mode."""
    layers, proto = read_prototxt(prototxt)
    blobs, legacy_weights = read_caffemodel(weights)
    net = walk(layers)
    arch, width = fit_arch(net)
    placement, p, sampling = fit_placement(net, arch)
    assert net.classifier is not None
    first = net.encoders[0][0]
    first_blobs = _blobs_of(first.layer, blobs)
    in_channels = int(first_blobs[0].shape[1]) if first_blobs[0].ndim == 4 else -1
    if in_channels < 1:
        raise layer_error(first.layer, f"weights of shape {list(first_blobs[0].shape)}, expected (out, in, k, k)")
    lrn: tuple[float, ...] = ()
    if net.lrn is not None:
        lp = net.lrn.params.get("lrn_param")
        lrn = tuple(
            float(f"{v:.7g}")
            for v in (  # float32 fields, read back as the decimals written
                float(setting(lp, "local_size", 5)),
                float(setting(lp, "alpha", 1.0)),
                float(setting(lp, "beta", 0.75)),
                float(setting(lp, "k", 1.0)),
            )
        )
        if int(lrn[0]) % 2 == 0:
            raise layer_error(net.lrn, f"LRN local_size {int(lrn[0])}; only odd sizes are supported")
    model = build_model(arch, net.classifier.cout, in_channels=in_channels, dropout=placement, p=p, width=width, lrn=lrn)
    bn_forms = _copy(net, model, blobs)
    bgr = in_channels == 3
    mean, scale = _input_scaling(net, in_channels)
    with torch.no_grad():
        if bgr:
            conv = _units(model.encoders["enc1"])[0][0]
            conv.weight.copy_(conv.weight.flip(1))  # Caffe's channel 0 is blue: ours is red
        model.input_mean.copy_(torch.tensor([m / 255.0 for m in (mean[::-1] if bgr else mean)]))
        model.input_std.fill_(1.0 / (255.0 * scale))
    check_input_shape(proto, net, in_channels)
    model.eval()
    provenance: dict[str, Any] = {
        "imported_from": "Caffe",
        "prototxt": {"name": Path(prototxt).name, "sha256": _sha256(prototxt)},
        "caffemodel": {"name": Path(weights).name, "sha256": _sha256(weights)},
        "net_name": str(proto.name),
        "layer_format": {"prototxt": "legacy V1 layers" if len(proto.layers) else "layer", "caffemodel": "legacy V1 layers" if legacy_weights else "layer"},
        "batch_norm": bn_forms,
        # as the definition states them: mean_value in Caffe's channel order, subtracted before the scale
        "input": {"channel_order": "BGR" if bgr else "as stored", "range": "0-255", "mean": list(mean), "scale": scale},
        "dropout_sampled_at_test": sampling,
        # where the definition fixes it, the input size (N, C, H, W) its Upsample sizes are checked against
        "input_dims": input_size(proto),
        "upsample": {lay.name: _upsample_text(*upsample_size(lay)) for lay in net.upsamples},
    }
    if net.idle_drops:
        ignored = [lay.name for lay in net.idle_drops] + [lay.name for _, lay, _ in net.drops]
        provenance["dropout_ignored"] = {"layers": ignored, "why": "no sample_weights_test, at no segbatch placement: identity in Caffe's TEST phase"}
    return Imported(model, provenance)


def _upsample_text(uh: int | None, uw: int | None, ph: int, pw: int) -> str:
    """An Upsample's output size as the provenance writes it: `360x480` where fixed, else `2h` / `2h-1` (pad_out) a side."""
    return f"{uh if uh is not None else '2h-1' if ph else '2h'}x{uw if uw is not None else '2w-1' if pw else '2w'}"


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _input_scaling(net: Net, in_channels: int) -> tuple[list[float], float]:
    """The data layer's mean (Caffe's channel order, 0-255 units) and scale; none given: 0 and 1, as the released models."""
    t = net.transform
    if t is None:
        return [0.0] * in_channels, 1.0
    if t.mean_file:
        raise CheckpointError(f"the data layer subtracts a mean file ({t.mean_file}); only mean_value is supported")
    values = [float(v) for v in t.mean_value]
    if len(values) == 1:
        values *= in_channels
    if values and len(values) != in_channels:
        raise CheckpointError(f"the data layer has {len(values)} mean values for {in_channels} input channels")
    scale = float(setting(t, "scale", 1.0))
    if scale <= 0:
        raise CheckpointError(f"the data layer's scale is {scale}")
    return values or [0.0] * in_channels, scale


def _blobs_of(layer: Layer, blobs: dict[str, list[Tensor]]) -> list[Tensor]:
    found = blobs.get(layer.name)
    if not found:
        raise layer_error(layer, "has no weights in the .caffemodel")
    return found


def _copy(net: Net, model: SegNet, blobs: dict[str, list[Tensor]]) -> list[str]:
    """Copy every convolution's and BN's blobs into the model, checking that each shape fits; the BN forms met."""
    forms: set[str] = set()
    ours_enc = [_units(model.encoders[f"enc{k}"]) for k in range(1, len(net.encoders) + 1)]
    depth = len(net.encoders)
    ours_dec = [_units(model.decoders[f"dec{k}"]) for k in range(depth, 0, -1)]
    blocks = [
        *zip(net.encoders, ours_enc, [f"encoder block {k}" for k in range(1, depth + 1)]),
        *zip(net.decoders, ours_dec, [f"decoder block {k}" for k in range(depth, 0, -1)]),
    ]
    for theirs, ours, what in blocks:
        if len(theirs) != len(ours):
            at = theirs[0].layer if theirs else what
            raise layer_error(at, f"{what} has {len(theirs)} convolutions; {model.arch} has {len(ours)}")
        for conv, (mine, bn, relu) in zip(theirs, ours):
            if conv.bn is None:
                raise layer_error(conv.layer, "a convolution without a BN layer after it; every SegNet convolution but the classifier has one")
            if conv.relu != relu:
                raise layer_error(conv.layer, f"{'a' if conv.relu else 'no'} ReLU after it; {model.arch} has {'one' if relu else 'none'} there")
            _copy_conv(conv, mine, blobs)
            forms.add(_copy_bn(conv, bn, blobs))
    assert net.classifier is not None
    _copy_conv(net.classifier, model.classifier, blobs)
    return sorted(forms)


def _units(seq: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d, bool]]:
    mods = list(seq.children())
    out = []
    for i, m in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            bn = cast(nn.BatchNorm2d, mods[i + 1])
            relu = i + 2 < len(mods) and isinstance(mods[i + 2], nn.ReLU)
            out.append((m, bn, relu))
    return out


def _copy_conv(conv: Conv, mine: nn.Conv2d, blobs: dict[str, list[Tensor]]) -> None:
    found = _blobs_of(conv.layer, blobs)
    if len(found) != 2:
        raise layer_error(conv.layer, f"{len(found)} weight blobs; a convolution with bias has 2")
    w, b = found
    if list(w.shape) != list(mine.weight.shape):
        raise layer_error(conv.layer, f"weights of shape {list(w.shape)}; SegNet here needs {list(mine.weight.shape)}")
    assert mine.bias is not None
    if b.numel() != mine.bias.numel():
        raise layer_error(conv.layer, f"a bias of {b.numel()} values; SegNet here needs {mine.bias.numel()}")
    with torch.no_grad():
        mine.weight.copy_(w)
        mine.bias.copy_(b.reshape(-1))


def _copy_bn(conv: Conv, bn: nn.BatchNorm2d, blobs: dict[str, list[Tensor]]) -> str:
    """Make `bn` compute what the Caffe normalisation after `conv` computes; returns its form (for the provenance)."""
    layer = conv.bn
    assert layer is not None
    found = _blobs_of(layer, blobs)
    mean: Tensor | None
    var: Tensor | None
    if layer.type == "BatchNorm":
        assert conv.scale is not None  # walk refuses a BatchNorm without its Scale
        mean, var, eps = _batchnorm_statistics(layer, found)
        gamma, beta = _scale_blobs(conv.scale, blobs)
        form = f"BatchNorm + Scale (eps {eps:g})"
    else:
        p = layer.params.get("bn_param")
        inference = p is not None and p.bn_mode == 1
        if len(found) == 2:
            if not inference:
                raise layer_error(
                    layer,
                    "BN in LEARN mode (no bn_mode: INFERENCE, as in the *_train.prototxt definitions) normalises with each "
                    "batch's statistics, which its 2 blobs do not hold; import the inference definition (bn_mode: INFERENCE) "
                    "with the weights SegNet-Tutorial's compute_bn_statistics.py wrote",
                )
            gamma, beta = found
            mean = var = None
            eps = 0.0
            form = "BN scale/shift (statistics folded in)"
        elif len(found) == 4:
            # The fork's own BN never stores statistics (bn_layer.cpp keeps 2 blobs; LEARN mode normalises each
            # batch); forks whose BN has 4 blobs (PSPNet's: scale, shift, history mean, history variance) use the
            # stored statistics at test time, and so does the import.
            if inference:
                raise layer_error(
                    layer, "a BN layer with running statistics (4 blobs) in bn_mode INFERENCE, which applies only scale and shift: remove bn_mode"
                )
            gamma, beta, mean, var = found
            eps = SEGNET_BN_EPS
            form = f"BN with running statistics (eps {eps:g})"
        else:
            raise layer_error(
                layer, f"a BN layer with {len(found)} blobs; SegNet's BN has 2 (scale, shift) or 4 (scale, shift, running mean, running variance)"
            )
    c = bn.num_features
    sizes = [t.numel() for t in (gamma, beta, mean, var) if t is not None]
    if any(n != c for n in sizes):
        raise layer_error(layer, f"parameters of {'/'.join(map(str, sizes))} values; the convolution before it has {c} channels")
    with torch.no_grad():
        if mean is None or var is None:  # y = scale * x + shift: no normalisation left to do
            bn.weight.copy_(gamma.reshape(-1))
            bn.bias.copy_(beta.reshape(-1))
            cast(Tensor, bn.running_mean).zero_()
            cast(Tensor, bn.running_var).fill_(1.0 - bn.eps)
            return form
        var = var.reshape(-1)
        if bool((var < 0).any()) or bool((var + eps <= 0).any()):
            raise layer_error(layer, f"a running variance of {float(var.min()):g} with eps {eps:g}: not a variance")
        # Keep the statistics (a later fine-tuning needs them) and fold the eps difference into the weight.
        bn.weight.copy_(gamma.reshape(-1) * torch.sqrt((var + bn.eps) / (var + eps)))
        bn.bias.copy_(beta.reshape(-1))
        cast(Tensor, bn.running_mean).copy_(mean.reshape(-1))
        cast(Tensor, bn.running_var).copy_(var)
    return form


def _batchnorm_statistics(layer: Layer, found: list[Tensor]) -> tuple[Tensor, Tensor, float]:
    """Mean, variance and eps of an upstream BatchNorm: blobs (mean * s, variance * s, s), s the moving-average sum."""
    p = layer.params.get("batch_norm_param")
    if not setting(p, "use_global_stats", True):
        raise layer_error(layer, "BatchNorm with use_global_stats: false normalises with each batch's statistics; use the stored ones (remove it)")
    if len(found) != 3 or found[2].numel() != 1:
        raise layer_error(layer, f"a BatchNorm with {len(found)} blobs; Caffe's has 3 (mean, variance, and their one-value scale factor)")
    s = float(found[2].reshape(-1)[0])
    factor = 0.0 if s == 0 else 1.0 / s  # as Caffe's batch_norm_layer.cpp
    eps = float(setting(p, "eps", 1e-5))
    return found[0] * factor, found[1] * factor, eps


def _scale_blobs(layer: Layer, blobs: dict[str, list[Tensor]]) -> tuple[Tensor, Tensor]:
    """Gamma and beta of the Scale layer after a BatchNorm (beta 0 without bias_term)."""
    found = _blobs_of(layer, blobs)
    p = layer.params.get("scale_param")
    bias = bool(p is not None and p.bias_term)
    if len(found) != (2 if bias else 1):
        raise layer_error(layer, f"a Scale layer with {len(found)} blobs; with bias_term {str(bias).lower()} it has {2 if bias else 1}")
    return found[0], found[1] if bias else torch.zeros_like(found[0])
