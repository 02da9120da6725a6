"""SegNet and SegNet-Basic, with the dropout placements of Bayesian SegNet.

The network is an ordered plan of named steps (encode, pool, dropout, unpool,
decode, classify) over a small state: the feature map and the stack of pooling
indices. Keeping the plan explicit is what lets MC inference run the
deterministic steps before the first dropout once and only the stochastic rest
once per sample (see `segbatch.mc`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbatch.errors import InputError
from segbatch.model.catalog import ARCHS, BASIC_PLACEMENTS, PLACEMENTS, SEGNET_PLACEMENTS, width_problem

# Channel plans: encoder blocks top-down, decoder blocks bottom-up (dec5 first
# for SegNet). A decoder block drops its channel count on its last convolution.
_VGG16_ENCODER = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
_SEGNET_DECODER = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64,))


@dataclass
class State:
    """What flows between steps: the features and the pooling indices still to be used."""

    x: Tensor
    pooled: list[tuple[Tensor, torch.Size]] = field(default_factory=list)

    def select(self, rows: Tensor) -> State:
        """The state for a subset (or repetition) of the batch rows, e.g. one row per MC sample."""
        return State(
            self.x.index_select(0, rows),
            [(idx.index_select(0, rows), size) for idx, size in self.pooled],
        )


# Counter-based dropout masks. A keep bit is a pure function of (item seed, sample,
# dropout layer, element index), computed with integer tensor ops on the device the
# activations live on: nothing per element is drawn on the host or crosses PCIe, and
# CPU and CUDA give the same bits because integer arithmetic is exact (int64 add and
# multiply wrap modulo 2**64 on both; right shifts are made logical with a mask).
#
#   key(seed, sample, layer) = mix(mix(mix(seed + G) + (sample + 1) G) + (layer + 1) G)  (host, one per row and layer)
#   z_j = mix(key + (j + 1) G)                                                           (device, one per 4 elements)
#   element e keeps  <=>  int16 lane (e mod 4) of z_(e div 4), little-endian, >= T(p)
#
# mix is splitmix64's finaliser, G its odd increment; the element index e is the
# row-major position in the item's (C, H, W) activation (memory layout plays no
# part). A 64-bit z gives four 16-bit lanes; with T(p) = round(p * 2**16) - 2**15 a
# lane (uniform over the int16 range) keeps with probability 1 - round(p * 2**16) / 2**16,
# so p is used to the nearest 2**-16 (exactly for 0.5). Lanes are read little-endian, as
# every platform torch runs on stores them.

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
LANES = 4  # keep bits per 64-bit hash
MAX_SEED = (1 << 64) - 1


def _int64(v: int) -> int:
    """A 64-bit pattern as the signed value an int64 tensor holds."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _mix64(z: Tensor) -> Tensor:
    """splitmix64's finaliser, in place on an int64 tensor (a bijection of the 64-bit patterns)."""
    t = torch.empty_like(z)
    for shift, mult in ((30, _MIX1), (27, _MIX2), (31, None)):
        torch.bitwise_right_shift(z, shift, out=t)  # arithmetic on int64 ...
        t.bitwise_and_((1 << (64 - shift)) - 1)  # ... made logical
        z.bitwise_xor_(t)
        if mult is not None:
            z.mul_(_int64(mult))  # wraps modulo 2**64
    return z


def _mix64_np(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(_MIX1)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(_MIX2)
    return cast(np.ndarray, z ^ (z >> np.uint64(31)))


def dropout_keys(seeds: Sequence[int], samples: Sequence[int], layers: int) -> np.ndarray:
    """Per-row mask keys, shape (layers, len(samples), len(seeds)), uint64: key[l, s, i] for (seeds[i], samples[s], layer l)."""
    if any(not 0 <= s <= MAX_SEED for s in seeds):
        raise InputError(f"seeds must be integers in [0, 2**64), got {list(seeds)}")
    g = np.uint64(_GOLDEN)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as intended
        k = _mix64_np(np.array(seeds, dtype=np.uint64) + g)[None, :]
        k = _mix64_np(k + (np.array(samples, dtype=np.uint64)[:, None] + np.uint64(1)) * g)[None]
        return _mix64_np(k + (np.arange(layers, dtype=np.uint64)[:, None, None] + np.uint64(1)) * g)


def keep_threshold(p: float) -> int:
    """The int16 value a lane must reach to keep its element: keep probability 1 - round(p * 2**16) / 2**16."""
    return round(p * 65536) - 32768


def keep_mask(keys: Tensor, shape: Sequence[int], p: float) -> Tensor:
    """Keep bits (bool, (rows, *shape)) for rows with int64 `keys` (one per row), on the keys' device.

    Row r depends only on keys[r]: what else is in the batch plays no part.
    """
    n = 1
    for d in shape:
        n *= int(d)
    m = -(-n // LANES)
    z = torch.arange(1, m + 1, dtype=torch.int64, device=keys.device).mul_(_int64(_GOLDEN))
    z = _mix64(keys.reshape(-1, 1) + z)
    lanes = z.view(torch.int16)[:, :n]  # little-endian: lane k of z_j is bits [16k, 16k + 16)
    return lanes.ge(keep_threshold(p)).reshape(-1, *shape)


class MCDropout(nn.Module):
    """Element-wise dropout (as Caffe's), switchable to counter-based Monte-Carlo masks at test time.

    In training it is ordinary dropout. In eval mode it is the identity unless
    `segbatch.mc` hands it one mask key per batch row (`row_keys`, int64 on the
    activations' device, from `dropout_keys`): then each row's mask is
    `keep_mask` of its key, a function of (item seed, sample, this layer's
    index), never of what else is in the batch or of the device.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.row_keys: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return F.dropout(x, self.p, training=True)
        keys = self.row_keys
        if keys is None or self.p == 0.0:
            return x
        if keys.shape[0] != x.shape[0]:
            raise RuntimeError(f"MC dropout got {keys.shape[0]} mask keys for a batch of {x.shape[0]}")
        keep = keep_mask(keys.to(x.device), x.shape[1:], self.p)
        return x.mul(keep).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def dropout_layers(model: nn.Module) -> list[MCDropout]:
    """A model's MC dropout layers in module order: a layer's index in this list is the layer index of its masks."""
    return [m for m in model.modules() if isinstance(m, MCDropout)]


def _conv_bn(cin: int, cout: int, kernel: int, relu: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


class SegNet(nn.Module):
    """SegNet (VGG16 encoder, mirrored decoder) or SegNet-Basic, optionally Bayesian.

    Args:
        arch: "segnet" or "segnet-basic".
        num_classes: output classes.
        in_channels: input bands (3 for RGB, more for multispectral rasters).
        dropout: placement name from `PLACEMENTS` ("central" is the released Bayesian SegNet).
        p: dropout probability.
        width: multiplier on every hidden channel count (small CPU models).
        lrn: (local_size, alpha, beta, k) of a local response normalisation across
            channels applied to the normalised input, as Caffe's LRN layer (the
            released SegNet-Basic models have one); () for none.

    The input is a float tensor in [0, 1] of shape (N, in_channels, H, W), any
    H and W; the model normalises it with its `input_mean`/`input_std` buffers,
    which travel in the checkpoint. The output is (N, num_classes, H, W) logits.
    """

    input_mean: Tensor  # buffers (register_buffer), declared for the type checker
    input_std: Tensor

    def __init__(
        self,
        arch: str,
        num_classes: int,
        in_channels: int = 3,
        dropout: str = "central",
        p: float = 0.5,
        width: float = 1.0,
        lrn: Sequence[float] = (),
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise InputError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
        placements = SEGNET_PLACEMENTS if arch == "segnet" else BASIC_PLACEMENTS
        if dropout not in placements:
            raise InputError(f"unknown dropout placement {dropout!r}; choose one of {', '.join(PLACEMENTS)}")
        if num_classes < 1 or num_classes > 255:
            raise InputError(f"num_classes must be 1..255 (label 255 means nodata), got {num_classes}")
        if in_channels < 1:
            raise InputError(f"in_channels must be >= 1, got {in_channels}")
        problem = width_problem(width)
        if problem:
            raise InputError(problem)
        if not 0.0 <= p < 1.0:
            raise InputError(f"dropout p must be in [0, 1), got {p}")
        problem = lrn_problem(lrn)
        if problem:
            raise InputError(problem)
        self.lrn: tuple[float, ...] = tuple(float(v) for v in lrn)
        self.arch, self.num_classes, self.in_channels = arch, num_classes, in_channels
        self.dropout_placement, self.p, self.width = dropout, p, width

        def ch(c: int) -> int:
            return max(1, round(c * width))

        encoder: tuple[tuple[int, ...], ...]
        decoder: tuple[tuple[int, ...], ...]
        if arch == "segnet":
            encoder, decoder, kernel, dec_relu, cls_kernel = _VGG16_ENCODER, _SEGNET_DECODER, 3, True, 3
        else:
            encoder, decoder, kernel, dec_relu, cls_kernel = ((64,),) * 4, ((64,),) * 4, 7, False, 1
        depth = len(encoder)

        self.encoders = nn.ModuleDict()
        cin = in_channels
        for k, chans in enumerate(encoder, start=1):
            layers: list[nn.Module] = []
            for c in chans:
                layers += _conv_bn(cin, ch(c), kernel, relu=True)
                cin = ch(c)
            self.encoders[f"enc{k}"] = nn.Sequential(*layers)
        self.decoders = nn.ModuleDict()
        for k, chans in zip(range(depth, 0, -1), decoder):
            layers = []
            for c in chans:
                layers += _conv_bn(cin, ch(c), kernel, relu=dec_relu)
                cin = ch(c)
            self.decoders[f"dec{k}"] = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(cin, num_classes, cls_kernel, padding=cls_kernel // 2)
        self.drops = nn.ModuleDict({name: MCDropout(p) for name in placements[dropout]})
        self.register_buffer("input_mean", torch.full((in_channels,), 0.5))
        self.register_buffer("input_std", torch.full((in_channels,), 0.25))

        # The plan names steps and the submodule each runs ("" for pool/unpool):
        # plain data, so the model still pickles and deep-copies cleanly.
        plan: list[tuple[str, str]] = []
        for k in range(1, depth + 1):
            plan += [(f"enc{k}", f"encoders.enc{k}"), (f"pool{k}", "")]
            if f"pool{k}" in self.drops:
                plan.append((f"drop:pool{k}", f"drops.pool{k}"))
        for k in range(depth, 0, -1):
            plan += [(f"unpool{k}", ""), (f"dec{k}", f"decoders.dec{k}")]
            if f"dec{k}" in self.drops:
                plan.append((f"drop:dec{k}", f"drops.dec{k}"))
        if "classifier" in self.drops:
            plan.append(("drop:classifier", "drops.classifier"))
        plan.append(("classifier", "classifier"))
        self.plan = tuple(plan)

    @property
    def first_stochastic_step(self) -> int:
        """Index of the first dropout step in the plan (len(plan) when there is none)."""
        for i, (name, _) in enumerate(self.plan):
            if name.startswith("drop:"):
                return i
        return len(self.plan)

    def run_steps(self, state: State, start: int = 0, stop: int | None = None) -> State:
        """Run plan steps [start, stop) on `state`; forward() normalises, then runs the whole plan."""
        for name, module in self.plan[start:stop]:
            if module:
                state = State(self.get_submodule(module)(state.x), state.pooled)
            elif name.startswith("pool"):
                state = _pool(state)
            else:
                state = _unpool(state)
        return state

    def forward(self, x: Tensor) -> Tensor:
        return self.run_steps(State(self.normalise(x))).x

    def normalise(self, x: Tensor) -> Tensor:
        """Scale [0, 1] input with the checkpoint's per-band mean and std."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        mean = self.input_mean.view(1, -1, 1, 1).to(x.dtype)
        std = self.input_std.view(1, -1, 1, 1).to(x.dtype)
        x = (x - mean) / std
        if self.lrn:
            size, alpha, beta, k = self.lrn
            x = F.local_response_norm(x, int(size), alpha=alpha, beta=beta, k=k)
        return x


def lrn_problem(lrn: object) -> str | None:
    """Why `lrn` is not () or (local_size, alpha, beta, k) with an odd local_size >= 1, or None when it is."""
    if isinstance(lrn, (list, tuple)) and not lrn:
        return None
    if (
        not isinstance(lrn, (list, tuple))
        or len(lrn) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in lrn)
        or lrn[0] < 1
        or int(lrn[0]) != lrn[0]
        or int(lrn[0]) % 2 == 0
        or lrn[3] <= 0
    ):
        return f"lrn must be () or (local_size, alpha, beta, k) with an odd local_size and k > 0, got {lrn!r}"
    return None


def _pool(state: State) -> State:
    # ceil_mode: odd sides keep their last row/column (360 -> ... 45 -> 23).
    x, idx = F.max_pool2d(state.x, 2, 2, ceil_mode=True, return_indices=True)
    return State(x, [*state.pooled, (idx, state.x.shape[-2:])])


def _unpool(state: State) -> State:
    # The ATen operator F.max_unpool2d ends in, called directly: F's check of the size imports SymPy (0.5-0.7 s, each
    # actor's first unit); the size is the pooled map's own, so the check has nothing to catch.
    idx, size = state.pooled[-1]
    return State(torch.ops.aten.max_unpool2d(state.x, idx, list(size)), state.pooled[:-1])


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    dropout: str = "central",
    p: float = 0.5,
    width: float = 1.0,
    lrn: Sequence[float] = (),
) -> SegNet:
    """Build an untrained SegNet-family model (public API, see README.md, "Python API")."""
    return SegNet(arch, num_classes, in_channels=in_channels, dropout=dropout, p=p, width=width, lrn=lrn)


def count_parameters(model: nn.Module) -> int:
    """Learnable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())
