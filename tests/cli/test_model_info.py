import json
import subprocess
import sys

import pytest


def test_model_init_then_info(runner, cli, tmp_path):
    ckpt = tmp_path / "m.pt"
    r = runner.invoke(cli, ["model", "init", "--arch", "segnet-basic", "--classes", "4", "--width", "0.25", "--in-channels", "5", "--out", str(ckpt)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["info", str(ckpt)])
    assert r.exit_code == 0, r.output
    assert "segnet-basic" in r.output and "class0, class1, class2, class3" in r.output
    r = runner.invoke(cli, ["info", str(ckpt), "--json"])
    data = json.loads(r.output)
    assert data["arch"] == "segnet-basic" and data["in_channels"] == 5 and len(data["classes"]) == 4
    assert data["parameters"] > 0 and data["dropout"] == {"placement": "central", "p": 0.5}


def test_full_segnet_parameter_count_in_info(runner, cli, tmp_path):
    ckpt = tmp_path / "segnet.pt"
    assert runner.invoke(cli, ["model", "init", "--arch", "segnet", "--classes", "11", "--out", str(ckpt)]).exit_code == 0
    data = json.loads(runner.invoke(cli, ["info", str(ckpt), "--json"]).output)
    assert 29_440_000 <= data["parameters"] <= 29_450_000


def test_class_names_from_a_classes_file(runner, cli, tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps({"names": ["a", "b"], "palette": [[1, 2, 3], [4, 5, 6]]}))
    r = runner.invoke(cli, ["model", "init", "--classes-file", str(tmp_path / "classes.json"), "--width", "0.25", "--out", str(tmp_path / "m.pt")])
    assert r.exit_code == 0, r.output
    data = json.loads(runner.invoke(cli, ["info", str(tmp_path / "m.pt"), "--json"]).output)
    assert data["classes"] == ["a", "b"] and data["palette"] == [[1, 2, 3], [4, 5, 6]]


def test_init_refuses_to_overwrite(runner, cli, tmp_path):
    ckpt = tmp_path / "m.pt"
    args = ["model", "init", "--classes", "3", "--width", "0.25", "--out", str(ckpt)]
    assert runner.invoke(cli, args).exit_code == 0
    r = runner.invoke(cli, args)
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert runner.invoke(cli, [*args, "--overwrite"]).exit_code == 0


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 100])
def test_corrupt_checkpoint_is_one_line_and_exit_2(tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    p = subprocess.run([sys.executable, "-m", "segbatch", "info", str(bad)], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr and "bad.pt" in lines[0]


def test_bad_usage_is_exit_2(runner, cli, tmp_path):
    r = runner.invoke(cli, ["model", "init", "--arch", "unet", "--classes", "3", "--out", str(tmp_path / "x.pt")])
    assert r.exit_code == 2
