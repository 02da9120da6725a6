"""`segbatch model import`: Caffe SegNet definitions + weights (written here by tests/helpers/caffe.py) round-trip exactly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from segbatch.mc import mc_predict
from segbatch.model import build_model
from segbatch.model.catalog import CAMVID_CLASSES
from segbatch.model.checkpoint import load_checkpoint
from segbatch.model.segnet import SegNet
from tests.helpers.caffe import write_caffe


def _caffe_like(arch: str, width: float, dropout: str = "none", lrn: tuple[float, ...] = (), classes: int = 11, seed: int = 0) -> SegNet:
    """A random model that Caffe can express: BGR 0-255 input (mean 0, std 1/255), non-trivial BatchNorm."""
    torch.manual_seed(seed)
    model = build_model(arch, classes, width=width, dropout=dropout, lrn=lrn)
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.normal_(0, 0.1)
    model.input_mean.zero_()
    model.input_std.fill_(1 / 255)
    return model.eval()


def _import(runner, cli, tmp_path: Path, model: SegNet, *extra: str, **kw) -> SegNet:
    proto, weights = write_caffe(model, tmp_path, **kw)
    out = tmp_path / "imported.pt"
    r = runner.invoke(cli, ["model", "import", "--prototxt", str(proto), "--weights", str(weights), "--out", str(out), *extra])
    assert r.exit_code == 0, r.output
    return load_checkpoint(out).model


@pytest.mark.parametrize(
    ("arch", "width", "lrn", "size"),
    [("segnet-basic", 0.25, (5, 1e-4, 0.75, 1.0), (45, 61)), ("segnet", 0.125, (), (45, 61)), ("segnet", 0.125, (), (33, 40))],
)
def test_round_trip_equals_the_original(runner, cli, tmp_path, arch, width, lrn, size):
    model = _caffe_like(arch, width, lrn=lrn)
    imported = _import(runner, cli, tmp_path, model, height=size[0], width=size[1])
    assert imported.arch == arch and imported.width == width and imported.dropout_placement == "none"
    assert imported.lrn == tuple(float(v) for v in lrn)
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(imported(x), model(x), atol=1e-5, rtol=0)


def test_bayesian_dropout_placement_and_mc_samples_equal(runner, cli, tmp_path):
    model = _caffe_like("segnet-basic", 0.25, dropout="central", lrn=(5, 1e-4, 0.75, 1.0))
    imported = _import(runner, cli, tmp_path, model)
    assert imported.dropout_placement == "central" and imported.p == 0.5
    x = torch.rand(2, 3, 45, 61)
    for samples in (0, 3):
        a = mc_predict(model, x, samples=samples, seed=7)
        b = mc_predict(imported, x, samples=samples, seed=7)
        torch.testing.assert_close(b["probs"], a["probs"], atol=1e-5, rtol=0)


def test_segnet_bayesian_central_and_camvid_defaults(runner, cli, tmp_path):
    model = _caffe_like("segnet", 0.125, dropout="central")
    imported = _import(runner, cli, tmp_path, model, legacy_shape=True)
    assert imported.dropout_placement == "central"
    ckpt = load_checkpoint(tmp_path / "imported.pt")
    assert ckpt.spec.class_names == CAMVID_CLASSES and ckpt.spec.palette[4] == (60, 40, 222)
    prov = ckpt.spec.extra
    assert prov["imported_from"] == "Caffe" and len(prov["caffemodel"]["sha256"]) == 64 and prov["input"]["channel_order"] == "BGR"
    x = torch.rand(1, 3, 45, 61)
    with torch.no_grad():
        torch.testing.assert_close(imported(x), model(x), atol=1e-5, rtol=0)


def test_classes_file_text_with_colours(runner, cli, tmp_path):
    model = _caffe_like("segnet-basic", 0.25, classes=3)
    (tmp_path / "classes.txt").write_text("wall 10 20 30\nfloor 1 2 3\n# comment\nbed 4 5 6\n")
    _import(runner, cli, tmp_path, model, "--classes", str(tmp_path / "classes.txt"))
    spec = load_checkpoint(tmp_path / "imported.pt").spec
    assert spec.class_names == ("wall", "floor", "bed") and spec.palette == ((10, 20, 30), (1, 2, 3), (4, 5, 6))
    (tmp_path / "c.json").write_text(json.dumps(["a", "b"]))
    proto, weights = tmp_path / "model.prototxt", tmp_path / "model.caffemodel"
    r = runner.invoke(
        cli, ["model", "import", "--prototxt", str(proto), "--weights", str(weights), "--out", str(tmp_path / "x.pt"), "--classes", str(tmp_path / "c.json")]
    )
    assert r.exit_code == 2 and "2 classes; the model has 3" in r.output


def _refused(runner, cli, proto: Path, weights: Path, out: Path) -> str:
    r = runner.invoke(cli, ["model", "import", "--prototxt", str(proto), "--weights", str(weights), "--out", str(out)])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    assert not out.exists()
    return lines[0]


def test_malformed_truncated_and_unsupported_files_get_one_line(runner, cli, tmp_path):
    proto, weights = write_caffe(_caffe_like("segnet-basic", 0.25), tmp_path)
    out = tmp_path / "out.pt"
    data = weights.read_bytes()
    (tmp_path / "trunc.caffemodel").write_bytes(data[: len(data) // 2])
    assert "not a Caffe weights file" in _refused(runner, cli, proto, tmp_path / "trunc.caffemodel", out)
    (tmp_path / "junk.caffemodel").write_bytes(b"\xff" * 64)
    assert "not a Caffe weights file" in _refused(runner, cli, proto, tmp_path / "junk.caffemodel", out)
    text = proto.read_text()
    (tmp_path / "broken.prototxt").write_text(text[: len(text) // 2])
    assert "not a Caffe model definition" in _refused(runner, cli, tmp_path / "broken.prototxt", weights, out)
    (tmp_path / "tanh.prototxt").write_text(text.replace('name: "relu2" type: "ReLU"', 'name: "relu2" type: "TanH"'))
    assert "'relu2'" in _refused(runner, cli, tmp_path / "tanh.prototxt", weights, out)
    (tmp_path / "learn.prototxt").write_text(text.replace("bn_mode: INFERENCE", "bn_mode: LEARN", 1))
    assert "'conv1_bn'" in _refused(runner, cli, tmp_path / "learn.prototxt", weights, out)
    (tmp_path / "wide.prototxt").write_text(text.replace("num_output: 16 kernel_size: 7", "num_output: 32 kernel_size: 7", 1))
    assert "'conv1'" in _refused(runner, cli, tmp_path / "wide.prototxt", weights, out)
    (tmp_path / "up.prototxt").write_text(text.replace("upsample_h: 45", "upsample_h: 46"))
    assert "'upsample1'" in _refused(runner, cli, tmp_path / "up.prototxt", weights, out)


def test_a_dropout_placement_that_matches_none_is_refused(runner, cli, tmp_path):
    proto, weights = write_caffe(_caffe_like("segnet-basic", 0.25, dropout="central"), tmp_path)
    text = proto.read_text()
    # without encdrop4 the dropouts sit after pool3, dec4 and dec3: no placement of segbatch's
    kept = [ln for ln in text.splitlines() if 'name: "encdrop4"' not in ln]
    fixed = "\n".join(kept).replace('bottom: "encdrop4"', 'bottom: "pool4"')
    (tmp_path / "odd.prototxt").write_text(fixed)
    line = _refused(runner, cli, tmp_path / "odd.prototxt", weights, tmp_path / "o.pt")
    assert "'encdrop3'" in line and "matches no segbatch placement" in line


def test_from_caffemodel_to_an_overlay_video_in_three_commands(ray_address, runner, cli, tmp_path):
    from tests.helpers.videos import write_video

    proto, weights = write_caffe(_caffe_like("segnet-basic", 0.25, dropout="central", lrn=(5, 1e-4, 0.75, 1.0)), tmp_path, height=48, width=64)
    video = write_video(tmp_path / "drive.mp4", 8)
    ckpt, store, overlay = tmp_path / "bayesian.pt", tmp_path / "drive.zarr", tmp_path / "overlay.mp4"
    for args in (
        ["model", "import", "--prototxt", proto, "--weights", weights, "--out", ckpt],
        ["run", "--input", video, "--out", store, "--model", ckpt, "--samples", 2, "--quiet"],
        ["export", store, "--to", overlay],
    ):
        r = runner.invoke(cli, [str(a) for a in args])
        assert r.exit_code == 0, (args[0], r.output)
    import zarr

    attrs = zarr.open_group(str(store)).attrs["segbatch"]
    assert attrs["status"] == "complete" and attrs["model"]["dropout"] == "central" and attrs["model"]["classes"][0] == "Sky"
    assert overlay.stat().st_size > 0


@pytest.mark.parametrize(
    ("arch", "width", "dropout", "lrn", "bn"),
    [
        ("segnet-basic", 0.25, "none", (5, 1e-4, 0.75, 1.0), "stats"),
        ("segnet", 0.125, "central", (), "batchnorm"),
        ("segnet-basic", 0.25, "none", (), "batchnorm"),
    ],
)
def test_batch_norm_with_running_statistics_round_trips(runner, cli, tmp_path, arch, width, dropout, lrn, bn):
    """A 4-blob BN (scale, shift, mean, variance; eps 1e-9) and upstream BatchNorm + Scale give the original's outputs."""
    model = _caffe_like(arch, width, dropout=dropout, lrn=lrn)
    imported = _import(runner, cli, tmp_path, model, bn=bn, height=33, width=40)
    forms = load_checkpoint(tmp_path / "imported.pt").spec.extra["batch_norm"]
    assert forms == (["BN with running statistics (eps 1e-09)"] if bn == "stats" else ["BatchNorm + Scale (eps 1e-05)"])
    first = next(m for m in imported.modules() if isinstance(m, torch.nn.BatchNorm2d))
    original = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    torch.testing.assert_close(first.running_mean, original.running_mean)  # the statistics are kept, not folded away
    x = torch.rand(2, 3, 33, 40)
    with torch.no_grad():
        torch.testing.assert_close(imported(x), model(x), atol=1e-5, rtol=0)


def test_batch_norm_forms_that_do_not_fit_are_refused_naming_the_layer(runner, cli, tmp_path):
    out = tmp_path / "out.pt"
    (tmp_path / "up").mkdir()
    proto, weights = write_caffe(_caffe_like("segnet-basic", 0.25), tmp_path / "up", bn="batchnorm")
    text = proto.read_text()
    lone = "\n".join(ln for ln in text.splitlines() if 'name: "conv2_scale"' not in ln)
    (tmp_path / "lone.prototxt").write_text(lone)
    line = _refused(runner, cli, tmp_path / "lone.prototxt", weights, out)
    assert "'conv2_bn'" in line and "without its Scale" in line and "'relu2'" in line
    (tmp_path / "batch.prototxt").write_text(text.replace("use_global_stats: true", "use_global_stats: false", 1))
    assert "'conv1_bn'" in _refused(runner, cli, tmp_path / "batch.prototxt", weights, out)
    (tmp_path / "nobias.prototxt").write_text(text.replace("scale_param { bias_term: true }", "scale_param { }", 1))
    assert "'conv1_scale'" in _refused(runner, cli, tmp_path / "nobias.prototxt", weights, out)
    (tmp_path / "st").mkdir()
    proto, weights = write_caffe(_caffe_like("segnet-basic", 0.25), tmp_path / "st", bn="stats")
    (tmp_path / "inf.prototxt").write_text(proto.read_text().replace("bn_param {", "bn_param { bn_mode: INFERENCE", 1))
    line = _refused(runner, cli, tmp_path / "inf.prototxt", weights, out)
    assert "'conv1_bn'" in line and "4 blobs" in line


@pytest.mark.parametrize(("arch", "width", "bn"), [("segnet-basic", 0.25, "folded"), ("segnet", 0.125, "stats")])
def test_legacy_v1_caffemodel_round_trips(runner, cli, tmp_path, arch, width, bn):
    model = _caffe_like(arch, width, dropout="central", lrn=(5, 1e-4, 0.75, 1.0) if arch == "segnet-basic" else ())
    imported = _import(runner, cli, tmp_path, model, bn=bn, legacy_weights=True, legacy_shape=True)
    assert load_checkpoint(tmp_path / "imported.pt").spec.extra["layer_format"] == {"prototxt": "layer", "caffemodel": "legacy V1 layers"}
    x = torch.rand(2, 3, 45, 61)
    with torch.no_grad():
        torch.testing.assert_close(imported(x), model(x), atol=1e-5, rtol=0)


def test_legacy_v1_definitions_truncated_weights_and_unknown_types_get_one_line(runner, cli, tmp_path):
    """The V1 type list has no Upsample: a SegNet definition cannot be legacy; what is legacy is read or refused in one line."""
    proto, weights = write_caffe(_caffe_like("segnet-basic", 0.25, lrn=(5, 1e-4, 0.75, 1.0)), tmp_path, legacy_weights=True, legacy_definition=True)
    out = tmp_path / "out.pt"
    line = _refused(runner, cli, proto, weights, out)
    assert "UPSAMPLE" in line and "current 'layer' form" in line
    text = proto.read_text().splitlines()
    head = text[: next(i for i, ln in enumerate(text) if "type: UPSAMPLE" in ln)]
    assert sum(ln.startswith("layers {") for ln in head) > 10 and not any(ln.startswith("layer {") for ln in head)
    (tmp_path / "tanh.prototxt").write_text("\n".join(head).replace('name: "relu1" type: RELU', 'name: "relu1" type: TANH'))
    line = _refused(runner, cli, tmp_path / "tanh.prototxt", weights, out)
    assert "'relu1'" in line and "'TanH'" in line
    (tmp_path / "head.prototxt").write_text("\n".join(head))  # every V1 layer read, and no decoder to find
    assert "no Upsample layer" in _refused(runner, cli, tmp_path / "head.prototxt", weights, out)
    (tmp_path / "current").mkdir()  # a definition that reads, with a truncated legacy caffemodel
    proto, weights = write_caffe(_caffe_like("segnet-basic", 0.25), tmp_path / "current", legacy_weights=True)
    data = weights.read_bytes()
    for cut in (len(data) // 3, len(data) - 7):
        (tmp_path / "trunc.caffemodel").write_bytes(data[:cut])
        assert "not a Caffe weights file" in _refused(runner, cli, proto, tmp_path / "trunc.caffemodel", out)


def _normalised_like_caffe(model: SegNet, bgr_mean: tuple[float, float, float], scale: float) -> SegNet:
    """`model` taking (x - mean) * scale of BGR 0-255 input, as a definition's transform_param says."""
    with torch.no_grad():
        model.input_mean.copy_(torch.tensor(bgr_mean[::-1]) / 255)
        model.input_std.fill_(1 / (255 * scale))
    return model


def test_transform_param_mean_and_scale_are_recorded_and_fed_as_run_feeds(runner, cli, tmp_path):
    model = _normalised_like_caffe(_caffe_like("segnet-basic", 0.25), (104.0, 117.0, 123.0), 0.017)
    proto, _ = write_caffe(model, tmp_path)
    assert "mean_value: 104.0 mean_value: 117.0 mean_value: 123.0" in proto.read_text()  # Caffe's (BGR) order
    imported = _import(runner, cli, tmp_path, model)
    given = load_checkpoint(tmp_path / "imported.pt").spec.extra["input"]
    assert given["channel_order"] == "BGR" and given["mean"] == [104.0, 117.0, 123.0] and abs(given["scale"] - 0.017) < 1e-8
    torch.testing.assert_close(imported.input_mean, torch.tensor([123.0, 117.0, 104.0]) / 255)
    torch.testing.assert_close(imported.input_std, torch.full((3,), 1 / (255 * 0.017)))
    bgr = torch.randint(0, 256, (2, 3, 45, 61), dtype=torch.uint8)  # what Caffe's data layer reads (OpenCV order)
    rgb = bgr.flip(1).float().div_(255)  # what `segbatch run` hands the model (video.py: RGB frames / 255)
    with torch.no_grad():
        torch.testing.assert_close(imported(rgb), model(rgb), atol=1e-5, rtol=0)


def test_info_shows_an_imported_checkpoints_provenance(runner, cli, tmp_path):
    import hashlib

    model = _normalised_like_caffe(_caffe_like("segnet-basic", 0.25, dropout="central", lrn=(5, 1e-4, 0.75, 1.0)), (104.0, 117.0, 123.0), 0.5)
    _import(runner, cli, tmp_path, model, bn="stats", legacy_weights=True)
    r = runner.invoke(cli, ["info", str(tmp_path / "imported.pt")])
    assert r.exit_code == 0, r.output
    rows = r.output.splitlines()
    digest = {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()[:12] for name in ("model.prototxt", "model.caffemodel")}
    assert f"imported    from Caffe: model.prototxt (sha256 {digest['model.prototxt']})" in rows
    assert f"            and model.caffemodel (sha256 {digest['model.caffemodel']}) (legacy V1 layers)" in rows
    assert "input LRN   local_size 5, alpha 0.0001, beta 0.75, k 1" in rows
    assert "input       BGR 0-255, mean 104 117 123 (B, G, R) subtracted, then scale 0.5" in rows
    assert "batch norm  BN with running statistics (eps 1e-09)" in rows
    assert any("sample at test time" in row for row in rows)


@pytest.mark.parametrize(
    ("arch", "width", "lrn", "classifier"), [("segnet-basic", 0.25, (5, 1e-4, 0.75, 1.0), "dense_softmax_inner_prod"), ("segnet", 0.125, (), None)]
)
def test_definitions_written_as_the_released_files_import(runner, cli, tmp_path, arch, width, lrn, classifier):
    """DenseImageData input, BN with param blocks and fillers, Dropout in place, sizes only where a side is odd, softmax engine."""
    model = _caffe_like(arch, width, dropout="central", lrn=lrn)
    imported = _import(runner, cli, tmp_path, model, released=True, classifier=classifier)
    text = (tmp_path / "model.prototxt").read_text()
    assert 'type: "DenseImageData"' in text and "input_dim" not in text and 'name: "encdrop3" type: "Dropout" bottom: "pool3" top: "pool3"' in text
    assert ("pad_out_h: true" in text) == (arch == "segnet-basic") and "softmax_param { engine: CAFFE }" in text
    prov = load_checkpoint(tmp_path / "imported.pt").spec.extra
    assert imported.dropout_placement == "central" and prov["dropout_sampled_at_test"] is True and prov["input_dims"] == []
    x = torch.rand(2, 3, 45, 61)
    a, b = mc_predict(model, x, samples=2, seed=3), mc_predict(imported, x, samples=2, seed=3)
    torch.testing.assert_close(b["probs"], a["probs"], atol=1e-5, rtol=0)


def test_pad_out_upsampling_is_checked_against_a_fixed_input_size(runner, cli, tmp_path):
    """SegNet-Basic's released definitions undo pool4 (45 rows at 360x480) with `pad_out_h: true`: 2 * 23 - 1 = 45."""
    model = _caffe_like("segnet-basic", 0.25, lrn=(5, 1e-4, 0.75, 1.0))
    proto, weights = write_caffe(model, tmp_path, height=360, width=480)
    text = proto.read_text()
    up = "upsample_param { scale: 2 upsample_h: 45 upsample_w: 60 }"
    assert up in text
    (tmp_path / "pad.prototxt").write_text(text.replace(up, "upsample_param { scale: 2 pad_out_h: true }"))
    r = runner.invoke(cli, ["model", "import", "--prototxt", str(tmp_path / "pad.prototxt"), "--weights", str(weights), "--out", str(tmp_path / "p.pt")])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(tmp_path / "p.pt").spec.extra["upsample"]["upsample4"] == "2h-1x2w"
    (tmp_path / "nopad.prototxt").write_text(text.replace(up, "upsample_param { scale: 2 }"))
    line = _refused(runner, cli, tmp_path / "nopad.prototxt", weights, tmp_path / "n.pt")
    assert "'upsample4'" in line and "46x60" in line and "45x60" in line


def test_training_definitions_are_refused_and_pass_through_dropout_is_dropped(runner, cli, tmp_path):
    """A *_train definition (BN in LEARN mode) with folded weights is refused in one line; test-time pass-through
    Dropout layers at no segbatch position (segnet_pascal's, before each pooling) are left out, and recorded."""
    model = _caffe_like("segnet-basic", 0.25, lrn=(5, 1e-4, 0.75, 1.0))
    proto, weights = write_caffe(model, tmp_path, released=True)
    text = proto.read_text()
    train = text.replace("bn_param { bn_mode: INFERENCE", "bn_param {").replace(
        'layer { name: "prob" type: "Softmax" bottom: "conv_classifier" top: "prob" softmax_param { engine: CAFFE } }',
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv_classifier" bottom: "label" top: "loss" '
        "loss_param: { weight_by_label_freqs: true ignore_label: 11 class_weighting: 0.2595 } }\n"
        'layer { name: "accuracy" type: "Accuracy" bottom: "conv_classifier" bottom: "label" top: "accuracy" top: "per_class_accuracy" }',
    )
    assert "SoftmaxWithLoss" in train
    (tmp_path / "train.prototxt").write_text(train)
    line = _refused(runner, cli, tmp_path / "train.prototxt", weights, tmp_path / "t.pt")
    assert "'conv1_bn'" in line and "LEARN mode" in line and "compute_bn_statistics.py" in line
    drop = 'layer { name: "pool2_drop" type: "Dropout" bottom: "conv2" top: "conv2" dropout_param { dropout_ratio: 0.5 } }\n'
    at = text.index('layer { name: "pool2" type: "Pooling"')
    (tmp_path / "pascal.prototxt").write_text(text[:at] + drop + text[at:])
    r = runner.invoke(cli, ["model", "import", "--prototxt", str(tmp_path / "pascal.prototxt"), "--weights", str(weights), "--out", str(tmp_path / "d.pt")])
    assert r.exit_code == 0, r.output
    ckpt = load_checkpoint(tmp_path / "d.pt")
    assert ckpt.model.dropout_placement == "none" and ckpt.spec.extra["dropout_ignored"]["layers"] == ["pool2_drop"]
    x = torch.rand(1, 3, 45, 61)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(x), model(x), atol=1e-5, rtol=0)
    sampled = drop.replace("dropout_ratio: 0.5", "dropout_ratio: 0.5 sample_weights_test: true")
    (tmp_path / "sampled.prototxt").write_text(text[:at] + sampled + text[at:])
    line = _refused(runner, cli, tmp_path / "sampled.prototxt", weights, tmp_path / "s.pt")
    assert "'pool2_drop'" in line and "inside an encoder block" in line


# ---------------------------------------------------------------------------------------------------------------------
# The released definitions (SegNet-Tutorial's Models/*.prototxt and Example_Models/*.prototxt), where a folder of them
# is given: SEGBATCH_SEGNET_DEFS=/path/to/folder. Their weights are not needed: a random model of the architecture the
# definition describes is written under the definition's layer names, imported, and compared.

_DEFS = os.environ.get("SEGBATCH_SEGNET_DEFS", "")
_DEF_FILES = sorted(Path(_DEFS).glob("*.prototxt")) if _DEFS and Path(_DEFS).is_dir() else []
_SOLVERS = ("_solver.prototxt",)


def _described(proto: Path) -> dict:
    """What the definition says, read from its text independently of the importer: arch, classes, LRN, dropout, BN mode."""
    from google.protobuf import text_format

    from segbatch.model.caffe import _messages
    from segbatch.model.catalog import BASIC_PLACEMENTS, SEGNET_PLACEMENTS

    net = _messages()["NetParameter"]()
    text_format.Parse(proto.read_text(), net, allow_unknown_field=True, allow_unknown_extension=True)
    layers = list(net.layer)
    pools = [lay for lay in layers if lay.type == "Pooling"]
    arch = "segnet" if len(pools) == 5 else "segnet-basic"
    convs = [lay for lay in layers if lay.type == "Convolution"]
    drops = [lay for lay in layers if lay.type == "Dropout"]
    places = set()
    for lay in drops:  # the released names: encdropK after poolK, decdropK after decoder block K
        for stem, place in (("encdrop", "pool"), ("decdrop", "dec")):
            if lay.name.startswith(stem):
                places.add(f"{place}{lay.name[len(stem) :]}")
    placements = SEGNET_PLACEMENTS if arch == "segnet" else BASIC_PLACEMENTS
    placement = next((k for k, v in placements.items() if set(v) == places and len(places) == len(drops)), "none")
    lrn = next((lay.lrn_param for lay in layers if lay.type == "LRN"), None)
    return {
        "arch": arch,
        "classes": int(convs[-1].convolution_param.num_output),
        "lrn": (float(lrn.local_size), float(f"{lrn.alpha:.7g}"), float(f"{lrn.beta:.7g}"), 1.0) if lrn is not None else (),
        "placement": placement,
        "sampled": any(lay.dropout_param.sample_weights_test for lay in drops),
        "train": any(lay.type == "BN" and lay.bn_param.bn_mode != 1 for lay in layers),
        "input": [int(d) for d in net.input_dim],
    }


@pytest.mark.skipif(not _DEF_FILES, reason="SEGBATCH_SEGNET_DEFS does not name a folder of the released .prototxt files")
@pytest.mark.parametrize("proto", [p for p in _DEF_FILES if not p.name.endswith(_SOLVERS)], ids=lambda p: p.name)
def test_released_definitions_import_with_weights_in_their_naming(runner, cli, tmp_path, proto):
    from tests.helpers.caffe import write_caffemodel_for

    said = _described(proto)
    model = _caffe_like(said["arch"], 1.0, dropout=said["placement"], lrn=said["lrn"], classes=said["classes"])
    weights = write_caffemodel_for(model, proto, tmp_path / "weights.caffemodel")
    out = tmp_path / "imported.pt"
    if said["train"]:  # BN in LEARN mode normalises with batch statistics: folded weights mean something else there
        line = _refused(runner, cli, proto, weights, out)
        assert "LEARN mode" in line and "bn_mode: INFERENCE" in line, line
        return
    r = runner.invoke(cli, ["model", "import", "--prototxt", str(proto), "--weights", str(weights), "--out", str(out)])
    assert r.exit_code == 0, r.output
    ckpt = load_checkpoint(out)
    imported, prov = ckpt.model, ckpt.spec.extra
    assert (imported.arch, imported.width, imported.num_classes) == (said["arch"], 1.0, said["classes"])
    assert imported.dropout_placement == said["placement"] and imported.lrn == said["lrn"]
    assert prov["dropout_sampled_at_test"] == said["sampled"] and prov["input"] == {"channel_order": "BGR", "range": "0-255", "mean": [0.0] * 3, "scale": 1.0}
    assert prov["input_dims"] == said["input"]
    torch.testing.assert_close(imported.input_std, torch.full((3,), 1 / 255))
    x = torch.rand(1, 3, 37, 53)  # odd sides: the ceil-mode pooling and its unpooling on every level
    with torch.no_grad():
        diff = (imported(x) - model(x)).abs().max().item()
    print(f"{proto.name}: {said['arch']} {said['classes']} classes, dropout {said['placement']}, max |diff| {diff:.3g}")
    assert diff <= 1e-5
    if said["placement"] != "none":  # the same MC dropout masks
        torch.testing.assert_close(mc_predict(imported, x, samples=2, seed=7)["probs"], mc_predict(model, x, samples=2, seed=7)["probs"], atol=1e-5, rtol=0)
    elif "Dropout" in proto.read_text():  # pass-through at test time and at no segbatch position (segnet_pascal)
        assert prov["dropout_ignored"]["layers"]
