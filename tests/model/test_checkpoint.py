import pytest
import torch

from segbatch.errors import CheckpointError
from segbatch.model import build_model, load_checkpoint, load_vgg16_encoder, save_checkpoint
from segbatch.model.checkpoint import ModelSpec


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    torch.manual_seed(0)
    m = build_model("segnet-basic", 3, in_channels=4, width=0.25, dropout="encoder", p=0.3)
    m.input_mean.fill_(0.4)
    spec = ModelSpec.of(m, class_names=("water", "land", "cloud"), palette=((0, 0, 255), (0, 255, 0), (255, 255, 255)))
    save_checkpoint(m, tmp_path / "m.pt", spec)
    ck = load_checkpoint(tmp_path / "m.pt")
    assert ck.spec == spec
    assert ck.model.dropout_placement == "encoder" and ck.model.p == 0.3 and ck.model.in_channels == 4
    for key, value in m.state_dict().items():
        assert torch.equal(value, ck.model.state_dict()[key]), key
    x = torch.rand(1, 4, 16, 16)
    with torch.no_grad():
        assert torch.equal(m.eval()(x), ck.model(x))
    assert len(ck.sha256) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("import pathlib; pathlib.Path('pwned').touch()",))

    torch.save({"format": "segbatch-checkpoint", "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "not a readable"), (b"\x00garbage" * 50, "not a readable")],
)
def test_corrupt_files_raise_checkpoint_error(tmp_path, content, message):
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "bad.pt")


def test_foreign_and_truncated_checkpoints(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a segbatch checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    save_checkpoint(build_model("segnet-basic", 3, width=0.25), tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "cut.pt")


def test_vgg16_state_dict_loads_into_the_encoder(tmp_path):
    """A torchvision-format VGG16 `features.N` state dict, built here (no download)."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, cin = [], 3
    for v in cfg:
        if v == "M":
            layers.append(torch.nn.MaxPool2d(2))
        else:
            layers += [torch.nn.Conv2d(cin, v, 3, padding=1), torch.nn.ReLU()]
            cin = v
    features = torch.nn.Sequential(*layers)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 25088)  # real files have the classifier too; it is ignored
    torch.save(state, tmp_path / "vgg16.pth")

    m = build_model("segnet", 11, in_channels=4)
    assert load_vgg16_encoder(m, tmp_path / "vgg16.pth") == 13
    ours = [c for c in m.encoders.modules() if isinstance(c, torch.nn.Conv2d)]
    theirs = [c for c in features if isinstance(c, torch.nn.Conv2d)]
    for a, b in zip(ours[1:], theirs[1:]):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    # a 4th band gets the mean RGB filter; all scaled by 3/4 so the response keeps its size
    w = theirs[0].weight
    assert torch.allclose(ours[0].weight[:, :3], w * 0.75)
    assert torch.allclose(ours[0].weight[:, 3], w.mean(1) * 0.75)
    assert torch.allclose(m.input_mean[:3], torch.tensor([0.485, 0.456, 0.406]))

    with pytest.raises(CheckpointError, match="segnet"):
        load_vgg16_encoder(build_model("segnet-basic", 11), tmp_path / "vgg16.pth")


@pytest.mark.parametrize(
    "meta_change",
    [{"width": float("inf")}, {"width": 8.0}, {"palette": [[999, 0, 0]] * 3}, {"class_names": "abc"}, {"extra": [1, 2]}, {"extra": {"t": torch.zeros(1)}}],
)
def test_hand_edited_metadata_is_a_checkpoint_error(tmp_path, meta_change):
    m = build_model("segnet-basic", 3, width=0.25)
    save_checkpoint(m, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["meta"].update(meta_change)
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "edited.pt")
