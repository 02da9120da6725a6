"""`segbatch calibrate`: one temperature for a model's logits under Monte-Carlo dropout, fitted on labelled images.

Every MC sample's logits are divided by T before its softmax, and T is the
one that minimises the negative log-likelihood of the truth under the mean
of those softmaxes: what the run's `probs` and `confidence` are. T > 1
softens an overconfident model, T < 1 sharpens an underconfident one.

The images are split once (a seeded draw): T is fitted on one part and the
NLL and ECE (15 bins, pixel-weighted, as the audit's) are reported before
and after on the other, held-out part. Memory is bounded: at most
`max_pixels` labelled pixels of each part are kept (an even share per image,
drawn at random), with their logits for every sample.

The result is recorded in the checkpoint it writes (`calibration` in its
provenance): the temperature, the data, the samples, and the figures; runs
with that checkpoint apply it (segbatch.mc), and stores and audits say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from segbatch.errors import InputError

T_RANGE = (0.05, 20.0)  # the search's bounds for T (on log T)


@dataclass
class Pixels:
    """Labelled pixels drawn from some images: every sample's logits (S, K, N) and the truth (N,)."""

    logits: Any  # torch.Tensor, float32
    truth: Any  # torch.Tensor, int64

    def mean_probs(self, temperature: float) -> Any:
        """(K, N) the mean over samples of softmax(logits / T)."""
        import torch

        return torch.softmax(self.logits / temperature, dim=1).mean(dim=0)

    def nll(self, temperature: float) -> float:
        import torch

        p = self.mean_probs(temperature).gather(0, self.truth[None])[0]
        return float(-torch.log(p.clamp_min(1e-12)).mean())

    def ece(self, temperature: float) -> float:
        """The audit's ECE (audit.metrics): pixel-weighted gap between confidence (the winning class's mean probability) and
        accuracy, 15 bins."""
        from segbatch.audit.metrics import HonestyAccumulator

        conf, pred = self.mean_probs(temperature).max(dim=0)
        honesty = HonestyAccumulator(max_uncertainty=1.0)
        honesty.update(np.zeros(conf.numel()), conf.numpy(), pred.numpy() == self.truth.numpy())  # the uncertainty plays no part here
        return float(honesty.ece() or 0.0)


def fit_temperature(pixels: Pixels, tolerance: float = 1e-4) -> float:
    """The T in T_RANGE minimising the NLL: a golden-section search on log T (the NLL is unimodal in it in practice)."""
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = pixels.nll(math.exp(a)), pixels.nll(math.exp(b))
    while hi - lo > tolerance:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = pixels.nll(math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = pixels.nll(math.exp(b))
    return math.exp((lo + hi) / 2)


def split(count: int, held_out: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the images to fit on and to hold out (at least one of each), a seeded draw."""
    if count < 2:
        raise InputError(f"calibration needs at least 2 labelled images (one to fit on, one to check on), got {count}")
    held = min(count - 1, max(1, round(count * held_out)))
    order = np.random.default_rng(seed).permutation(count)
    return sorted(int(i) for i in order[held:]), sorted(int(i) for i in order[:held])


def draw_pixels(model: Any, k: int, pairs: Sequence[tuple[Path, Path]], samples: int, max_pixels: int, ignore_index: int, seed: int, progress: Any) -> Pixels:
    """Up to `max_pixels` labelled pixels of `pairs` (an even share per image, at random) with each sample's logits."""
    import torch

    from segbatch.mc import sample_logits
    from segbatch.sources.images import read_image, read_mask, to_unit_float

    share = max(1, max_pixels // max(1, len(pairs)))
    rng = np.random.default_rng(seed)
    logits, truth = [], []
    for index, (img, msk) in enumerate(pairs):
        y = read_mask(msk).astype(np.int64)
        x = torch.from_numpy(to_unit_float(read_image(img)))[None]
        if x.shape[-2:] != y.shape:
            raise InputError(f"{msk}: mask {y.shape[1]}x{y.shape[0]} does not match its image {x.shape[-1]}x{x.shape[-2]}")
        labelled = np.flatnonzero((y.ravel() >= 0) & (y.ravel() < k) & (y.ravel() != ignore_index))
        if labelled.size:
            keep = torch.from_numpy(np.sort(rng.choice(labelled, size=min(share, labelled.size), replace=False)))
            z = sample_logits(model, x, samples, seed=index)[:, 0]  # (S, K, H, W)
            logits.append(z.flatten(2)[:, :, keep])
            truth.append(torch.from_numpy(y.ravel())[keep])
        progress(1)
    if not truth:
        raise InputError("no labelled pixels (mask values below the model's class count) in the calibration images")
    return Pixels(torch.cat(logits, dim=2), torch.cat(truth))


@dataclass(frozen=True)
class Calibration:
    """What `segbatch calibrate` found, as the checkpoint records it."""

    temperature: float
    samples: int
    images: str
    masks: str
    fit_images: int
    held_out_images: int
    fit_pixels: int
    held_out_pixels: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float

    def record(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(
    model_path: Path | str,
    images: Path,
    masks: Path,
    out: Path,
    samples: int = 8,
    held_out: float = 0.2,
    max_pixels: int = 200_000,
    ignore_index: int = 255,
    seed: int = 0,
    quiet: bool = False,
) -> Calibration:
    """Fit the temperature of `model_path` on `images`/`masks`, check it on a held-out part, write the checkpoint `out`."""
    import torch

    from segbatch.model.checkpoint import load_checkpoint, save_checkpoint
    from segbatch.progress import progress_bar
    from segbatch.train import pair_images_and_masks

    if not 0 < held_out < 1:
        raise InputError(f"--held-out must be between 0 and 1, got {held_out}")
    if samples < 1:
        raise InputError(f"--samples must be >= 1: the temperature is fitted under MC dropout, got {samples}")
    ckpt = load_checkpoint(model_path)
    pairs = pair_images_and_masks(images, masks)
    fit_ids, check_ids = split(len(pairs), held_out, seed)
    torch.manual_seed(seed)
    with progress_bar(len(pairs), "calibrating", "image", quiet) as bar:
        k = ckpt.spec.num_classes
        fit = draw_pixels(ckpt.model, k, [pairs[i] for i in fit_ids], samples, max_pixels, ignore_index, seed, bar.update)
        check = draw_pixels(ckpt.model, k, [pairs[i] for i in check_ids], samples, max_pixels, ignore_index, seed + 1, bar.update)
    t = fit_temperature(fit)
    found = Calibration(
        temperature=t,
        samples=samples,
        images=str(images),
        masks=str(masks),
        fit_images=len(fit_ids),
        held_out_images=len(check_ids),
        fit_pixels=int(fit.truth.numel()),
        held_out_pixels=int(check.truth.numel()),
        nll_before=check.nll(ckpt.calibration_temperature),
        nll_after=check.nll(t),
        ece_before=check.ece(ckpt.calibration_temperature),
        ece_after=check.ece(t),
    )
    spec = replace(ckpt.spec, extra={**ckpt.spec.extra, "calibration": found.record()})
    save_checkpoint(ckpt.model, out, spec)  # atomic
    return found
