import pytest
import torch
from models import tiny_segnet_basic

from segbatch.errors import InputError
from segbatch.mc import derive_seed, mc_predict
from segbatch.model import build_model


@pytest.fixture(scope="module")
def model():
    return tiny_segnet_basic(5)


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 29, 41, generator=torch.Generator().manual_seed(1))


def test_outputs_are_probabilities_and_sane_statistics(model, images):
    out = mc_predict(model, images, samples=6, seed=3)
    assert out["probs"].shape == (3, 5, 29, 41)
    assert torch.allclose(out["probs"].sum(1), torch.ones(3, 29, 41), atol=1e-5)
    assert out["labels"].dtype == torch.uint8
    assert torch.equal(out["labels"], out["probs"].argmax(1).to(torch.uint8))
    assert (out["uncertainty"] >= 0).all() and (out["uncertainty"] > 0).any()
    assert (out["entropy"] >= 0).all() and (out["entropy"] <= torch.log(torch.tensor(5.0)) + 1e-5).all()
    assert (out["mutual_information"] >= 0).all()
    assert (out["mutual_information"] <= out["entropy"] + 1e-6).all()


def test_uncertainty_matches_the_paper_definition(model, images):
    """Variance of the softmax samples (population), averaged over classes; checked against the samples themselves."""
    out = mc_predict(model, images[:1], samples=5, seed=11, share_prefix=False)
    # rebuild the samples one at a time: sample s of an item uses the masks of (seed, s)
    from segbatch.mc import _generator, _row_masks
    from segbatch.model.segnet import State

    probs = []
    for s in range(5):
        with torch.no_grad(), _row_masks(model, [_generator(11, s)]):
            probs.append(torch.softmax(model.run_steps(State(model.normalise(images[:1]))).x, 1))
    stack = torch.stack(probs)
    assert torch.allclose(out["probs"], stack.mean(0), atol=1e-6)
    assert torch.allclose(out["uncertainty"], stack.var(0, unbiased=False).mean(1), atol=1e-6)
    entropy = -(stack.mean(0) * stack.mean(0).log()).sum(1)
    expected_sample_entropy = -(stack * stack.log()).sum(2).mean(0)
    assert torch.allclose(out["entropy"], entropy, atol=1e-5)
    assert torch.allclose(out["mutual_information"], (entropy - expected_sample_entropy).clamp_min(0), atol=1e-5)


def test_uncertainty_is_zero_where_every_sample_agrees(images):
    m = build_model("segnet-basic", 4, width=0.25, dropout="none").eval()  # no dropout: every sample identical
    out = mc_predict(m, images, samples=4, seed=0)
    assert torch.count_nonzero(out["uncertainty"]) == 0
    assert torch.count_nonzero(out["mutual_information"]) == 0


def test_shared_prefix_equals_full_passes_with_the_same_masks(model, images):
    shared = mc_predict(model, images, samples=5, seed=[4, 5, 6], share_prefix=True)
    full = mc_predict(model, images, samples=5, seed=[4, 5, 6], share_prefix=False)
    for key in shared:
        assert torch.allclose(shared[key].float(), full[key].float(), atol=1e-6), key


def test_same_seed_same_image_is_bitwise_equal_whatever_the_batch(model, images):
    alone = mc_predict(model, images[1:2], samples=5, seed=42)
    other = torch.rand(4, 3, 29, 41)
    mixed = mc_predict(model, torch.cat([other[:2], images[1:2], other[2:]]), samples=5, seed=[1, 2, 42, 3, 4])
    for key in alone:
        assert torch.equal(alone[key], mixed[key][2:3]), key


def test_seed_changes_the_masks(model, images):
    a = mc_predict(model, images[:1], samples=4, seed=1)
    b = mc_predict(model, images[:1], samples=4, seed=2)
    assert not torch.equal(a["uncertainty"], b["uncertainty"])


def test_sub_batches_bound_rows_without_changing_the_answer(model, images):
    big = mc_predict(model, images[:1], samples=7, seed=9, max_rows=16)
    small = mc_predict(model, images[:1], samples=7, seed=9, max_rows=2)
    for key in big:
        assert torch.allclose(big[key].float(), small[key].float(), atol=1e-6), key


def test_zero_samples_is_one_deterministic_pass(model, images):
    out = mc_predict(model, images, samples=0)
    assert set(out) == {"probs", "labels", "entropy"}
    with torch.no_grad():
        expected = torch.softmax(model(images), 1)
    assert torch.allclose(out["probs"], expected, atol=1e-6)


def test_model_mode_is_restored(model, images):
    model.train()
    mc_predict(model, images[:1], samples=2)
    assert model.training
    model.eval()


def test_bad_arguments(model, images):
    with pytest.raises(InputError):
        mc_predict(model, images, samples=-1)
    with pytest.raises(InputError):
        mc_predict(model, images, samples=2, seed=[1, 2])


def test_derive_seed_is_stable_and_spreads_nearby_keys():
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    assert derive_seed(1, 2, 3) != derive_seed(1, 2, 4)
    assert derive_seed(1, 2, 3) != derive_seed(1, 3, 2)
    assert 0 <= derive_seed(2**40, 7) < 2**63


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_changes_little_and_keeps_statistics_float32(model, images, precision):
    full = mc_predict(model, images, samples=4, seed=[1, 2, 3])
    half = mc_predict(model, images, samples=4, seed=[1, 2, 3], precision=precision)
    assert half["probs"].dtype == half["uncertainty"].dtype == torch.float32
    agree = (half["labels"] == full["labels"]).float().mean().item()
    assert 0.9 < agree  # the picture is the same; some near-tied pixels flip
    assert torch.allclose(half["probs"].sum(1), torch.ones_like(half["probs"][:, 0]), atol=1e-5)
    with pytest.raises(InputError, match="precision"):
        mc_predict(model, images, samples=1, precision="fp8")


def test_channels_last_gives_the_same_numbers(images):
    """GPU actors run the model channels-last; the layout must not change the result (pooling indices included)."""
    a = mc_predict(tiny_segnet_basic(5), images, samples=3, seed=7)
    b = mc_predict(tiny_segnet_basic(5).to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last), samples=3, seed=7)
    assert torch.equal(a["labels"], b["labels"])
    assert torch.allclose(a["probs"], b["probs"], atol=1e-6) and torch.allclose(a["uncertainty"], b["uncertainty"], atol=1e-6)
