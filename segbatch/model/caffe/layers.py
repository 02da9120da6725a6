"""The layer walk: a Caffe definition's layers sorted into SegNet's blocks, and the SegNet they describe.

The definition is matched step by step against the plan of a segbatch
`SegNet` built with the architecture, width, classes, dropout placement and
input LRN that the definition implies; anything that does not fit raises one
`CheckpointError` line naming the Caffe layer and what differs. Each layer type
the walk accepts has one handler in `_HANDLERS`.

Dropout layers without ``sample_weights_test`` pass through in Caffe's TEST
phase; where they sit at no segbatch placement (``segnet_pascal``'s, before each
pooling) the model is imported without dropout and the checkpoint lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from segbatch.errors import CheckpointError
from segbatch.model.caffe.schema import Layer, layer_error, setting
from segbatch.model.catalog import BASIC_PLACEMENTS, SEGNET_PLACEMENTS, width_problem

# Layers that feed or score the network and do not change its output.
_INPUT_TYPES = {"Input", "Data", "DenseImageData", "ImageData", "MemoryData", "DummyData", "HDF5Data"}
_SCORE_TYPES = {"SoftmaxWithLoss", "Accuracy", "Silence", "ArgMax"}


@dataclass
class Conv:
    """One convolution of the definition and the layers that belong to it (its BN, Scale and ReLU)."""

    layer: Layer
    cout: int
    kernel: int
    bn: Layer | None = None  # a BN, or an upstream BatchNorm
    scale: Layer | None = None  # the Scale layer after an upstream BatchNorm
    relu: bool = False
    closed: bool = False  # a Dropout follows: nothing more belongs to this convolution


@dataclass
class Net:
    """The definition in SegNet's terms, in order."""

    lrn: Layer | None = None
    transform: Any = None
    encoders: list[list[Conv]] = field(default_factory=list)
    decoders: list[list[Conv]] = field(default_factory=list)
    classifier: Conv | None = None
    drops: list[tuple[str, Layer, Conv | None]] = field(default_factory=list)  # (segbatch place, layer, the convolution it follows)
    idle_drops: list[Layer] = field(default_factory=list)  # test-time pass-through Dropout layers at no segbatch position
    pools: list[Layer] = field(default_factory=list)
    upsamples: list[Layer] = field(default_factory=list)


def walk(layers: list[Layer]) -> Net:
    """Follow the chain of layers and sort them into SegNet's blocks, checking the wiring as it goes."""
    state = _Walk()
    for layer in layers:
        state.step(layer)
    return state.finish()


@dataclass
class _Walk:
    """Where the walk stands between two layers."""

    net: Net = field(default_factory=Net)
    current: str | None = None  # the previous layer's output, which the next layer must take
    masks: list[tuple[str, Layer]] = field(default_factory=list)  # pooling masks not yet used, innermost last
    phase: str = "encoder"  # "decoder" from the first Upsample on
    block: list[Conv] = field(default_factory=list)  # the convolutions of the block being read
    ended: bool = False  # a Softmax was met: only scoring layers may follow

    def step(self, layer: Layer) -> None:
        kind = layer.type
        if kind in _INPUT_TYPES:
            self.feed(layer)
            return
        if self.ended and kind not in _SCORE_TYPES:
            raise layer_error(layer, f"a {kind} layer after the classifier's softmax is not supported")
        if kind in _SCORE_TYPES:
            return
        if self.current is None:
            self.current = layer.bottom[0] if layer.bottom else None
        if kind != "Scale":
            self.refuse_lone_batchnorm(f"{kind} {layer.name!r} follows it")
        handler = _HANDLERS.get(kind)
        if handler is None:
            raise layer_error(
                layer,
                f"layer type {kind!r} is not part of SegNet (supported: Convolution, BN or BatchNorm + Scale, ReLU, Pooling, Upsample, Dropout, LRN, Softmax)",
            )
        handler(self, layer)
        if layer.top:
            self.current = layer.top[0]

    def finish(self) -> Net:
        """The walked net, once the last layer is read: its decoder complete and its classifier split off."""
        net, block = self.net, self.block
        self.refuse_lone_batchnorm("it ends the definition")
        if self.phase != "decoder":
            raise CheckpointError("the definition has no decoder (no Upsample layer): not a SegNet")
        if self.masks:
            raise CheckpointError(f"{len(self.masks)} pooling masks are never upsampled ({', '.join(p.name for _, p in self.masks)})")
        if not block:
            raise CheckpointError("the definition ends without a classifier convolution")
        # The last convolution of the last decoder block is the classifier, without BN or ReLU.
        cls = block.pop()
        if cls.bn is not None or cls.relu:
            raise layer_error(cls.layer, "the classifier (last convolution) has a BN or ReLU after it; SegNet's gives the class scores directly")
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

    def need_bottom(self, layer: Layer, n: int = 1) -> None:
        if len(layer.bottom) < n or (self.current is not None and layer.bottom[0] != self.current):
            raise layer_error(layer, f"takes {layer.bottom[:1] or 'nothing'}, expected the previous layer's output {self.current!r}")

    def refuse_lone_batchnorm(self, then: str) -> None:
        last = self.block[-1] if self.block else None
        if last is not None and last.bn is not None and last.bn.type == "BatchNorm" and last.scale is None:
            raise layer_error(last.bn, f"a BatchNorm without its Scale layer after it ({then}); BatchNorm only normalises, SegNet's BN also scales and shifts")

    # One handler per layer type (see _HANDLERS): each checks the layer's place and settings, then records it.

    def feed(self, layer: Layer) -> None:
        if self.current is not None:
            raise layer_error(layer, f"a {layer.type} layer in the middle of the network is not supported")
        if not layer.top:
            raise layer_error(layer, "an input layer without a top")
        self.current = layer.top[0]
        self.net.transform = layer.params.get("transform_param")

    def lrn(self, layer: Layer) -> None:
        self.need_bottom(layer)
        if self.net.encoders or self.block or self.net.lrn is not None:
            raise layer_error(layer, "an LRN layer is supported only on the input (as in SegNet-Basic)")
        p = layer.params.get("lrn_param")
        if p is not None and p.norm_region != 0:
            raise layer_error(layer, "LRN within channels is not supported (only across channels)")
        self.net.lrn = layer

    def convolution(self, layer: Layer) -> None:
        self.need_bottom(layer)
        p = layer.params.get("convolution_param")
        if p is None or not p.HasField("num_output"):
            raise layer_error(layer, "a convolution without num_output")
        kernel = _single(_hw(p, "kernel_size", "kernel"), 0, layer, "kernel")
        pad = _single(_hw(p, "pad", "pad"), 0, layer, "pad")
        stride = _single(_hw(p, "stride", "stride"), 1, layer, "stride")
        dilation = _single(list(p.dilation), 1, layer, "dilation")
        if kernel < 1 or kernel % 2 == 0 or pad != kernel // 2 or stride != 1 or dilation != 1 or p.group > 1:
            got = f"kernel {kernel}, pad {pad}, stride {stride}, dilation {dilation}, group {p.group or 1}"
            raise layer_error(layer, f"convolution {got}; SegNet's are odd kernels with pad kernel//2, stride 1")
        if not setting(p, "bias_term", True):
            raise layer_error(layer, "a convolution without bias is not supported")
        self.block.append(Conv(layer, int(p.num_output), kernel))

    def batch_norm(self, layer: Layer) -> None:
        """A BN (the SegNet fork's) or an upstream BatchNorm, after a convolution."""
        self.need_bottom(layer)
        block = self.block
        if not block or block[-1].bn is not None or block[-1].relu or block[-1].closed:
            raise layer_error(layer, f"a {layer.type} layer that does not follow a convolution")
        block[-1].bn = layer

    def scale(self, layer: Layer) -> None:
        self.need_bottom(layer)
        block = self.block
        if not block or block[-1].bn is None or block[-1].bn.type != "BatchNorm" or block[-1].scale is not None:
            raise layer_error(layer, "a Scale layer that does not follow a BatchNorm; SegNet scales only as part of its batch normalisation")
        p = layer.params.get("scale_param")
        axis = setting(p, "axis", 1)
        axes = setting(p, "num_axes", 1)
        if len(layer.bottom) > 1 or axis != 1 or axes != 1:
            raise layer_error(layer, "a Scale layer that is not per channel (a second bottom, or axis/num_axes other than 1)")
        block[-1].scale = layer

    def relu(self, layer: Layer) -> None:
        self.need_bottom(layer)
        if not self.block or self.block[-1].relu or self.block[-1].closed:
            raise layer_error(layer, "a ReLU that does not follow a convolution (and its BN)")
        self.block[-1].relu = True

    def pooling(self, layer: Layer) -> None:
        self.need_bottom(layer)
        if self.phase != "encoder" or not self.block:
            raise layer_error(layer, "pooling is supported only at the end of an encoder block")
        p = layer.params.get("pooling_param")
        method = p.pool if p is not None else 0
        kernel = setting(p, "kernel_size", 0)
        stride = setting(p, "stride", 1)
        pad = p.pad if p is not None else 0
        odd = p is not None and (p.global_pooling or any(p.HasField(f) for f in ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w")))
        if method != 0 or kernel != 2 or stride != 2 or pad != 0 or odd:
            got = f"{['MAX', 'AVE', 'STOCHASTIC'][method] if method < 3 else method} kernel {kernel} stride {stride} pad {pad}"
            raise layer_error(layer, f"pooling {got}{' (per-axis or global)' if odd else ''}; SegNet's is MAX 2x2 stride 2")
        if len(layer.top) != 2:
            raise layer_error(layer, "max pooling without the 'mask' top (the indices the decoder's upsampling needs)")
        self.net.encoders.append(self.block)
        self.block = []
        self.net.pools.append(layer)
        self.masks.append((layer.top[1], layer))

    def upsample(self, layer: Layer) -> None:
        self.need_bottom(layer, 2)
        if not self.masks:
            raise layer_error(layer, "upsampling with no pooling mask left to use")
        mask, pool = self.masks.pop()
        if layer.bottom[1] != mask:
            raise layer_error(layer, f"uses mask {layer.bottom[1]!r}; SegNet's decoder uses the innermost unused one, {mask!r} of {pool.name!r}")
        p = layer.params.get("upsample_param")
        scale = setting(p, "scale", 2)
        if scale != 2 or setting(p, "scale_h", 2) != 2 or setting(p, "scale_w", 2) != 2:
            raise layer_error(layer, f"upsampling scale {scale}; SegNet's is 2")
        if self.phase == "encoder":
            if self.block:
                raise layer_error(layer, "convolutions after the last pooling, before the decoder")
            self.phase = "decoder"
        else:
            self.net.decoders.append(self.block)
            self.block = []
        self.net.upsamples.append(layer)

    def dropout(self, layer: Layer) -> None:
        self.need_bottom(layer)
        net, block = self.net, self.block
        misplaced = ""
        if self.phase == "encoder":
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

    def softmax(self, layer: Layer) -> None:
        self.need_bottom(layer)
        self.ended = True


# The layer types the walk accepts, each with its handler (input and scoring layers are handled before: see _Walk.step).
_HANDLERS: dict[str, Callable[[_Walk, Layer], None]] = {
    "LRN": _Walk.lrn,
    "Convolution": _Walk.convolution,
    "BN": _Walk.batch_norm,
    "BatchNorm": _Walk.batch_norm,
    "Scale": _Walk.scale,
    "ReLU": _Walk.relu,
    "Pooling": _Walk.pooling,
    "Upsample": _Walk.upsample,
    "Dropout": _Walk.dropout,
    "Softmax": _Walk.softmax,
}


def _hw(p: Any, name: str, stem: str) -> list[int]:
    """A convolution setting's values: the repeated field plus its _h / _w forms where given."""
    return [*getattr(p, name), *(getattr(p, f"{stem}_{a}") for a in "hw" if p.HasField(f"{stem}_{a}"))]


def _single(values: Sequence[int], default: int, layer: Layer, what: str) -> int:
    vals = set(int(v) for v in values)
    if len(vals) > 1:
        raise layer_error(layer, f"{what} differs between height and width ({sorted(vals)}); SegNet's are square")
    return vals.pop() if vals else default


def _set_aside(net: Net, layer: Layer, misplaced: str) -> None:
    """A Dropout at no segbatch placement: refused (`misplaced` says why) where it samples at test time, else kept in `net.idle_drops`.

    Caffe's TEST phase passes such a layer through: it changes nothing at test time.
    """
    if _samples_at_test(layer):
        raise layer_error(layer, misplaced)
    net.idle_drops.append(layer)


def _samples_at_test(layer: Layer) -> bool:
    """Whether a Dropout layer drops at test time (the SegNet fork's sample_weights_test); else Caffe's TEST phase passes it through."""
    p = layer.params.get("dropout_param")
    return bool(p is not None and p.sample_weights_test)


def fit_arch(net: Net) -> tuple[str, float]:
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
        raise layer_error(first.layer, f"{first.cout} channels; not a SegNet width")
    return arch, width


def fit_placement(net: Net, arch: str) -> tuple[str, float, bool]:
    """The catalogue placement of the Dropout layers, their p, and whether they sample at test time."""
    placements = SEGNET_PLACEMENTS if arch == "segnet" else BASIC_PLACEMENTS
    if net.idle_drops:
        # Some Dropout layers sit where no segbatch placement drops, and none samples at test time (else walk refused
        # them): Caffe's TEST phase passes every one of them through, so the model is imported without dropout.
        sampled = [lay for _, lay, _ in net.drops if _samples_at_test(lay)]
        if sampled:
            raise layer_error(
                sampled[0], f"samples at test time (sample_weights_test) while {net.idle_drops[0].name!r} does not and sits at no segbatch placement"
            )
        return "none", 0.5, False
    if not net.drops:
        return "none", 0.5, False
    places = [place for place, _, _ in net.drops]
    params = [lay.params.get("dropout_param") for _, lay, _ in net.drops]
    ratios = {round(float(setting(p, "dropout_ratio", 0.5)), 6) for p in params}
    sampling = {bool(p is not None and p.sample_weights_test) for p in params}
    if len(ratios) > 1:
        raise layer_error(net.drops[0][1], f"dropout ratios differ between layers ({sorted(ratios)}); segbatch uses one p")
    if len(sampling) > 1:
        raise layer_error(net.drops[0][1], "some Dropout layers sample at test time (sample_weights_test) and some do not")
    # The block before the classifier is dec1; a lone drop there is the "classifier" placement (the same position).
    wanted = set(places)
    for name, where in placements.items():
        if set(where) == wanted or set(where) == (wanted - {"dec1"}) | {"classifier"} and "dec1" in wanted:
            if len(where) == len(places):
                return name, ratios.pop(), sampling.pop()
    known = "; ".join(f"{k}: {'/'.join(v)}" for k, v in placements.items() if v)
    raise layer_error(net.drops[0][1], f"dropout after {', '.join(places)} matches no segbatch placement ({known})")


def input_size(proto: Any) -> list[int]:
    """The (N, C, H, W) the definition fixes with `input_shape` / `input_dim`; [] where a data layer feeds it."""
    if len(proto.input_shape):
        return [int(d) for d in proto.input_shape[0].dim]
    if len(proto.input_dim) >= 4:
        return [int(d) for d in proto.input_dim[:4]]
    return []


def upsample_size(layer: Layer) -> tuple[int | None, int | None, int, int]:
    """How an Upsample sets its output: upsample_h / upsample_w where given (else None), pad_out_h / _w (0 or 1).

    As the SegNet fork's upsample_layer.cpp: a side without upsample_h / upsample_w is ``scale * in - pad_out``.
    """
    p = layer.params.get("upsample_param")
    ph = int(bool(p is not None and p.pad_out_h))
    pw = int(bool(p is not None and p.pad_out_w))
    return setting(p, "upsample_h", None), setting(p, "upsample_w", None), ph, pw


def check_input_shape(proto: Any, net: Net, in_channels: int) -> None:
    """Where the definition fixes the input size, each Upsample's output must be the size of the pooling input it undoes."""
    dims = input_size(proto)
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
        uh, uw, ph, pw = upsample_size(layer)
        got_h = uh if uh is not None else 2 * -(-h // 2) - ph
        got_w = uw if uw is not None else 2 * -(-w // 2) - pw
        if (got_h, got_w) != (h, w):
            raise layer_error(layer, f"upsamples to {got_h}x{got_w}, but the pooling it undoes took {h}x{w} (input {dims[2]}x{dims[3]})")
