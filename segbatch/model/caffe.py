"""Import the released Caffe SegNet / Bayesian SegNet models (a .prototxt plus a .caffemodel), without Caffe.

Both files are read with the `protobuf` package against a schema written here
(`_schema`): only the messages and fields this importer reads, with the field
numbers of Caffe's caffe.proto and of the SegNet fork's additions (the ``BN``
layer's ``bn_param`` 45, ``upsample_param`` 137, Dropout's
``sample_weights_test`` 2). Fields it does not know are skipped in the binary
file and, with ``allow_unknown_field``, in the text file.

Batch normalisation comes in three forms, each mapped onto ``nn.BatchNorm2d``:
the SegNet fork's ``BN`` with 2 blobs (scale, shift; inference mode, the
statistics folded in by SegNet-Tutorial's ``compute_bn_statistics.py``), a
``BN`` with 4 blobs (scale, shift, running mean, running variance, the order of
the forks that keep statistics, e.g. PSPNet's), and upstream Caffe's
``BatchNorm`` (mean * s, variance * s, s) followed by its ``Scale`` layer.

Dropout layers without ``sample_weights_test`` pass through in Caffe's TEST
phase; where they sit at no segbatch placement (``segnet_pascal``'s, before each
pooling) the model is imported without dropout and the checkpoint lists them.
Training definitions (BN in LEARN mode) are refused: the weights hold no
statistics for their batch normalisation.

The definition is matched step by step against the plan of a segbatch
`SegNet` built with the architecture, width, classes, dropout placement and
input LRN that the definition implies; anything that does not fit raises one
`CheckpointError` line naming the Caffe layer and what differs.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from segbatch.demo.scenes import PALETTE
from segbatch.errors import CheckpointError
from segbatch.model.catalog import BASIC_PLACEMENTS, SEGNET_PLACEMENTS, width_problem
from segbatch.model.segnet import SegNet, build_model

# CamVid's 11 classes (void, label 11, is ignored) and the colours of the SegNet-Tutorial scripts.
CAMVID_CLASSES: tuple[str, ...] = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
CAMVID_PALETTE = PALETTE  # the SegNet-Tutorial scripts' colours, which the demo scenes use too

BN_EPS = 1e-5  # nn.BatchNorm2d's; a folded Caffe BN (y = scale * x + shift) gets running var 1 - eps
# The variance epsilon of a 4-blob BN: the SegNet fork's bn_layer.cpp hard-codes var_eps_ = 1e-9 (no bn_param field
# sets it) and compute_bn_statistics.py folds the statistics with the same 1e-9. Upstream BatchNorm reads its own eps.
SEGNET_BN_EPS = 1e-9

# Layers that feed or score the network and do not change its output.
_INPUT_TYPES = {"Input", "Data", "DenseImageData", "ImageData", "MemoryData", "DummyData", "HDF5Data"}
_SCORE_TYPES = {"SoftmaxWithLoss", "Accuracy", "Silence", "ArgMax"}
# V1 (legacy `layers`) types: the SegNet fork's V1LayerParameter.LayerType (caffe.proto's list plus BN = 43): value,
# enum name, and the type string Caffe's upgrade gives it. The list has no Upsample, BatchNorm or Scale.
_V1 = {
    1: ("ACCURACY", "Accuracy"),
    2: ("BNLL", "BNLL"),
    3: ("CONCAT", "Concat"),
    4: ("CONVOLUTION", "Convolution"),
    5: ("DATA", "Data"),
    6: ("DROPOUT", "Dropout"),
    7: ("EUCLIDEAN_LOSS", "EuclideanLoss"),
    8: ("FLATTEN", "Flatten"),
    9: ("HDF5_DATA", "HDF5Data"),
    10: ("HDF5_OUTPUT", "HDF5Output"),
    11: ("IM2COL", "Im2col"),
    12: ("IMAGE_DATA", "ImageData"),
    13: ("INFOGAIN_LOSS", "InfogainLoss"),
    14: ("INNER_PRODUCT", "InnerProduct"),
    15: ("LRN", "LRN"),
    16: ("MULTINOMIAL_LOGISTIC_LOSS", "MultinomialLogisticLoss"),
    17: ("POOLING", "Pooling"),
    18: ("RELU", "ReLU"),
    19: ("SIGMOID", "Sigmoid"),
    20: ("SOFTMAX", "Softmax"),
    21: ("SOFTMAX_LOSS", "SoftmaxWithLoss"),
    22: ("SPLIT", "Split"),
    23: ("TANH", "TanH"),
    24: ("WINDOW_DATA", "WindowData"),
    25: ("ELTWISE", "Eltwise"),
    26: ("POWER", "Power"),
    27: ("SIGMOID_CROSS_ENTROPY_LOSS", "SigmoidCrossEntropyLoss"),
    28: ("HINGE_LOSS", "HingeLoss"),
    29: ("MEMORY_DATA", "MemoryData"),
    30: ("ARGMAX", "ArgMax"),
    31: ("THRESHOLD", "Threshold"),
    32: ("DUMMY_DATA", "DummyData"),
    33: ("SLICE", "Slice"),
    34: ("MVN", "MVN"),
    35: ("ABSVAL", "AbsVal"),
    36: ("SILENCE", "Silence"),
    37: ("CONTRASTIVE_LOSS", "ContrastiveLoss"),
    38: ("EXP", "Exp"),
    39: ("DECONVOLUTION", "Deconvolution"),
    43: ("BN", "BN"),
}


# ---------------------------------------------------------------------------------------------------------------------
# The schema: caffe.proto's field numbers, for what we read.

_F = Any  # descriptor_pb2.FieldDescriptorProto, typed loosely (protobuf's stubs are optional)


def _schema() -> dict[str, Any]:
    """Message classes built from a FileDescriptorProto assembled here (no .proto compiler, no generated code)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="segbatch_caffe_subset.proto", package="segbatch_caffe", syntax="proto2")
    T = descriptor_pb2.FieldDescriptorProto
    OPT, REP = T.LABEL_OPTIONAL, T.LABEL_REPEATED

    def message(name: str, fields: Sequence[tuple[str, int, int, int, str]], enums: Sequence[tuple[str, Sequence[tuple[str, int]]]] = ()) -> None:
        m = fdp.message_type.add(name=name)
        for ename, values in enums:
            e = m.enum_type.add(name=ename)
            for vname, number in values:
                e.value.add(name=vname, number=number)
        for fname, number, label, ftype, type_name in fields:
            f = m.field.add(name=fname, number=number, label=label, type=ftype)
            if type_name:
                f.type_name = type_name if type_name.startswith(".") else f".segbatch_caffe.{type_name}"
            if label == REP and ftype in (T.TYPE_FLOAT, T.TYPE_DOUBLE, T.TYPE_INT64) and fname in ("dim", "data", "double_data"):
                f.options.packed = True

    U32, I32, I64, FLT, DBL, BOOL, STR, MSG, ENUM = (
        T.TYPE_UINT32,
        T.TYPE_INT32,
        T.TYPE_INT64,
        T.TYPE_FLOAT,
        T.TYPE_DOUBLE,
        T.TYPE_BOOL,
        T.TYPE_STRING,
        T.TYPE_MESSAGE,
        T.TYPE_ENUM,
    )
    message("BlobShape", [("dim", 1, REP, I64, "")])
    message(
        "BlobProto",
        [
            ("shape", 7, OPT, MSG, "BlobShape"),
            ("data", 5, REP, FLT, ""),
            ("double_data", 8, REP, DBL, ""),
            ("num", 1, OPT, I32, ""),
            ("channels", 2, OPT, I32, ""),
            ("height", 3, OPT, I32, ""),
            ("width", 4, OPT, I32, ""),
        ],
    )
    message("NetStateRule", [("phase", 1, OPT, ENUM, "NetStateRule.Phase")], [("Phase", [("TRAIN", 0), ("TEST", 1)])])
    message("TransformationParameter", [("scale", 1, OPT, FLT, ""), ("mean_file", 4, OPT, STR, ""), ("mean_value", 5, REP, FLT, "")])
    message(
        "ConvolutionParameter",
        [
            ("num_output", 1, OPT, U32, ""),
            ("bias_term", 2, OPT, BOOL, ""),
            ("pad", 3, REP, U32, ""),
            ("kernel_size", 4, REP, U32, ""),
            ("group", 5, OPT, U32, ""),
            ("stride", 6, REP, U32, ""),
            ("pad_h", 9, OPT, U32, ""),
            ("pad_w", 10, OPT, U32, ""),
            ("kernel_h", 11, OPT, U32, ""),
            ("kernel_w", 12, OPT, U32, ""),
            ("stride_h", 13, OPT, U32, ""),
            ("stride_w", 14, OPT, U32, ""),
            ("dilation", 18, REP, U32, ""),
        ],
    )
    message(
        "PoolingParameter",
        [
            ("pool", 1, OPT, ENUM, "PoolingParameter.PoolMethod"),
            ("kernel_size", 2, OPT, U32, ""),
            ("stride", 3, OPT, U32, ""),
            ("pad", 4, OPT, U32, ""),
            ("kernel_h", 5, OPT, U32, ""),
            ("kernel_w", 6, OPT, U32, ""),
            ("stride_h", 7, OPT, U32, ""),
            ("stride_w", 8, OPT, U32, ""),
            ("pad_h", 9, OPT, U32, ""),
            ("pad_w", 10, OPT, U32, ""),
            ("global_pooling", 12, OPT, BOOL, ""),
        ],
        [("PoolMethod", [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)])],
    )
    message("DropoutParameter", [("dropout_ratio", 1, OPT, FLT, ""), ("sample_weights_test", 2, OPT, BOOL, "")])
    message(
        "LRNParameter",
        [
            ("local_size", 1, OPT, U32, ""),
            ("alpha", 2, OPT, FLT, ""),
            ("beta", 3, OPT, FLT, ""),
            ("norm_region", 4, OPT, ENUM, "LRNParameter.NormRegion"),
            ("k", 5, OPT, FLT, ""),
        ],
        [("NormRegion", [("ACROSS_CHANNELS", 0), ("WITHIN_CHANNEL", 1)])],
    )
    message("BNParameter", [("bn_mode", 3, OPT, ENUM, "BNParameter.BNMode")], [("BNMode", [("LEARN", 0), ("INFERENCE", 1)])])
    message("BatchNormParameter", [("use_global_stats", 1, OPT, BOOL, ""), ("moving_average_fraction", 2, OPT, FLT, ""), ("eps", 3, OPT, FLT, "")])
    message("ScaleParameter", [("axis", 1, OPT, I32, ""), ("num_axes", 2, OPT, I32, ""), ("bias_term", 4, OPT, BOOL, "")])
    message(
        "UpsampleParameter",
        [
            ("scale", 1, OPT, U32, ""),
            ("scale_h", 2, OPT, U32, ""),
            ("scale_w", 3, OPT, U32, ""),
            ("pad_out_h", 4, OPT, BOOL, ""),
            ("pad_out_w", 5, OPT, BOOL, ""),
            ("upsample_h", 6, OPT, U32, ""),
            ("upsample_w", 7, OPT, U32, ""),
        ],
    )
    message("SoftmaxParameter", [("axis", 2, OPT, I32, "")])
    message(
        "LayerParameter",
        [
            ("name", 1, OPT, STR, ""),
            ("type", 2, OPT, STR, ""),
            ("bottom", 3, REP, STR, ""),
            ("top", 4, REP, STR, ""),
            ("blobs", 7, REP, MSG, "BlobProto"),
            ("include", 8, REP, MSG, "NetStateRule"),
            ("exclude", 9, REP, MSG, "NetStateRule"),
            ("bn_param", 45, OPT, MSG, "BNParameter"),
            ("transform_param", 100, OPT, MSG, "TransformationParameter"),
            ("convolution_param", 106, OPT, MSG, "ConvolutionParameter"),
            ("dropout_param", 108, OPT, MSG, "DropoutParameter"),
            ("lrn_param", 118, OPT, MSG, "LRNParameter"),
            ("pooling_param", 121, OPT, MSG, "PoolingParameter"),
            ("softmax_param", 125, OPT, MSG, "SoftmaxParameter"),
            ("upsample_param", 137, OPT, MSG, "UpsampleParameter"),
            ("batch_norm_param", 139, OPT, MSG, "BatchNormParameter"),
            ("scale_param", 142, OPT, MSG, "ScaleParameter"),
        ],
    )
    message(
        "V1LayerParameter",
        [
            ("bottom", 2, REP, STR, ""),
            ("top", 3, REP, STR, ""),
            ("name", 4, OPT, STR, ""),
            ("type", 5, OPT, ENUM, "V1LayerParameter.LayerType"),
            ("blobs", 6, REP, MSG, "BlobProto"),
            ("convolution_param", 10, OPT, MSG, "ConvolutionParameter"),
            ("dropout_param", 12, OPT, MSG, "DropoutParameter"),
            ("lrn_param", 18, OPT, MSG, "LRNParameter"),
            ("pooling_param", 19, OPT, MSG, "PoolingParameter"),
            ("include", 32, REP, MSG, "NetStateRule"),
            ("exclude", 33, REP, MSG, "NetStateRule"),
            ("transform_param", 36, OPT, MSG, "TransformationParameter"),
        ],
        [("LayerType", [("NONE", 0)] + [(enum_name, n) for n, (enum_name, _) in sorted(_V1.items())])],
    )
    message(
        "NetParameter",
        [
            ("name", 1, OPT, STR, ""),
            ("layers", 2, REP, MSG, "V1LayerParameter"),
            ("input", 3, REP, STR, ""),
            ("input_dim", 4, REP, I32, ""),
            ("input_shape", 8, REP, MSG, "BlobShape"),
            ("layer", 100, REP, MSG, "LayerParameter"),
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    get = getattr(message_factory, "GetMessageClass", None)
    classes: dict[str, Any] = {}
    for m in fdp.message_type:
        desc = pool.FindMessageTypeByName(f"segbatch_caffe.{m.name}")
        classes[m.name] = get(desc) if get else message_factory.MessageFactory(pool).GetPrototype(desc)
    return classes


_MESSAGES: dict[str, Any] | None = None


def _messages() -> dict[str, Any]:
    global _MESSAGES
    if _MESSAGES is None:
        _MESSAGES = _schema()
    return _MESSAGES


# ---------------------------------------------------------------------------------------------------------------------
# Reading the files into plain layers.


@dataclass
class Layer:
    """One Caffe layer, as read: its type, wiring, parameters (protobuf messages or None) and blobs (float64 tensors)."""

    name: str
    type: str
    bottom: list[str]
    top: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    blobs: list[Tensor] = field(default_factory=list)


def read_prototxt(path: str | Path) -> tuple[list[Layer], Any]:
    """The layers of a text model definition that run at test time, and the NetParameter message."""
    from google.protobuf import text_format

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read the model definition ({type(exc).__name__})") from None
    net = _messages()["NetParameter"]()
    try:
        text_format.Parse(text, net, allow_unknown_field=True, allow_unknown_extension=True)
    except text_format.ParseError as exc:
        reason = str(exc).splitlines()[0]
        if "V1LayerParameter.LayerType" in reason:  # a legacy `layers` entry with a type the V1 list does not have
            reason += " (the legacy 'layers' form has no Upsample, BatchNorm or Scale type: use the current 'layer' form)"
        raise CheckpointError(f"{path} is not a Caffe model definition: {reason}") from None
    layers = _layers(net)
    if not layers:
        raise CheckpointError(f"{path} is not a Caffe model definition (no layers)")
    return layers, net


def read_caffemodel(path: str | Path) -> tuple[dict[str, list[Tensor]], bool]:
    """Blobs by layer name from a binary .caffemodel (NetParameter in protobuf wire format), and whether the file holds them in legacy V1 `layers` entries."""
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the weights ({type(exc).__name__})") from None
    net = _messages()["NetParameter"]()
    try:
        net.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a Caffe weights file (protobuf: {str(exc).splitlines()[0] or type(exc).__name__})") from None
    weights: dict[str, list[Tensor]] = {}
    for layer in [*net.layer, *net.layers]:
        if layer.blobs:
            weights[layer.name] = [_blob(b, f"{path}: layer {layer.name!r}") for b in layer.blobs]
    if not weights:
        raise CheckpointError(f"{path} is not a Caffe weights file (no layer has weights)")
    return weights, any(layer.blobs for layer in net.layers)


def _blob(b: Any, where: str) -> Tensor:
    shape = [int(d) for d in b.shape.dim] if b.HasField("shape") else [int(b.num), int(b.channels), int(b.height), int(b.width)]
    values = list(b.data) if len(b.data) else list(b.double_data)
    count = 1
    for d in shape:
        count *= d
    if count != len(values) or any(d < 0 for d in shape):
        raise CheckpointError(f"{where}: a blob of shape {shape} holds {len(values)} values")
    return torch.tensor(values, dtype=torch.float64).reshape(shape)


def _layers(net: Any) -> list[Layer]:
    """NetParameter's layers (current `layer` or legacy V1 `layers`) that run in the TEST phase."""
    out: list[Layer] = []
    if net.layer and net.layers:
        raise CheckpointError("the definition mixes current 'layer' and legacy 'layers' entries")
    for msg in net.layer:
        if _in_test(msg):
            params = {n: getattr(msg, n) if msg.HasField(n) else None for n in _PARAMS}
            out.append(Layer(msg.name, msg.type, list(msg.bottom), list(msg.top), params))
    for msg in net.layers:
        if _in_test(msg):
            kind = _V1[int(msg.type)][1] if int(msg.type) in _V1 else f"V1 type {int(msg.type)}"
            params = {n: getattr(msg, n) if msg.HasField(n) else None for n in _V1_PARAMS}
            out.append(Layer(msg.name, kind, list(msg.bottom), list(msg.top), params))
    return out


_PARAMS = (
    "convolution_param",
    "pooling_param",
    "dropout_param",
    "lrn_param",
    "bn_param",
    "upsample_param",
    "transform_param",
    "batch_norm_param",
    "scale_param",
)
_V1_PARAMS = ("convolution_param", "pooling_param", "dropout_param", "lrn_param", "transform_param")


def _in_test(msg: Any) -> bool:
    if msg.include:
        return any(not r.HasField("phase") or r.phase == 1 for r in msg.include)
    return not any(r.HasField("phase") and r.phase == 1 for r in msg.exclude)


# ---------------------------------------------------------------------------------------------------------------------
# Matching the definition against a SegNet.


@dataclass
class Imported:
    """What an import produced: the model and what the checkpoint records about where it came from."""

    model: SegNet
    provenance: dict[str, Any]


def _fail(layer: Layer | str, what: str) -> CheckpointError:
    name = layer.name if isinstance(layer, Layer) else layer
    return CheckpointError(f"layer {name!r}: {what}")


def _hw(p: Any, name: str, stem: str) -> list[int]:
    """A convolution setting's values: the repeated field plus its _h / _w forms where given."""
    return [*getattr(p, name), *(getattr(p, f"{stem}_{a}") for a in "hw" if p.HasField(f"{stem}_{a}"))]


def _opt(p: Any, name: str, default: Any) -> Any:
    """Field `name` of the parameter message `p` where the definition sets it; else (or with no such message, `p` None) `default`."""
    return getattr(p, name) if p is not None and p.HasField(name) else default


def _single(values: Sequence[int], default: int, layer: Layer, what: str) -> int:
    vals = set(int(v) for v in values)
    if len(vals) > 1:
        raise _fail(layer, f"{what} differs between height and width ({sorted(vals)}); SegNet's are square")
    return vals.pop() if vals else default


@dataclass
class _Conv:
    layer: Layer
    cout: int
    kernel: int
    bn: Layer | None = None  # a BN, or an upstream BatchNorm
    scale: Layer | None = None  # the Scale layer after an upstream BatchNorm
    relu: bool = False
    closed: bool = False  # a Dropout follows: nothing more belongs to this convolution


@dataclass
class _Net:
    """The definition in SegNet's terms, in order."""

    lrn: Layer | None = None
    transform: Any = None
    encoders: list[list[_Conv]] = field(default_factory=list)
    decoders: list[list[_Conv]] = field(default_factory=list)
    classifier: _Conv | None = None
    drops: list[tuple[str, Layer, _Conv | None]] = field(default_factory=list)  # (segbatch place, layer, the convolution it follows)
    idle_drops: list[Layer] = field(default_factory=list)  # test-time pass-through Dropout layers at no segbatch position
    pools: list[Layer] = field(default_factory=list)
    upsamples: list[Layer] = field(default_factory=list)
    softmax: bool = False


def _walk(layers: list[Layer]) -> _Net:
    """Follow the chain of layers and sort them into SegNet's blocks, checking the wiring as it goes."""
    net = _Net()
    current: str | None = None
    masks: list[tuple[str, Layer]] = []  # pooling masks not yet used, innermost last
    phase = "encoder"
    block: list[_Conv] = []
    ended = False

    def need_bottom(layer: Layer, n: int = 1) -> None:
        if len(layer.bottom) < n or (current is not None and layer.bottom[0] != current):
            raise _fail(layer, f"takes {layer.bottom[:1] or 'nothing'}, expected the previous layer's output {current!r}")

    def refuse_lone_batchnorm(then: str) -> None:
        last = block[-1] if block else None
        if last is not None and last.bn is not None and last.bn.type == "BatchNorm" and last.scale is None:
            raise _fail(last.bn, f"a BatchNorm without its Scale layer after it ({then}); BatchNorm only normalises, SegNet's BN also scales and shifts")

    for layer in layers:
        kind = layer.type
        if kind in _INPUT_TYPES:
            if current is not None:
                raise _fail(layer, f"a {kind} layer in the middle of the network is not supported")
            if not layer.top:
                raise _fail(layer, "an input layer without a top")
            current = layer.top[0]
            net.transform = layer.params.get("transform_param")
            continue
        if ended and kind not in _SCORE_TYPES:
            raise _fail(layer, f"a {kind} layer after the classifier's softmax is not supported")
        if kind in _SCORE_TYPES:
            continue
        if current is None:
            current = layer.bottom[0] if layer.bottom else None
        if kind != "Scale":
            refuse_lone_batchnorm(f"{kind} {layer.name!r} follows it")
        if kind == "LRN":
            need_bottom(layer)
            if net.encoders or block or net.lrn is not None:
                raise _fail(layer, "an LRN layer is supported only on the input (as in SegNet-Basic)")
            p = layer.params.get("lrn_param")
            if p is not None and p.norm_region != 0:
                raise _fail(layer, "LRN within channels is not supported (only across channels)")
            net.lrn = layer
        elif kind == "Convolution":
            need_bottom(layer)
            p = layer.params.get("convolution_param")
            if p is None or not p.HasField("num_output"):
                raise _fail(layer, "a convolution without num_output")
            kernel = _single(_hw(p, "kernel_size", "kernel"), 0, layer, "kernel")
            pad = _single(_hw(p, "pad", "pad"), 0, layer, "pad")
            stride = _single(_hw(p, "stride", "stride"), 1, layer, "stride")
            dilation = _single(list(p.dilation), 1, layer, "dilation")
            if kernel < 1 or kernel % 2 == 0 or pad != kernel // 2 or stride != 1 or dilation != 1 or p.group > 1:
                got = f"kernel {kernel}, pad {pad}, stride {stride}, dilation {dilation}, group {p.group or 1}"
                raise _fail(layer, f"convolution {got}; SegNet's are odd kernels with pad kernel//2, stride 1")
            if not _opt(p, "bias_term", True):
                raise _fail(layer, "a convolution without bias is not supported")
            if phase == "decoder-end":
                raise _fail(layer, "a second convolution after the classifier")
            block.append(_Conv(layer, int(p.num_output), kernel))
        elif kind in ("BN", "BatchNorm"):
            need_bottom(layer)
            if not block or block[-1].bn is not None or block[-1].relu or block[-1].closed:
                raise _fail(layer, f"a {kind} layer that does not follow a convolution")
            block[-1].bn = layer
        elif kind == "Scale":
            need_bottom(layer)
            if not block or block[-1].bn is None or block[-1].bn.type != "BatchNorm" or block[-1].scale is not None:
                raise _fail(layer, "a Scale layer that does not follow a BatchNorm; SegNet scales only as part of its batch normalisation")
            p = layer.params.get("scale_param")
            axis = _opt(p, "axis", 1)
            axes = _opt(p, "num_axes", 1)
            if len(layer.bottom) > 1 or axis != 1 or axes != 1:
                raise _fail(layer, "a Scale layer that is not per channel (a second bottom, or axis/num_axes other than 1)")
            block[-1].scale = layer
        elif kind == "ReLU":
            need_bottom(layer)
            if not block or block[-1].relu or block[-1].closed:
                raise _fail(layer, "a ReLU that does not follow a convolution (and its BN)")
            block[-1].relu = True
        elif kind == "Pooling":
            need_bottom(layer)
            if phase != "encoder" or not block:
                raise _fail(layer, "pooling is supported only at the end of an encoder block")
            p = layer.params.get("pooling_param")
            method = p.pool if p is not None else 0
            kernel = _opt(p, "kernel_size", 0)
            stride = _opt(p, "stride", 1)
            pad = p.pad if p is not None else 0
            odd = p is not None and (p.global_pooling or any(p.HasField(f) for f in ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w")))
            if method != 0 or kernel != 2 or stride != 2 or pad != 0 or odd:
                got = f"{['MAX', 'AVE', 'STOCHASTIC'][method] if method < 3 else method} kernel {kernel} stride {stride} pad {pad}"
                raise _fail(layer, f"pooling {got}{' (per-axis or global)' if odd else ''}; SegNet's is MAX 2x2 stride 2")
            if len(layer.top) != 2:
                raise _fail(layer, "max pooling without the 'mask' top (the indices the decoder's upsampling needs)")
            net.encoders.append(block)
            block = []
            net.pools.append(layer)
            masks.append((layer.top[1], layer))
        elif kind == "Upsample":
            need_bottom(layer, 2)
            if not masks:
                raise _fail(layer, "upsampling with no pooling mask left to use")
            mask, pool = masks.pop()
            if layer.bottom[1] != mask:
                raise _fail(layer, f"uses mask {layer.bottom[1]!r}; SegNet's decoder uses the innermost unused one, {mask!r} of {pool.name!r}")
            p = layer.params.get("upsample_param")
            scale = _opt(p, "scale", 2)
            if scale != 2 or _opt(p, "scale_h", 2) != 2 or _opt(p, "scale_w", 2) != 2:
                raise _fail(layer, f"upsampling scale {scale}; SegNet's is 2")
            if phase == "encoder":
                if block:
                    raise _fail(layer, "convolutions after the last pooling, before the decoder")
                phase = "decoder"
            else:
                net.decoders.append(block)
                block = []
            net.upsamples.append(layer)
        elif kind == "Dropout":
            need_bottom(layer)
            misplaced = ""
            if phase == "encoder":
                if block or not net.pools:
                    misplaced = "dropout inside an encoder block; SegNet's placements drop after a pooling"
                else:
                    net.drops.append((f"pool{len(net.pools)}", layer, None))
            elif not block or block[-1].bn is None:
                misplaced = "dropout right after upsampling or a bare convolution; SegNet's placements drop after a pooling or a decoder block"
            else:
                block[-1].closed = True
                net.drops.append((f"dec{len(net.encoders) - len(net.decoders)}", layer, block[-1]))
            if misplaced:
                _set_aside(net, layer, misplaced)
        elif kind == "Softmax":
            need_bottom(layer)
            ended = True
        else:
            raise _fail(
                layer,
                f"layer type {kind!r} is not part of SegNet (supported: Convolution, BN or BatchNorm + Scale, ReLU, Pooling, Upsample, Dropout, LRN, Softmax)",
            )
        if layer.top:
            current = layer.top[0]
    refuse_lone_batchnorm("it ends the definition")
    if phase != "decoder":
        raise CheckpointError("the definition has no decoder (no Upsample layer): not a SegNet")
    if masks:
        raise CheckpointError(f"{len(masks)} pooling masks are never upsampled ({', '.join(p.name for _, p in masks)})")
    if not block:
        raise CheckpointError("the definition ends without a classifier convolution")
    # The last convolution of the last decoder block is the classifier, without BN or ReLU.
    cls = block.pop()
    if cls.bn is not None or cls.relu:
        raise _fail(cls.layer, "the classifier (last convolution) has a BN or ReLU after it; SegNet's gives the class scores directly")
    net.decoders.append(block)
    net.classifier = cls
    block_ends = {id(b[-1]) for b in net.decoders if b}
    placed = []
    for drop in net.drops:
        _, layer, follows = drop
        if follows is not None and id(follows) not in block_ends:
            _set_aside(net, layer, "dropout inside a decoder block (or after the classifier); SegNet's placements drop after a whole block")
        else:
            placed.append(drop)
    net.drops = placed
    return net


def _set_aside(net: _Net, layer: Layer, misplaced: str) -> None:
    """A Dropout at no segbatch placement: refused (`misplaced` says why) where it samples at test time, else kept in `net.idle_drops`.

    Caffe's TEST phase passes such a layer through: it changes nothing at test time.
    """
    if _samples_at_test(layer):
        raise _fail(layer, misplaced)
    net.idle_drops.append(layer)


def _samples_at_test(layer: Layer) -> bool:
    """Whether a Dropout layer drops at test time (the SegNet fork's sample_weights_test); else Caffe's TEST phase passes it through."""
    p = layer.params.get("dropout_param")
    return bool(p is not None and p.sample_weights_test)


def _arch(net: _Net) -> tuple[str, float]:
    """The architecture and width the definition's blocks fit, or a refusal naming the first block that does not."""
    depth = len(net.encoders)
    first = net.encoders[0][0] if net.encoders and net.encoders[0] else None
    if first is None:
        raise CheckpointError("the definition has an empty first encoder block")
    if depth == 5:
        arch, base = "segnet", 64
    elif depth == 4:
        arch, base = "segnet-basic", 64
    else:
        raise CheckpointError(f"the definition pools {depth} times; SegNet pools 5 times and SegNet-Basic 4")
    width = first.cout / base
    if width_problem(width):
        raise _fail(first.layer, f"{first.cout} channels; not a SegNet width")
    return arch, width


def _placement(net: _Net, arch: str) -> tuple[str, float, bool]:
    """The catalogue placement of the Dropout layers, their p, and whether they sample at test time."""
    placements = SEGNET_PLACEMENTS if arch == "segnet" else BASIC_PLACEMENTS
    if net.idle_drops:
        # Some Dropout layers sit where no segbatch placement drops, and none samples at test time (else _walk refused
        # them): Caffe's TEST phase passes every one of them through, so the model is imported without dropout.
        sampled = [lay for _, lay, _ in net.drops if _samples_at_test(lay)]
        if sampled:
            raise _fail(sampled[0], f"samples at test time (sample_weights_test) while {net.idle_drops[0].name!r} does not and sits at no segbatch placement")
        return "none", 0.5, False
    if not net.drops:
        return "none", 0.5, False
    places = [place for place, _, _ in net.drops]
    params = [lay.params.get("dropout_param") for _, lay, _ in net.drops]
    ratios = {round(float(_opt(p, "dropout_ratio", 0.5)), 6) for p in params}
    sampling = {bool(p is not None and p.sample_weights_test) for p in params}
    if len(ratios) > 1:
        raise _fail(net.drops[0][1], f"dropout ratios differ between layers ({sorted(ratios)}); segbatch uses one p")
    if len(sampling) > 1:
        raise _fail(net.drops[0][1], "some Dropout layers sample at test time (sample_weights_test) and some do not")
    # The block before the classifier is dec1; a lone drop there is the "classifier" placement (the same position).
    wanted = set(places)
    for name, where in placements.items():
        if set(where) == wanted or set(where) == (wanted - {"dec1"}) | {"classifier"} and "dec1" in wanted:
            if len(where) == len(places):
                return name, ratios.pop(), sampling.pop()
    known = "; ".join(f"{k}: {'/'.join(v)}" for k, v in placements.items() if v)
    raise _fail(net.drops[0][1], f"dropout after {', '.join(places)} matches no segbatch placement ({known})")


def import_caffe(prototxt: str | Path, weights: str | Path) -> Imported:
    """Read a SegNet-family Caffe model (definition + weights) into a segbatch SegNet in eval mode."""
    layers, proto = read_prototxt(prototxt)
    blobs, legacy_weights = read_caffemodel(weights)
    net = _walk(layers)
    arch, width = _arch(net)
    placement, p, sampling = _placement(net, arch)
    assert net.classifier is not None
    first = net.encoders[0][0]
    first_blobs = _blobs_of(first.layer, blobs)
    in_channels = int(first_blobs[0].shape[1]) if first_blobs[0].ndim == 4 else -1
    if in_channels < 1:
        raise _fail(first.layer, f"weights of shape {list(first_blobs[0].shape)}, expected (out, in, k, k)")
    lrn: tuple[float, ...] = ()
    if net.lrn is not None:
        lp = net.lrn.params.get("lrn_param")
        lrn = tuple(
            float(f"{v:.7g}")
            for v in (  # float32 fields, read back as the decimals written
                float(_opt(lp, "local_size", 5)),
                float(_opt(lp, "alpha", 1.0)),
                float(_opt(lp, "beta", 0.75)),
                float(_opt(lp, "k", 1.0)),
            )
        )
        if int(lrn[0]) % 2 == 0:
            raise _fail(net.lrn, f"LRN local_size {int(lrn[0])}; only odd sizes are supported")
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
    _check_input_shape(proto, net, in_channels)
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
        "input_dims": _input_size(proto),
        "upsample": {lay.name: _upsample_text(*_upsample_size(lay)) for lay in net.upsamples},
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


def _input_scaling(net: _Net, in_channels: int) -> tuple[list[float], float]:
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
    scale = float(_opt(t, "scale", 1.0))
    if scale <= 0:
        raise CheckpointError(f"the data layer's scale is {scale}")
    return values or [0.0] * in_channels, scale


def _input_size(proto: Any) -> list[int]:
    """The (N, C, H, W) the definition fixes with `input_shape` / `input_dim`; [] where a data layer feeds it."""
    if len(proto.input_shape):
        return [int(d) for d in proto.input_shape[0].dim]
    if len(proto.input_dim) >= 4:
        return [int(d) for d in proto.input_dim[:4]]
    return []


def _upsample_size(layer: Layer) -> tuple[int | None, int | None, int, int]:
    """How an Upsample sets its output: upsample_h / upsample_w where given (else None), pad_out_h / _w (0 or 1).

    As the SegNet fork's upsample_layer.cpp: a side without upsample_h / upsample_w is ``scale * in - pad_out``.
    """
    p = layer.params.get("upsample_param")
    ph = int(bool(p is not None and p.pad_out_h))
    pw = int(bool(p is not None and p.pad_out_w))
    return _opt(p, "upsample_h", None), _opt(p, "upsample_w", None), ph, pw


def _check_input_shape(proto: Any, net: _Net, in_channels: int) -> None:
    """Where the definition fixes the input size, each Upsample's output must be the size of the pooling input it undoes."""
    dims = _input_size(proto)
    if len(dims) != 4:
        return
    if dims[1] != in_channels:
        raise CheckpointError(f"the input has {dims[1]} channels but the first convolution takes {in_channels}")
    h, w = dims[2], dims[3]
    sizes = []
    for _ in net.pools:
        sizes.append((h, w))
        h, w = -(-h // 2), -(-w // 2)  # Caffe's pooling rounds up
    for layer, (h, w) in zip(net.upsamples, reversed(sizes)):
        uh, uw, ph, pw = _upsample_size(layer)
        got_h = uh if uh is not None else 2 * -(-h // 2) - ph
        got_w = uw if uw is not None else 2 * -(-w // 2) - pw
        if (got_h, got_w) != (h, w):
            raise _fail(layer, f"upsamples to {got_h}x{got_w}, but the pooling it undoes took {h}x{w} (input {dims[2]}x{dims[3]})")


def _blobs_of(layer: Layer, blobs: dict[str, list[Tensor]]) -> list[Tensor]:
    found = blobs.get(layer.name)
    if not found:
        raise _fail(layer, "has no weights in the .caffemodel")
    return found


def _copy(net: _Net, model: SegNet, blobs: dict[str, list[Tensor]]) -> list[str]:
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
            raise _fail(at, f"{what} has {len(theirs)} convolutions; {model.arch} has {len(ours)}")
        for conv, (mine, bn, relu) in zip(theirs, ours):
            if conv.bn is None:
                raise _fail(conv.layer, "a convolution without a BN layer after it; every SegNet convolution but the classifier has one")
            if conv.relu != relu:
                raise _fail(conv.layer, f"{'a' if conv.relu else 'no'} ReLU after it; {model.arch} has {'one' if relu else 'none'} there")
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


def _copy_conv(conv: _Conv, mine: nn.Conv2d, blobs: dict[str, list[Tensor]]) -> None:
    found = _blobs_of(conv.layer, blobs)
    if len(found) != 2:
        raise _fail(conv.layer, f"{len(found)} weight blobs; a convolution with bias has 2")
    w, b = found
    if list(w.shape) != list(mine.weight.shape):
        raise _fail(conv.layer, f"weights of shape {list(w.shape)}; SegNet here needs {list(mine.weight.shape)}")
    assert mine.bias is not None
    if b.numel() != mine.bias.numel():
        raise _fail(conv.layer, f"a bias of {b.numel()} values; SegNet here needs {mine.bias.numel()}")
    with torch.no_grad():
        mine.weight.copy_(w)
        mine.bias.copy_(b.reshape(-1))


def _copy_bn(conv: _Conv, bn: nn.BatchNorm2d, blobs: dict[str, list[Tensor]]) -> str:
    """Make `bn` compute what the Caffe normalisation after `conv` computes; returns its form (for the provenance)."""
    layer = conv.bn
    assert layer is not None
    found = _blobs_of(layer, blobs)
    mean: Tensor | None
    var: Tensor | None
    if layer.type == "BatchNorm":
        assert conv.scale is not None  # _walk refuses a BatchNorm without its Scale
        mean, var, eps = _batchnorm_statistics(layer, found)
        gamma, beta = _scale_blobs(conv.scale, blobs)
        form = f"BatchNorm + Scale (eps {eps:g})"
    else:
        p = layer.params.get("bn_param")
        inference = p is not None and p.bn_mode == 1
        if len(found) == 2:
            if not inference:
                raise _fail(
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
                raise _fail(layer, "a BN layer with running statistics (4 blobs) in bn_mode INFERENCE, which applies only scale and shift: remove bn_mode")
            gamma, beta, mean, var = found
            eps = SEGNET_BN_EPS
            form = f"BN with running statistics (eps {eps:g})"
        else:
            raise _fail(layer, f"a BN layer with {len(found)} blobs; SegNet's BN has 2 (scale, shift) or 4 (scale, shift, running mean, running variance)")
    c = bn.num_features
    sizes = [t.numel() for t in (gamma, beta, mean, var) if t is not None]
    if any(n != c for n in sizes):
        raise _fail(layer, f"parameters of {'/'.join(map(str, sizes))} values; the convolution before it has {c} channels")
    with torch.no_grad():
        if mean is None or var is None:  # y = scale * x + shift: no normalisation left to do
            bn.weight.copy_(gamma.reshape(-1))
            bn.bias.copy_(beta.reshape(-1))
            cast(Tensor, bn.running_mean).zero_()
            cast(Tensor, bn.running_var).fill_(1.0 - bn.eps)
            return form
        var = var.reshape(-1)
        if bool((var < 0).any()) or bool((var + eps <= 0).any()):
            raise _fail(layer, f"a running variance of {float(var.min()):g} with eps {eps:g}: not a variance")
        # Keep the statistics (a later fine-tuning needs them) and fold the eps difference into the weight.
        bn.weight.copy_(gamma.reshape(-1) * torch.sqrt((var + bn.eps) / (var + eps)))
        bn.bias.copy_(beta.reshape(-1))
        cast(Tensor, bn.running_mean).copy_(mean.reshape(-1))
        cast(Tensor, bn.running_var).copy_(var)
    return form


def _batchnorm_statistics(layer: Layer, found: list[Tensor]) -> tuple[Tensor, Tensor, float]:
    """Mean, variance and eps of an upstream BatchNorm: blobs (mean * s, variance * s, s), s the moving-average sum."""
    p = layer.params.get("batch_norm_param")
    if not _opt(p, "use_global_stats", True):
        raise _fail(layer, "BatchNorm with use_global_stats: false normalises with each batch's statistics; use the stored ones (remove it)")
    if len(found) != 3 or found[2].numel() != 1:
        raise _fail(layer, f"a BatchNorm with {len(found)} blobs; Caffe's has 3 (mean, variance, and their one-value scale factor)")
    s = float(found[2].reshape(-1)[0])
    factor = 0.0 if s == 0 else 1.0 / s  # as Caffe's batch_norm_layer.cpp
    eps = float(_opt(p, "eps", 1e-5))
    return found[0] * factor, found[1] * factor, eps


def _scale_blobs(layer: Layer, blobs: dict[str, list[Tensor]]) -> tuple[Tensor, Tensor]:
    """Gamma and beta of the Scale layer after a BatchNorm (beta 0 without bias_term)."""
    found = _blobs_of(layer, blobs)
    p = layer.params.get("scale_param")
    bias = bool(p is not None and p.bias_term)
    if len(found) != (2 if bias else 1):
        raise _fail(layer, f"a Scale layer with {len(found)} blobs; with bias_term {str(bias).lower()} it has {2 if bias else 1}")
    return found[0], found[1] if bias else torch.zeros_like(found[0])
