"""Monte-Carlo dropout inference (Bayesian SegNet), batched, with counter-based masks.

Prediction is the argmax of the mean softmax over N stochastic passes; the
uncertainty is the per-pixel variance of the softmax samples averaged over
classes (as the paper and its released `test_bayesian_segnet.py`).

How a batch runs: the layers before the first dropout are deterministic, so
they run once for the whole batch; the rest runs once per (sample, item) row,
in sub-batches of whole rows bounded by a memory budget (`sub_batches`).
Statistics accumulate by Welford's update in sample order, vectorised over the
items and pixels of a sub-batch, so they do not depend on how rows are split
and are exactly zero where all samples agree.

Masks: every dropout element's keep bit is a pure function of (item seed,
sample, dropout layer, element index), a counter-based hash computed on the
activations' device (`segbatch.model.segnet.keep_mask`). An item's masks never
depend on its batch, nor on the device.

What fixes the bits of a result: the checkpoint, the items' seeds, the batch
composition (the items, their order, the input shape), samples, precision and
share_prefix, the device type (CPU, or the GPU model), and the versions of
torch and its kernels. The sub-batch split is a function of exactly those: a
per-row activation estimate against a budget that is a fixed constant on CPU
and a fixed fraction of the GPU's *total* memory on CUDA (never its free
memory, which changes from call to call); an explicit `max_rows` replaces the
budget and is then part of what fixes the bits. Kernels may pick another
algorithm for another batch size, so an item's bits may change (by rounding)
with the batch it is in; its masks do not.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from functools import cache
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbatch.errors import InputError
from segbatch.model.segnet import MCDropout, SegNet, State, dropout_keys, dropout_layers

CPU_BUDGET = 512 << 20  # bytes of activations for the stochastic rows of one sub-batch, on CPU (and any non-CUDA device): an actor per core stays small
CUDA_BUDGET_FRACTION = 0.25  # on CUDA, that fraction of the GPU's total memory


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys, e.g. (run seed, unit id, item index) or (item seed, sample).

    Hashing the keys (rather than adding or offsetting them) keeps nearby keys'
    random streams unrelated.
    """
    if any(k < 0 for k in keys):
        raise InputError(f"seeds must be non-negative integers, got {keys}")
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


@contextmanager
def _masks(drops: Sequence[MCDropout], keys: Tensor) -> Iterator[None]:
    """Give dropout layer l the mask keys keys[l] (one per batch row) for the duration of a pass."""
    for m, k in zip(drops, keys):
        m.row_keys = k
    try:
        yield
    finally:
        for m in drops:
            m.row_keys = None


def memory_budget(device: torch.device, share: float = 1.0) -> int:
    """Bytes the stochastic rows of one sub-batch may take: fixed per device type (never the free memory); on a GPU,
    `share` of the usual fraction when actors share it (`--actors-per-gpu`: each gets its part, fixed before the run)."""
    if device.type == "cuda":
        return int(_total_memory(torch.cuda.current_device() if device.index is None else device.index) * CUDA_BUDGET_FRACTION * share)
    return CPU_BUDGET


@cache
def _total_memory(index: int) -> int:
    return int(torch.cuda.mem_get_info(index)[1])


def row_bytes(model: SegNet, prefix: State, start: int, elem: int) -> int:
    """Estimated peak bytes of one row through plan steps [start, end) from `prefix` (activations of `elem` bytes).

    Walks the plan over shapes only: pooling indices held (int64), and at each
    step its input and outputs (a convolution's and its BatchNorm's; a dropout's
    hash words); the float32 softmax and statistics at the end; plus half again
    for what the walk does not see.
    """
    c, h, w = (int(v) for v in prefix.x.shape[1:])
    stack = [(int(idx[0].numel()) * 8, (int(size[0]), int(size[1]))) for idx, size in prefix.pooled]
    held = sum(b for b, _ in stack)
    peak = 0
    for name, module in model.plan[start:]:
        n = c * h * w
        if not module:
            if name.startswith("pool"):
                size = (h, w)
                h, w = -(-h // 2), -(-w // 2)
                stack.append((c * h * w * 8, size))
                held += c * h * w * 8
            else:
                b, (h, w) = stack.pop()
                held -= b
            live = held + (n + c * h * w) * elem
        else:
            sub = model.get_submodule(module)
            if isinstance(sub, MCDropout):
                live = held + n * (2 * elem + 5)  # input, output, two int64 words per 4 elements, bool keep bits
            else:
                live = held + 2 * n * elem
                for conv in (m for m in sub.modules() if isinstance(m, nn.Conv2d)):
                    out = conv.out_channels * h * w
                    live = max(live, held + (c * h * w + 2 * out) * elem)  # input, convolution, BatchNorm
                    c = conv.out_channels
        peak = max(peak, live)
    peak = max(peak, c * h * w * (elem + 16))  # logits, float32 softmax and entropy terms
    return peak * 3 // 2  # kernels' workspaces, allocator slack (measured on CPU: 1.2x the walk for full SegNet)


def sub_batches(batch: int, samples: int, rows: int) -> list[tuple[range, range]]:
    """(samples, items) of each sub-batch, in order: at most `rows` rows each, sizes as even as possible.

    With room for the whole batch, a sub-batch is a run of consecutive samples
    of every item; otherwise one sample of a run of consecutive items.
    """
    if rows >= batch:
        per = min(samples, rows // batch)
        return [(s, range(batch)) for s in _even(samples, -(-samples // per))]
    items = _even(batch, -(-batch // rows))
    return [(range(s, s + 1), i) for s in range(samples) for i in items]


def _even(total: int, parts: int) -> list[range]:
    q, extra = divmod(total, parts)
    out, lo = [], 0
    for k in range(parts):
        hi = lo + q + (k < extra)
        out.append(range(lo, hi))
        lo = hi
    return out


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """A small host tensor on `device`; through pinned memory on CUDA, so the copy does not wait for the stream."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def class_entropy(p: Tensor) -> Tensor:
    """Entropy over the class axis (1), in nats; 0 log 0 = 0."""
    return cast(Tensor, -torch.special.xlogy(p, p).sum(dim=1))


PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def mc_predict(
    model: SegNet,
    x: Tensor,
    samples: int = 8,
    seed: int | Sequence[int] = 0,
    *,
    max_rows: int | None = None,
    share_prefix: bool = True,
    precision: str = "fp32",
    temperature: float = 1.0,
    memory_share: float = 1.0,
) -> dict[str, Tensor]:
    """Predict with N Monte-Carlo dropout samples.

    Args:
        model: a SegNet-family model (BatchNorm is put in eval mode, dropout is
            driven by counter-based masks; the model's mode is restored afterwards).
        x: float input in [0, 1], shape (B, C, H, W), on the model's device.
        samples: number of MC samples; 0 runs once with dropout off (the
            paper's "weight averaging").
        seed: one seed for every item, or one per item, each in [0, 2**64).
            An item's dropout masks depend only on its seed and the sample
            index (and the layer and element), never on the rest of the batch.
        max_rows: most rows (sample x item pairs) sent through the stochastic
            part at once. By default the device's budget sets it (see the
            module docstring); given, it is part of what fixes the bits.
        share_prefix: run the layers before the first dropout once per batch
            (False runs every row through the whole network: the reference).
        precision: "fp32", or "fp16" / "bf16" to run the network under autocast
            (convolutions in half precision on GPUs' tensor cores); softmax,
            its mean and variance stay float32 either way.
        temperature: every sample's logits are divided by it before the
            softmax (`segbatch calibrate`'s; 1 leaves them, and the bits, as
            they are).
        memory_share: on a GPU, the share of the sub-batch budget this caller
            has (actors sharing the card); it sets the split, so it is fixed
            for a run (`segbatch.engine.sharing.memory_share`).

    The bits of the result are fixed by the checkpoint, the seeds, the batch
    composition (items, order, shape), samples, precision, share_prefix, the
    device type (CPU, or the GPU model), max_rows when given, and the software
    versions: the same batch gives the same bits on any actor, retry or resume.
    The same item in another batch has the same masks; its numbers may differ
    by rounding (kernels may choose another algorithm for another batch size).

    Returns:
        ``probs`` (B, K, H, W) mean softmax, ``labels`` (B, H, W) uint8 argmax,
        ``entropy`` (B, H, W) predictive entropy; with samples >= 1 also
        ``uncertainty`` (B, H, W) mean over classes of the softmax variance and
        ``mutual_information`` (B, H, W) (BALD). All float32 except labels.
    """
    if samples < 0:
        raise InputError(f"samples must be >= 0, got {samples}")
    if max_rows is not None and max_rows < 1:
        raise InputError(f"max_rows must be >= 1, got {max_rows}")
    batch = x.shape[0]
    item_seeds = [seed] * batch if isinstance(seed, int) else list(seed)
    if len(item_seeds) != batch:
        raise InputError(f"got {len(item_seeds)} seeds for a batch of {batch}")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    cast = torch.autocast(device_type=x.device.type, dtype=dtype) if dtype is not None else nullcontext()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), cast:
            if samples == 0:
                probs = torch.softmax(_tempered(model(x).float(), temperature), dim=1)
                return {"probs": probs, "labels": probs.argmax(1).to(torch.uint8), "entropy": class_entropy(probs)}
            return _mc(model, x, samples, item_seeds, max_rows, share_prefix, 4 if dtype is None else 2, temperature, memory_share)
    finally:
        model.train(was_training)


def _tempered(logits: Tensor, temperature: float) -> Tensor:
    return logits if temperature == 1.0 else logits / temperature


def sample_logits(model: SegNet, x: Tensor, samples: int, seed: int = 0) -> Tensor:
    """(S, B, K, H, W) float32: each MC dropout sample's logits (the masks mc_predict draws for `seed`), untempered; what
    `segbatch calibrate` fits its temperature on. `samples` 0: the one pass with dropout off, as (1, B, K, H, W)."""
    batch = x.shape[0]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if samples == 0:
                return cast(Tensor, model(x).float()[None])
            start = model.first_stochastic_step
            prefix = model.run_steps(State(model.normalise(x)), 0, start)
            drops = dropout_layers(model)
            keys = _to_device(torch.from_numpy(dropout_keys([seed] * batch, range(samples), len(drops)).view(np.int64)), x.device)
            out = []
            for s in range(samples):
                with _masks(drops, keys[:, s, :].reshape(len(drops), batch)):
                    out.append(model.run_steps(prefix.select(torch.arange(batch, device=x.device)), start).x.float())
            return torch.stack(out)
    finally:
        model.train(was_training)


def _mc(
    model: SegNet,
    x: Tensor,
    samples: int,
    item_seeds: list[int],
    max_rows: int | None,
    share_prefix: bool,
    elem: int,
    temperature: float = 1.0,
    memory_share: float = 1.0,
) -> dict[str, Tensor]:
    batch = x.shape[0]
    start = model.first_stochastic_step if share_prefix else 0
    prefix = model.run_steps(State(model.normalise(x)), 0, start)  # once for the whole batch
    channels_last = prefix.x.ndim == 4 and not prefix.x.is_contiguous() and prefix.x.is_contiguous(memory_format=torch.channels_last)
    drops = dropout_layers(model)
    keys = _to_device(torch.from_numpy(dropout_keys(item_seeds, range(samples), len(drops)).view(np.int64)), x.device)
    rows = max_rows if max_rows is not None else max(1, memory_budget(x.device, memory_share) // row_bytes(model, prefix, start, elem))
    mean = m2 = entropy_sum = torch.empty(0)
    for sample_ids, items in sub_batches(batch, samples, rows):
        # rows sample-major: (sample s0, items...), (sample s0 + 1, items...), ...
        state = prefix.select(torch.arange(items.start, items.stop, device=x.device).repeat(len(sample_ids)))
        if channels_last:
            state.x = state.x.contiguous(memory_format=torch.channels_last)
        row_keys = keys[:, sample_ids.start : sample_ids.stop, items.start : items.stop].reshape(len(drops), len(sample_ids) * len(items))
        with _masks(drops, row_keys):
            logits = model.run_steps(state, start).x
        p = torch.softmax(_tempered(logits.float(), temperature), dim=1)
        ent = class_entropy(p).view(len(sample_ids), len(items), *p.shape[2:])
        fmt = torch.channels_last if not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        p = p.view(len(sample_ids), len(items), *p.shape[1:])
        if not mean.numel():
            mean, m2 = (torch.empty((batch, *p.shape[2:]), dtype=p.dtype, device=p.device, memory_format=fmt) for _ in range(2))
            entropy_sum = ent.new_empty((batch, *ent.shape[2:]))
        at = slice(items.start, items.stop)
        # Welford, one sample at a time in sample order (vectorised over items and pixels):
        # numerically stable, exactly zero variance when all samples agree, and the
        # same bits however the rows are split into sub-batches.
        for r, s in enumerate(sample_ids):
            if s == 0:
                mean[at], entropy_sum[at] = p[r], ent[r]
                m2[at] = 0.0
                continue
            delta = p[r] - mean[at]
            mean[at] += delta / (s + 1)
            m2[at] += delta * (p[r] - mean[at])
            entropy_sum[at] += ent[r]
    entropy = class_entropy(mean)
    return {
        "probs": mean,
        "labels": mean.argmax(1).to(torch.uint8),
        "uncertainty": (m2 / samples).mean(dim=1),
        "entropy": entropy,
        "mutual_information": (entropy - entropy_sum / samples).clamp_min(0.0),
    }


def predict_outputs(
    model: SegNet,
    x: Tensor,
    seeds: list[int],
    samples: int,
    resize: tuple[int, int] | None,
    outputs: tuple[str, ...],
    float_dtype: str,
    precision: str = "fp32",
    temperature: float = 1.0,
    memory_share: float = 1.0,
) -> dict[str, Tensor]:
    """The store's arrays for a batch `x` (B, C, H, W floats in [0, 1]), as tensors on its device, one seed per item.

    `labels` always; then each of `outputs` (probs, uncertainty, entropy,
    confidence, mutual_information) that the run writes, cast to `float_dtype`
    on the device (less to copy back). With `resize` the model runs at that
    size and its outputs come back to (H, W): probabilities bilinear, then
    argmax; entropy from the resampled probabilities; variance and the mean
    per-sample entropy (for MI) bilinear.
    """
    size = x.shape[-2:]
    if resize is not None:
        x = F.interpolate(x, size=resize, mode="bilinear", antialias=True, align_corners=False)
    if x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    res = mc_predict(model, x, samples=samples, seed=seeds, precision=precision, temperature=temperature, memory_share=memory_share)
    if resize is not None:

        def up(v: Tensor) -> Tensor:
            return F.interpolate(v, size=size, mode="bilinear", align_corners=False)

        probs = up(res["probs"])
        entropy = class_entropy(probs)
        resampled = {"probs": probs, "labels": probs.argmax(1).to(torch.uint8), "entropy": entropy}
        if "uncertainty" in res:
            resampled["uncertainty"] = up(res["uncertainty"][:, None])[:, 0]
            expected = up((res["entropy"] - res["mutual_information"])[:, None])[:, 0]
            resampled["mutual_information"] = (entropy - expected).clamp_min(0.0)
        res = resampled
    dtype = getattr(torch, float_dtype)
    out = {"labels": res["labels"]}
    for name in outputs:
        if name == "probs":
            out[name] = res["probs"].permute(0, 2, 3, 1).to(dtype).contiguous()
        elif name == "confidence":
            out[name] = res["probs"].amax(1).to(dtype)
        elif name in res and name != "labels":
            out[name] = res[name].to(dtype)
    return out
