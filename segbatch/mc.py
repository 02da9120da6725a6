"""Monte-Carlo dropout inference (Bayesian SegNet) with seeded, batch-independent masks.

Prediction is the argmax of the mean softmax over N stochastic passes; the
uncertainty is the per-pixel variance of the softmax samples averaged over
classes (as the paper and its released `test_bayesian_segnet.py`). The layers
before the first dropout are deterministic, so they run once per image and only
the rest runs once per sample: the same numbers as N full passes with the same
masks, for less work.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import cast

import numpy as np
import torch
from torch import Tensor

from segbatch.errors import InputError
from segbatch.model.segnet import MCDropout, SegNet, State

DEFAULT_MAX_ROWS = 16


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys, e.g. (run seed, unit id, item index) or (item seed, sample).

    Hashing the keys (rather than adding or offsetting them) keeps nearby keys'
    random streams unrelated.
    """
    if any(k < 0 for k in keys):
        raise InputError(f"seeds must be non-negative integers, got {keys}")
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


@contextmanager
def _row_masks(model: SegNet, generators: Sequence[torch.Generator]) -> Iterator[None]:
    """Give every dropout layer one generator per batch row for the duration of a pass."""
    drops = [m for m in model.modules() if isinstance(m, MCDropout)]
    for m in drops:
        m.row_generators = generators
    try:
        yield
    finally:
        for m in drops:
            m.row_generators = None


def _generator(item_seed: int, sample: int) -> torch.Generator:
    """The random stream of one (item, sample) pair: its dropout masks, layer after layer (CPU, so any device agrees)."""
    g = torch.Generator()
    g.manual_seed(derive_seed(item_seed, sample))
    return g


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
    max_rows: int = DEFAULT_MAX_ROWS,
    share_prefix: bool = True,
    precision: str = "fp32",
) -> dict[str, Tensor]:
    """Predict with N Monte-Carlo dropout samples.

    Args:
        model: a SegNet-family model (BatchNorm is put in eval mode, dropout is
            driven by seeded masks; the model's mode is restored afterwards).
        x: float input in [0, 1], shape (B, C, H, W).
        samples: number of MC samples; 0 runs once with dropout off (the
            paper's "weight averaging").
        seed: one seed for every item, or one per item. An item's masks depend
            only on its seed and the sample index, so the same image with the
            same seed gives the same result whatever else is in its batch.
        max_rows: most rows (item x sample pairs) sent through the stochastic
            part at once; bounds memory for large `samples`.
        share_prefix: run the layers before the first dropout once per item
            (False runs every sample through the whole network: the reference).
        precision: "fp32", or "fp16" / "bf16" to run the network under autocast
            (convolutions in half precision on GPUs' tensor cores); softmax,
            its mean and variance stay float32 either way.

    Returns:
        ``probs`` (B, K, H, W) mean softmax, ``labels`` (B, H, W) uint8 argmax,
        ``entropy`` (B, H, W) predictive entropy; with samples >= 1 also
        ``uncertainty`` (B, H, W) mean over classes of the softmax variance and
        ``mutual_information`` (B, H, W) (BALD). All float32 except labels.
    """
    if samples < 0:
        raise InputError(f"samples must be >= 0, got {samples}")
    if max_rows < 1:
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
                probs = torch.softmax(model(x).float(), dim=1)
                return {"probs": probs, "labels": probs.argmax(1).to(torch.uint8), "entropy": class_entropy(probs)}
            return _mc(model, x, samples, item_seeds, max_rows, share_prefix)
    finally:
        model.train(was_training)


def _mc(model: SegNet, x: Tensor, samples: int, item_seeds: list[int], max_rows: int, share_prefix: bool) -> dict[str, Tensor]:
    # Each item runs on its own (its prefix, then its samples in chunks of the same
    # sizes whatever the batch): kernels may pick a different algorithm for another
    # batch size, and that must not change an item's bits.
    parts = [_mc_item(model, x[i : i + 1], samples, item_seeds[i], max_rows, share_prefix) for i in range(x.shape[0])]
    mean = torch.cat([p[0] for p in parts])
    var = torch.cat([p[1] for p in parts])
    sample_entropy = torch.cat([p[2] for p in parts])
    entropy = class_entropy(mean)
    return {
        "probs": mean,
        "labels": mean.argmax(1).to(torch.uint8),
        "uncertainty": var.mean(dim=1),
        "entropy": entropy,
        "mutual_information": (entropy - sample_entropy).clamp_min(0.0),
    }


def _mc_item(model: SegNet, x: Tensor, samples: int, seed: int, max_rows: int, share_prefix: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Mean softmax, softmax variance and mean per-sample entropy for one item (batch of 1)."""
    start = model.first_stochastic_step if share_prefix else 0
    prefix = model.run_steps(State(model.normalise(x)), 0, start)
    mean = m2 = sample_entropy = None
    for lo in range(0, samples, max_rows):
        sample_ids = range(lo, min(samples, lo + max_rows))
        gens = [_generator(seed, s) for s in sample_ids]
        with _row_masks(model, gens):
            logits = model.run_steps(prefix.select(torch.zeros(len(gens), dtype=torch.long, device=x.device)), start).x
        p = torch.softmax(logits.float(), dim=1)
        ent = class_entropy(p).sum(dim=0, keepdim=True)
        sample_entropy = ent if sample_entropy is None else sample_entropy + ent
        # Welford, one sample at a time in sample order: numerically stable, and
        # exactly zero variance when all samples agree.
        for r, s in enumerate(sample_ids):
            if mean is None or m2 is None:
                mean, m2 = p[r : r + 1].clone(), torch.zeros_like(p[r : r + 1])
                continue
            delta = p[r : r + 1] - mean
            mean += delta / (s + 1)
            m2 += delta * (p[r : r + 1] - mean)
    assert mean is not None and m2 is not None and sample_entropy is not None
    return mean, m2 / samples, sample_entropy / samples
