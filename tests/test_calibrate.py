"""Temperature scaling under MC dropout: the fit, the figures it reports, and what a temperature does to a prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segbatch.calibrate import Pixels, fit_temperature, split
from segbatch.mc import mc_predict, sample_logits
from tests.helpers.models import tiny_segnet_basic


def _overconfident(scale: float, n: int = 20_000, k: int = 5, samples: int = 1) -> Pixels:
    """Truth drawn from softmax(g); the model says `scale` * g (plus a little noise per sample): T = scale undoes it."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(k, n, generator=gen) * 1.5
    truth = torch.multinomial(torch.softmax(g, dim=0).T, 1, generator=gen)[:, 0]
    logits = torch.stack([scale * g + 0.01 * torch.randn(k, n, generator=gen) for _ in range(samples)])
    return Pixels(logits, truth)


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_the_fitted_temperature_undoes_a_known_over_or_underconfidence(scale):
    pixels = _overconfident(scale, samples=4)
    t = fit_temperature(pixels)
    assert t == pytest.approx(scale, rel=0.1)
    assert pixels.nll(t) < pixels.nll(1.0) and pixels.ece(t) < pixels.ece(1.0)


def test_a_calibrated_model_keeps_its_temperature_near_one_and_its_ece_low():
    pixels = _overconfident(1.0)
    assert fit_temperature(pixels) == pytest.approx(1.0, rel=0.1)
    assert pixels.ece(1.0) < 0.02


def test_the_held_out_images_are_a_seeded_share_never_all_or_none():
    fit, held = split(10, 0.2, seed=3)
    assert len(held) == 2 and sorted(fit + held) == list(range(10))
    assert split(10, 0.2, seed=3) == (fit, held)
    assert len(split(2, 0.01, 0)[1]) == 1 and len(split(2, 0.99, 0)[0]) == 1


def test_a_temperature_softens_the_probabilities_and_keeps_the_labels_of_one_pass():
    model = tiny_segnet_basic(11)
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    plain = mc_predict(model, x, samples=0)
    soft = mc_predict(model, x, samples=0, temperature=2.0)
    assert torch.equal(plain["labels"], soft["labels"])  # one softmax: the argmax does not move for any T > 0
    assert bool((soft["probs"].amax(1) <= plain["probs"].amax(1) + 1e-6).all()) and bool((soft["entropy"] >= plain["entropy"] - 1e-6).all())
    same = mc_predict(model, x, samples=3, seed=5, temperature=1.0)
    assert all(torch.equal(same[k], v) for k, v in mc_predict(model, x, samples=3, seed=5).items())  # T = 1: the same bits


def test_sample_logits_are_the_samples_mc_predict_averages():
    model = tiny_segnet_basic(11)
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    z = sample_logits(model, x, 3, seed=7)
    assert z.shape == (3, 1, 11, 32, 48)
    mean = torch.softmax(z, dim=2).mean(dim=0)
    got = mc_predict(model, x, samples=3, seed=7)["probs"]
    assert np.allclose(mean.numpy(), got.numpy(), atol=1e-5)
