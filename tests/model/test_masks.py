"""Counter-based MC dropout masks: a pure function of (item seed, sample, layer, element), the same on every device."""

import numpy as np
import pytest
import torch

from segbatch.errors import InputError
from segbatch.model import build_model
from segbatch.model.segnet import MCDropout, dropout_keys, dropout_layers, keep_mask

M64 = (1 << 64) - 1
G = 0x9E3779B97F4A7C15


def ref_mix(z):
    """splitmix64's finaliser on Python ints (exact, no wrapping to emulate)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def ref_key(seed, sample, layer):
    k = ref_mix((seed + G) & M64)
    k = ref_mix((k + (sample + 1) * G) & M64)
    return ref_mix((k + (layer + 1) * G) & M64)


def ref_keep(key, shape, p):
    """Plain numpy: element e keeps iff the int16 lane e % 4 (little-endian) of mix(key + (e // 4 + 1) G) >= round(p 2**16) - 2**15."""
    n = int(np.prod(shape))
    j = np.arange(1, -(-n // 4) + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(key) + j * np.uint64(G)
        z = z ^ (z >> np.uint64(30))
        z = z * np.uint64(0xBF58476D1CE4E5B9)
        z = z ^ (z >> np.uint64(27))
        z = z * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    lanes = z.astype("<u8").view("<i2")[:n]
    return (lanes >= round(p * 65536) - 32768).reshape(shape)


def torch_keys(seeds, samples, layers):
    return torch.from_numpy(dropout_keys(seeds, samples, layers).view(np.int64))


def test_keys_match_the_reference():
    seeds, samples = [0, 1, 7, 2**63 - 1, 2**64 - 1], [0, 1, 5]
    keys = dropout_keys(seeds, samples, 3)
    assert keys.shape == (3, 3, 5) and keys.dtype == np.uint64
    for layer in range(3):
        for s, sample in enumerate(samples):
            for i, seed in enumerate(seeds):
                assert int(keys[layer, s, i]) == ref_key(seed, sample, layer)
    with pytest.raises(InputError, match="seeds"):
        dropout_keys([2**64], [0], 1)


@pytest.mark.parametrize("p", [0.5, 0.3, 0.1])
@pytest.mark.parametrize("shape", [(1,), (3, 5, 7), (16, 45, 60), (5, 1, 1023)])
def test_torch_masks_equal_the_numpy_reference_bitwise(shape, p):
    keys = torch_keys([3, 2**63 + 5], [0, 4], 2).reshape(-1)
    got = keep_mask(keys, shape, p)
    assert got.shape == (8, *shape) and got.dtype == torch.bool
    for r, key in enumerate(keys.numpy().view(np.uint64)):
        np.testing.assert_array_equal(got[r].numpy(), ref_keep(int(key), shape, p))


def test_dropout_applies_the_mask_and_the_scale():
    d = MCDropout(0.25).eval()
    x = torch.rand(2, 3, 9, 11) + 0.5
    assert torch.equal(d(x), x)  # no keys: identity
    d.row_keys = torch_keys([9], [0, 1], 1).reshape(-1)
    y = d(x)
    keep = torch.from_numpy(np.stack([ref_keep(ref_key(9, s, 0), (3, 9, 11), 0.25) for s in (0, 1)]))
    assert torch.equal(y, x * keep * (1 / 0.75))
    cl = d(x.contiguous(memory_format=torch.channels_last))  # element indices are logical, not memory order
    assert torch.equal(cl, y) and cl.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="2 mask keys for a batch of 3"):
        d(torch.rand(3, 3, 9, 11))


def test_training_mode_is_ordinary_dropout():
    d = MCDropout(0.5).train()
    d.row_keys = torch_keys([1], [0], 1).reshape(-1)  # ignored in training
    y = d(torch.ones(1, 4000))
    assert set(y.unique().tolist()) == {0.0, 2.0} and abs((y > 0).float().mean().item() - 0.5) < 0.05


@pytest.mark.parametrize("p", [0.5, 0.2, 0.75])
def test_keep_probability_is_one_minus_p(p):
    keep = keep_mask(torch_keys([11], [0], 1).reshape(-1), (1_000_000,), p)
    assert abs(keep.float().mean().item() - (1 - p)) < 0.005


def test_masks_of_different_seed_sample_or_layer_are_uncorrelated():
    n = 1_000_000
    keys = {
        (seed, sample, layer): torch.from_numpy(np.array([ref_key(seed, sample, layer)], dtype=np.uint64).view(np.int64))
        for seed, sample, layer in [(5, 0, 0), (6, 0, 0), (5, 1, 0), (5, 0, 1), (0, 0, 0), (0, 1, 0), (1, 0, 0)]
    }
    masks = {k: keep_mask(v, (n,), 0.5)[0].float() for k, v in keys.items()}
    names = list(masks)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            r = torch.corrcoef(torch.stack([masks[names[a]], masks[names[b]]]))[0, 1].item()
            assert abs(r) < 0.01, (names[a], names[b], r)
            assert not torch.equal(masks[names[a]], masks[names[b]])
    # nor are neighbouring elements of one mask (lanes of one hash word, and the next word)
    m = masks[names[0]]
    for lag in (1, 2, 3, 4, 5):
        assert abs(torch.corrcoef(torch.stack([m[:-lag], m[lag:]]))[0, 1].item()) < 0.01, lag


def test_a_rows_mask_does_not_depend_on_the_other_rows():
    keys = torch_keys([1, 2, 3, 4], [0, 1, 2], 1).reshape(-1)
    together = keep_mask(keys, (6, 7, 8), 0.5)
    for r in range(len(keys)):
        assert torch.equal(together[r], keep_mask(keys[r : r + 1], (6, 7, 8), 0.5)[0])
    shuffled = torch.randperm(len(keys))
    assert torch.equal(keep_mask(keys[shuffled], (6, 7, 8), 0.5), together[shuffled])


def test_layers_are_numbered_in_module_order_which_is_plan_order():
    m = build_model("segnet", 4, width=0.125, dropout="encoder-decoder")
    drops = dropout_layers(m)
    assert len(drops) == 10
    in_plan = [m.get_submodule(module) for name, module in m.plan if name.startswith("drop:")]
    assert [id(d) for d in drops] == [id(d) for d in in_plan]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("p", [0.5, 0.3])
def test_cuda_masks_equal_cpu_masks_bitwise(p):
    keys = torch_keys([3, 2**63 + 5, 77], [0, 1, 7], 2).reshape(-1)
    for shape in [(1,), (3, 5, 7), (256, 45, 60), (5, 1, 1023)]:
        cpu = keep_mask(keys, shape, p)
        gpu = keep_mask(keys.cuda(), shape, p)
        assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu), shape
    d = MCDropout(p).eval()
    x = torch.rand(len(keys), 8, 13, 17)
    d.row_keys = keys
    y_cpu = d(x)
    d.row_keys = keys.cuda()
    assert torch.equal(d(x.cuda()).cpu(), y_cpu)
