"""Reading a Caffe model's two files, the text definition (.prototxt) and the binary weights (.caffemodel), into plain layers.

Both files are read with the `protobuf` package against a schema written here
(`_schema`): only the messages and fields this importer reads, with the field
numbers of Caffe's caffe.proto and of the SegNet fork's additions (the ``BN``
layer's ``bn_param`` 45, ``upsample_param`` 137, Dropout's
``sample_weights_test`` 2). Fields it does not know are skipped in the binary
file and, with ``allow_unknown_field``, in the text file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from segbatch.errors import CheckpointError

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


@cache
def _messages() -> dict[str, Any]:
    """The message classes, built once."""
    return _schema()


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


def layer_error(layer: Layer | str, what: str) -> CheckpointError:
    """The one-line refusal of a layer: `layer 'conv1_1': what`."""
    name = layer.name if isinstance(layer, Layer) else layer
    return CheckpointError(f"layer {name!r}: {what}")


def setting(p: Any, name: str, default: Any) -> Any:
    """Field `name` of the parameter message `p` where the definition sets it; else (or with no such message, `p` None) `default`."""
    return getattr(p, name) if p is not None and p.HasField(name) else default
