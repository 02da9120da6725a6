import numpy as np
import pytest
import torch

from segbatch.errors import InputError
from segbatch.mc import derive_seed, mc_predict
from segbatch.model import build_model
from tests.helpers.models import tiny_segnet_basic


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
    # rebuild the samples one at a time: sample s of an item uses the masks of (seed, s, layer)
    from segbatch.mc import _masks
    from segbatch.model.segnet import State, dropout_keys, dropout_layers

    drops = dropout_layers(model)
    probs = []
    for s in range(5):
        keys = torch.from_numpy(dropout_keys([11], [s], len(drops)).view(np.int64)).reshape(len(drops), 1)
        with torch.no_grad(), _masks(drops, keys):
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
    for rows in (None, 4, 3):  # also with samples split over sub-batches
        out = mc_predict(m, images, samples=4, seed=0, max_rows=rows)
        assert torch.count_nonzero(out["uncertainty"]) == 0
        assert torch.count_nonzero(out["mutual_information"]) == 0


def test_shared_prefix_equals_full_passes_with_the_same_masks(model, images):
    shared = mc_predict(model, images, samples=5, seed=[4, 5, 6], share_prefix=True)
    full = mc_predict(model, images, samples=5, seed=[4, 5, 6], share_prefix=False)
    for key in shared:
        assert torch.allclose(shared[key].float(), full[key].float(), atol=1e-6), key


def test_the_same_batch_gives_the_same_bits(model, images):
    """What fixes the bits: model, seeds, batch composition, samples, precision, device type (a fresh copy of the model too)."""
    import copy

    a = mc_predict(model, images, samples=5, seed=[4, 5, 6])
    b = mc_predict(copy.deepcopy(model), images.clone(), samples=5, seed=[4, 5, 6])
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_an_items_masks_do_not_depend_on_its_batch(model, images):
    """In another batch an item keeps its masks: its numbers agree to rounding (kernels may round differently per batch size)."""
    alone = mc_predict(model, images[1:2], samples=5, seed=42)
    other = torch.rand(4, 3, 29, 41, generator=torch.Generator().manual_seed(2))
    mixed = mc_predict(model, torch.cat([other[:2], images[1:2], other[2:]]), samples=5, seed=[1, 2, 42, 3, 4])
    for key in alone:
        assert torch.allclose(alone[key].float(), mixed[key][2:3].float(), rtol=1e-3, atol=1e-6), key
    assert torch.allclose(alone["uncertainty"], mixed["uncertainty"][2:3], rtol=1e-3, atol=1e-9)  # it is small here
    reseeded = mc_predict(model, images[1:2], samples=5, seed=43)  # other masks: far more than rounding apart
    assert not torch.allclose(alone["uncertainty"], reseeded["uncertainty"], rtol=0.1, atol=1e-9)


def test_seed_changes_the_masks(model, images):
    a = mc_predict(model, images[:1], samples=4, seed=1)
    b = mc_predict(model, images[:1], samples=4, seed=2)
    assert not torch.equal(a["uncertainty"], b["uncertainty"])


def test_sub_batches_bound_rows_without_changing_the_answer(model, images):
    whole = mc_predict(model, images, samples=7, seed=[9, 8, 7], max_rows=21)
    for rows in (1, 2, 5, 6):  # items split within a sample; several samples of every item
        part = mc_predict(model, images, samples=7, seed=[9, 8, 7], max_rows=rows)
        for key in whole:
            assert torch.allclose(whole[key].float(), part[key].float(), atol=1e-6), (rows, key)


def test_the_default_split_is_the_budget_over_the_row_estimate(model, images):
    """Without max_rows the split is a function of the batch, the model and the device type only: here, all rows at once."""
    from segbatch.mc import CPU_BUDGET, memory_budget, row_bytes
    from segbatch.model.segnet import State

    assert memory_budget(torch.device("cpu")) == CPU_BUDGET
    prefix = model.run_steps(State(model.normalise(images)), 0, model.first_stochastic_step)
    per_row = row_bytes(model, prefix, model.first_stochastic_step, 4)
    assert 0 < per_row < 1e6 and CPU_BUDGET // per_row >= 21
    default = mc_predict(model, images, samples=7, seed=[9, 8, 7])
    explicit = mc_predict(model, images, samples=7, seed=[9, 8, 7], max_rows=CPU_BUDGET // per_row)
    for key in default:
        assert torch.equal(default[key], explicit[key]), key


def test_row_estimate_grows_with_the_frame_and_covers_full_segnet():
    """Full SegNet at 360x480: the decoder's full-resolution 64-channel layers dominate (a few hundred MB a row in fp32)."""
    from segbatch.mc import row_bytes
    from segbatch.model.segnet import State

    m = build_model("segnet", 11)
    with torch.inference_mode():
        small = row_bytes(m, m.run_steps(State(torch.zeros(1, 3, 36, 48)), 0, m.first_stochastic_step), m.first_stochastic_step, 4)
    big = row_bytes(m, State(torch.zeros(1, 3, 360, 480)), 0, 4)  # no prefix: the whole network's peak
    assert 360 * 480 * 64 * 3 * 4 <= big <= 360 * 480 * 64 * 3 * 4 * 2
    assert small < big / 50


def test_sub_batches_cover_every_row_once_in_sample_order():
    from segbatch.mc import sub_batches

    for batch, samples, rows in [(3, 7, 100), (3, 7, 6), (3, 7, 5), (3, 7, 2), (4, 8, 1), (1, 8, 3), (5, 1, 4)]:
        parts = sub_batches(batch, samples, rows)
        assert parts == sub_batches(batch, samples, rows)
        seen = [(s, i) for ss, ii in parts for s in ss for i in ii]
        assert sorted(seen) == [(s, i) for s in range(samples) for i in range(batch)]
        assert all(0 < len(ss) * len(ii) <= rows for ss, ii in parts)
        for i in range(batch):  # each item meets its samples in order (Welford's update)
            assert [s for s, j in seen if j == i] == list(range(samples))
    assert [len(s) for s, _ in sub_batches(3, 7, 6)] == [2, 2, 2, 1]
    assert [len(s) for s, _ in sub_batches(3, 8, 9)] == [3, 3, 2]  # as even as possible
    assert [(len(s), len(i)) for s, i in sub_batches(5, 2, 2)] == [(1, 2), (1, 2), (1, 1)] * 2


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
    with pytest.raises(InputError, match="max_rows"):
        mc_predict(model, images, samples=2, max_rows=0)
    with pytest.raises(InputError, match="seeds"):
        mc_predict(model, images[:1], samples=2, seed=2**64)


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
