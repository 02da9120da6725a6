"""`segbatch run` on a simulated multi-node Ray cluster (ray.cluster_utils.Cluster, fake GPUs): spread, node loss, driver loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr

from segbatch.store import LEDGER
from tests.helpers.drivers import kill_driver_mid_run, total_units
from tests.helpers.stores import arrays, assert_same


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from segbatch.demo.video import write_demo_video

    return write_demo_video(tmp_path_factory.mktemp("cluster") / "drive.mp4", 96, 96, 128)


@pytest.fixture(scope="module")
def reference(clip, tiny_model, ray_address, tmp_path_factory):
    """The same run on the test session's single-node Ray, one actor."""
    from click.testing import CliRunner

    from segbatch.cli.main import cli

    out = tmp_path_factory.mktemp("reference") / "ref.zarr"
    args = ["run", "--input", str(clip), "--out", str(out), "--model", str(tiny_model), "--samples", "4", "--actors", "1", "--address", ray_address, "--quiet"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    return arrays(out)


@pytest.fixture
def cluster():
    """A head that runs no actors and two worker nodes with one (fake) GPU each."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [c.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    c.wait_for_nodes()
    yield c, nodes
    c.shutdown()


def _driver(address: str, *args: object) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "segbatch", "run", *map(str, args), "--address", address]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"})


def _ledger(store: Path) -> list[dict]:
    try:
        entries = zarr.open_group(str(store), mode="r")[LEDGER][...]
    except Exception:
        return []
    return [json.loads(e) for e in entries if e]


def test_losing_a_node_mid_run_loses_no_unit(cluster, clip, tiny_model, reference, tmp_path):
    c, nodes = cluster
    store = tmp_path / "run.zarr"
    proc = _driver(c.address, "--input", clip, "--out", store, "--model", tiny_model, "--samples", "4")
    doomed = nodes[1].node_id
    deadline = time.time() + 120
    # wait until both nodes have finished a unit (both actors were ready at once: the summary's 2), with work still left;
    # waiting for the doomed node alone lost it, on a loaded box, before the other node's actor was ready
    while time.time() < deadline and proc.poll() is None and {e.get("node") for e in _ledger(store)} != {nodes[0].node_id, doomed}:
        time.sleep(0.05)
    assert proc.poll() is None and len(_ledger(store)) < total_units(store) - 2, "the run ended before a node could be lost"
    c.remove_node(nodes[1])
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "a worker was lost" in err
    ledger = _ledger(store)
    assert len(ledger) == total_units(store)
    assert {e["node"] for e in ledger} == {nodes[0].node_id, doomed}  # the work went to both nodes
    assert_same(arrays(store), reference)
    attrs = zarr.open_group(str(store), mode="r").attrs["segbatch"]
    assert attrs["status"] == "complete" and attrs["summary"]["actors"] == 2


def test_a_dead_driver_leaves_a_store_that_resume_completes(cluster, clip, tiny_model, reference, tmp_path):
    c, _ = cluster
    store = tmp_path / "run.zarr"
    args = ("--input", clip, "--out", store, "--model", tiny_model, "--samples", "4", "--quiet")
    proc = _driver(c.address, *args)
    kill_driver_mid_run(store, proc)
    resumed = _driver(c.address, *args, "--resume")
    _, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err
    assert_same(arrays(store), reference)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Four short clips: a many-input job (one group each)."""
    from tests.helpers.videos import write_video

    folder = tmp_path_factory.mktemp("fleet")
    for name in "abcd":
        write_video(folder / f"{name}.mp4", 32, height=96, width=128, gop=8)
    return folder


def _job_ledger(store: Path) -> list[dict]:
    return [e for name in "abcd" for e in _ledger(store / name)]


def test_a_many_input_job_loses_a_node_and_loses_no_unit(cluster, fleet, tiny_model, ray_address, tmp_path):
    from click.testing import CliRunner

    from segbatch.cli.main import cli

    reference = tmp_path / "reference.zarr"
    args = ["--input", str(fleet), "--model", str(tiny_model), "--samples", "4"]
    r = CliRunner().invoke(cli, ["run", *args, "--out", str(reference), "--actors", "1", "--address", ray_address, "--quiet"])
    assert r.exit_code == 0, r.output
    c, nodes = cluster
    store = tmp_path / "job.zarr"
    proc = _driver(c.address, *args, "--out", store)
    doomed = nodes[1].node_id
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not any(e.get("node") == doomed for e in _job_ledger(store)):
        time.sleep(0.05)
    assert proc.poll() is None and len(_job_ledger(store)) < 16 - 2, "the job ended before a node could be lost"
    c.remove_node(nodes[1])
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "a worker was lost" in err
    ledger = _job_ledger(store)
    assert len(ledger) == 16 and {e["node"] for e in ledger} == {nodes[0].node_id, doomed}
    for name in "abcd":
        assert_same(arrays(store / name), arrays(reference / name))
    assert zarr.open_group(str(store), mode="r").attrs["segbatch"]["summary"]["complete"] == 4


@pytest.fixture
def bare_cluster(s3_server):
    """A head that runs no actors and two worker nodes started without the storage variables (as a cluster's nodes are: their
    environment is their own, not the driver's); the driver, in this process's environment, has them."""
    from ray.cluster_utils import Cluster

    from tests.helpers.s3 import environment

    saved = {name: os.environ.pop(name) for name in environment(s3_server.port) if name in os.environ}
    try:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        nodes = [c.add_node(num_cpus=1) for _ in range(2)]
        c.wait_for_nodes()
    finally:
        os.environ.update(saved)
    yield c, nodes
    c.shutdown()


def test_two_nodes_write_one_store_to_the_bucket_with_the_drivers_credentials(bare_cluster, s3_bucket, clip, tiny_model, reference):
    c, nodes = bare_cluster
    store = f"{s3_bucket}/cluster.zarr"
    proc = _driver(c.address, "--input", clip, "--out", store, "--model", tiny_model, "--samples", "4", "--quiet")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    ledger = _ledger(store)
    assert len(ledger) == total_units(store)
    assert {e["node"] for e in ledger} == {n.node_id for n in nodes}  # both nodes wrote chunks and ledger entries to the bucket
    assert_same(arrays(store), reference)
    attrs = zarr.open_group(store, mode="r").attrs["segbatch"]
    assert attrs["status"] == "complete"
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()  # never in Ray's logs (a runtime environment's agent logs its variables)
    logged = [p for p in Path(c.head_node.get_session_dir_path()).rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert not logged, logged


@pytest.fixture
def gpu_node():
    """A head that runs no actors and one worker node with one (fake) GPU and three CPUs."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    node = c.add_node(num_cpus=3, num_gpus=1)
    c.wait_for_nodes()
    yield c, node
    c.shutdown()


@pytest.mark.slow
def test_auto_adds_actors_to_an_idle_gpu_until_its_node_has_no_cpu_left(gpu_node, tmp_path, runner, cli):
    """--actors-per-gpu auto: a stand-in device that takes no time idles fed by one actor; the pool adds two helpers on its
    node (its three CPUs), which use the owner's GPU; the store and `info` say three actors shared it."""
    from segbatch.demo.video import write_demo_video

    c, node = gpu_node
    video = write_demo_video(tmp_path / "drive.mp4", 160, 96, 128)
    folder = tmp_path / "actors"
    folder.mkdir()
    store = tmp_path / "shared.zarr"
    cmd = [sys.executable, "-m", "tests.helpers.shared_gpu", c.address, video, store, folder, "3"]
    proc = subprocess.run([*map(str, cmd)], capture_output=True, text=True, timeout=400, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["actors_per_gpu"] == [3] and summary["actors"] == 3, summary
    started = [json.loads(p.read_text()) for p in folder.glob("actor-*")]
    assert sorted(a["helper"] for a in started) == [False, True, True]
    assert len({a["gpus"] for a in started}) == 1 and started[0]["gpus"]  # the helpers use the GPU Ray gave the owner
    assert {a["node"] for a in started} == {node.node_id}
    r = runner.invoke(cli, ["info", str(store)])
    assert r.exit_code == 0 and "on 3 actor(s) [cpu], 1 GPU, 3 actors each" in r.output, r.output
