import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from segbatch.errors import InputError
from segbatch.model import build_model, count_parameters
from segbatch.model.segnet import MCDropout, State, _pool, _unpool


def test_segnet_has_the_published_parameter_count():
    n = count_parameters(build_model("segnet", 11, in_channels=3))
    assert 29_440_000 <= n <= 29_450_000


def test_segnet_basic_has_the_published_parameter_count():
    assert count_parameters(build_model("segnet-basic", 11)) == pytest.approx(1.42e6, rel=0.005)


def test_segnet_layout_is_vgg16_with_a_mirrored_decoder():
    m = build_model("segnet", 11)
    enc = [c for c in m.encoders.modules() if isinstance(c, torch.nn.Conv2d)]
    dec = [c for c in m.decoders.modules() if isinstance(c, torch.nn.Conv2d)] + [m.classifier]
    assert len(enc) == 13 and len(dec) == 13
    assert [c.out_channels for c in enc] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    # channel count drops on the last convolution of each decoder block; the last one is the classifier
    assert [c.out_channels for c in dec] == [512, 512, 512, 512, 512, 256, 256, 256, 128, 128, 64, 64, 11]
    assert all(c.kernel_size == (3, 3) for c in enc + dec)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in [m.classifier])


def test_width_and_in_channels_change_the_model():
    small = build_model("segnet-basic", 5, in_channels=6, width=0.25)
    assert small.encoders.enc1[0].in_channels == 6
    assert small.encoders.enc1[0].out_channels == 16
    assert small(torch.rand(1, 6, 32, 32)).shape == (1, 5, 32, 32)
    with pytest.raises(InputError, match="expected input"):
        small(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("arch", ["segnet", "segnet-basic"])
@pytest.mark.parametrize("size", [(37, 53), (45, 60), (1, 1), (33, 17)])
def test_any_input_size_comes_back_at_that_size(arch, size):
    m = build_model(arch, 4, width=0.125).eval()
    with torch.no_grad():
        assert m(torch.rand(2, 3, *size)).shape == (2, 4, *size)


def test_360x480_reaches_23x30_at_the_fourth_pooling():
    m = build_model("segnet-basic", 11, width=0.125).eval()
    state = m.run_steps(State(m.normalise(torch.rand(1, 3, 360, 480))), 0, [n for n, _ in m.plan].index("pool4") + 1)
    assert state.x.shape[-2:] == (23, 30)


def test_unpooling_puts_values_back_at_their_argmax_positions():
    x = (torch.randperm(2 * 3 * 7 * 9).float() + 1).reshape(2, 3, 7, 9)  # distinct, nonzero
    restored = _unpool(_pool(State(x))).x
    assert restored.shape == x.shape
    kept = restored != 0
    # every nonzero of the unpooled map sits where the input held that same value...
    assert torch.equal(restored[kept], x[kept])
    # ... and these are exactly the 2x2 window maxima (ceil mode: the odd last row/column too)
    window_max = F.max_pool2d(x, 2, 2, ceil_mode=True)
    assert torch.equal(restored[kept].sort().values, window_max.flatten().sort().values)


def test_mc_inference_loads_no_sympy():
    """Every actor's first unit paid for importing SymPy (0.5-0.7 s on 2 cores): F.max_unpool2d's size check loads it."""
    code = (
        "import sys, torch; from segbatch.model import build_model; from segbatch.mc import mc_predict; "
        "m = build_model('segnet-basic', 11, width=0.25, dropout='central'); "
        "out = mc_predict(m, torch.rand(2, 3, 37, 45), samples=2); "
        "assert out['labels'].shape == (2, 37, 45), out['labels'].shape; "
        "print('sympy' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False"], done.stdout + done.stderr


@pytest.mark.parametrize(
    ("arch", "placement", "after"),
    [
        ("segnet", "central", ["pool3", "pool4", "pool5", "dec5", "dec4", "dec3"]),
        ("segnet-basic", "central", ["pool3", "pool4", "dec4", "dec3"]),
        ("segnet", "encoder", ["pool1", "pool2", "pool3", "pool4", "pool5"]),
        ("segnet-basic", "classifier", ["dec1"]),
        ("segnet", "none", []),
    ],
)
def test_dropout_sits_where_the_bayesian_segnet_models_put_it(arch, placement, after):
    m = build_model(arch, 11, width=0.125, dropout=placement)
    names = [n for n, _ in m.plan]
    drops = [names[i - 1] for i, n in enumerate(names) if n.startswith("drop:")]
    assert drops == after
    assert all(d.p == 0.5 for d in m.modules() if isinstance(d, MCDropout))


def test_state_dict_keys_do_not_depend_on_dropout_placement():
    a = build_model("segnet-basic", 3, width=0.25, dropout="central").state_dict()
    b = build_model("segnet-basic", 3, width=0.25, dropout="none").state_dict()
    assert a.keys() == b.keys()


def test_dropout_is_identity_in_eval_without_mc_masks():
    m = build_model("segnet-basic", 3, width=0.25).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(m(x), m(x))


@pytest.mark.parametrize("bad", [dict(arch="unet"), dict(dropout="everywhere"), dict(num_classes=0), dict(width=0)])
def test_bad_arguments_raise_input_errors(bad):
    args = dict(arch="segnet", num_classes=3) | bad
    with pytest.raises(InputError):
        build_model(**args)
