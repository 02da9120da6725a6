"""The environment a user really has: a Ray cluster another job recorded, RAY_ADDRESS, an address that never answers,
a segbatch/ folder where the user stands, a read-only file system (issue 19, points 4, 5 and 9)."""

import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import zarr

from segbatch.cli.main import _as_cli_error
from segbatch.engine import reaper
from segbatch.engine.session import ray_target
from segbatch.errors import RunError
from tests.helpers.drivers import start_local_driver, still_alive
from tests.helpers.stores import run
from tests.helpers.videos import write_video

ROOT = Path(__file__).parents[2]
CONSOLE_SCRIPT = Path(sys.executable).with_name("segbatch")  # what a user types, beside the interpreter in the environment


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("videos") / "env.mp4", 16, gop=8)


def _run_args(video, model, out, *more):
    return ["run", "--input", str(video), "--out", str(out), "--model", str(model), "--samples", "1", "--actors", "1", "--quiet", *map(str, more)]


# Ray: the one it was told to use


def test_the_ray_a_command_uses(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_target(None) == "local"  # a private runtime: never what ray.init(address=None) picks (a recorded cluster)
    assert ray_target("10.0.0.5:6379") == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6379")  # Ray Jobs sets it for the job's entrypoint
    assert ray_target(None) == "10.0.0.7:6379" and ray_target("10.0.0.5:6379") == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", " ")
    assert ray_target(None) == "local"


@pytest.fixture
def recorded_cluster():
    """A `ray start --head` that Ray's temp folder records as the machine's current cluster, with no CPU (no actor of ours
    fits in it): what ray.init(address=None) joins. Its temp folder is its own (RAY_TMPDIR, short: Ray's sockets live
    below it), so no other process on the machine sees it; its processes carry a tag, and end by it."""
    tmp = Path(tempfile.mkdtemp(prefix="rayrec", dir="/tmp"))
    name, value = "SEGBATCH_TEST_RECORDED_RAY", uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(tmp), name: value}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        f"--port={port}",
        "--num-cpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
    ]
    session = ""
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        recorded = (tmp / "ray" / "ray_current_cluster").read_text().strip()
        session = str((tmp / "ray" / "session_latest").resolve())  # the runs below make sessions of their own here too
        processes = reaper.tagged(f"{name}={value}", reaper.processes())
        assert "gcs_server" in " ".join(still_alive(processes).values())
        yield SimpleNamespace(env={"RAY_TMPDIR": str(tmp)}, address=recorded, session=Path(session), processes=processes)
    finally:
        reaper.end({}, f"{name}={value}", session, {os.getpid()})  # never `ray stop`: it ends every Ray on the machine
        shutil.rmtree(tmp, ignore_errors=True)


def _drivers_of(session, pid):
    """The log files a driver of process `pid` leaves in a Ray session it joined."""
    return list(session.glob(f"logs/*driver*_{pid}.log"))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the recorded cluster's processes in /proc")
def test_without_address_a_run_starts_its_own_ray_beside_a_recorded_cluster_and_leaves_it_alone(recorded_cluster, video, tiny_model, tmp_path):
    out = tmp_path / "own.zarr"
    proc = start_local_driver("--input", video, "--out", out, "--model", tiny_model, "--samples", 1, "--actors", 1, env=recorded_cluster.env)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err  # joined, it would have been refused: the recorded cluster has no CPU for an actor
    assert zarr.open_group(str(out), mode="r").attrs["segbatch"]["status"] == "complete"
    assert _drivers_of(recorded_cluster.session, proc.pid) == []  # it never joined
    assert set(still_alive(recorded_cluster.processes)) == set(recorded_cluster.processes)  # untouched

    # RAY_ADDRESS (Ray Jobs sets it) is the Ray to use: that cluster, refused here for its lack of CPUs, in one line
    env = recorded_cluster.env | {"RAY_ADDRESS": recorded_cluster.address, "RAY_AUTH_MODE": "token"}  # `ray start` clusters want the token
    r = subprocess.run(
        [sys.executable, "-m", "segbatch", *_run_args(video, tiny_model, tmp_path / "joined.zarr")],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "the Ray cluster has 0" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert set(still_alive(recorded_cluster.processes)) == set(recorded_cluster.processes)


@pytest.mark.slow
def test_joining_an_address_that_never_answers_gives_up_in_one_line(video, tiny_model, tmp_path):
    with socket.socket() as server:  # accepts connections (the kernel does, for the backlog) and never says a word
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        address = f"127.0.0.1:{server.getsockname()[1]}"
        prelude = "import segbatch.engine.session as session\nsession.CONNECT_TIMEOUT_S = 3.0"  # the bound, shortened for the test
        proc = start_local_driver("--input", video, "--out", tmp_path / "x.zarr", "--model", tiny_model, "--address", address, prelude=prelude)
        try:
            _, err = proc.communicate(timeout=120)  # ray.init alone would retry for minutes
        finally:
            proc.kill()
    assert proc.returncode == 2, err
    assert err.strip().splitlines() == [f"Error: cannot reach the Ray cluster at {address}: no answer in 3 s (is it a Ray cluster, and may this user join it?)"]


# workers import the installed package, wherever the user stands


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["console script", "python -m"])
def test_a_run_from_the_folder_above_a_clone_imports_the_installed_package(ray_address, video, tiny_model, tmp_path, entry):
    clone = tmp_path / "segbatch"  # `git clone .../segbatch` seen from where it was typed: a segbatch/ folder, no __init__.py
    (clone / "segbatch").mkdir(parents=True)
    (clone / "README.md").write_text("# segbatch\n")
    out = tmp_path / "out.zarr"
    command = [str(CONSOLE_SCRIPT)] if entry == "console script" else [sys.executable, "-m", "segbatch"]
    r = subprocess.run([*command, *_run_args(video, tiny_model, out, "--address", ray_address)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr  # was: "3 workers died while starting" (ImportError: cannot import name '__version__')
    assert zarr.open_group(str(out), mode="r").attrs["segbatch"]["status"] == "complete"


def test_a_run_from_the_root_of_another_copy_of_segbatch_is_refused_in_one_line(ray_address, video, tiny_model, tmp_path):
    other = tmp_path / "segbatch"  # another checkout's package: Ray's workers would import it before the installed one
    other.mkdir()
    (other / "__init__.py").write_text('__version__ = "0.0.1"\n')
    r = subprocess.run(
        [str(CONSOLE_SCRIPT), *_run_args(video, tiny_model, tmp_path / "x.zarr", "--address", ray_address)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert f"{other} is another copy of segbatch" in line and "run from another folder" in line
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.slow
def test_an_editable_install_is_a_path_entry_not_an_import_hook(tmp_path):
    """setuptools' import hook for a flat layout is consulted after sys.path, where a segbatch/ folder in the working
    directory wins as a namespace package; a .pth path entry makes the regular package win wherever the user stands."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    shutil.copytree(ROOT / "segbatch", src / "segbatch", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    code = f"from setuptools import build_meta; print(build_meta.build_editable({str(tmp_path / 'wheel')!r}))"
    r = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    wheel = zipfile.ZipFile(tmp_path / "wheel" / r.stdout.strip().splitlines()[-1])
    (pth,) = [n for n in wheel.namelist() if n.endswith(".pth")]
    assert wheel.read(pth).decode().strip().splitlines() == [str(src)]
    assert not [n for n in wheel.namelist() if "finder" in n]


# a file system that refuses the write


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (OSError(errno.EROFS, "Read-only file system", "/s.zarr/zarr.json"), 2, "Read-only file system: /s.zarr/zarr.json"),
        (PermissionError(errno.EACCES, "Permission denied", "/s.zarr/ledger"), 2, "Permission denied: /s.zarr/ledger"),
        (OSError(errno.ENOSPC, "No space left on device", "/s.zarr/c/0"), 1, None),  # free space, then --resume: not the same command failing again
    ],
)
def test_a_write_the_system_refuses_is_one_line_and_exit_2_however_it_was_wrapped(error, code, line):
    def raw():
        raise error

    def wrapped():  # as store.update_attrs does
        try:
            raw()
        except OSError as exc:
            raise RunError(f"writing the store failed: {exc.strerror}") from None

    for make, message in ((raw, line), (wrapped, f"writing the store failed: {error.strerror}")):
        try:
            make()
        except Exception as exc:
            cli_error = _as_cli_error(exc)
        assert cli_error.exit_code == code
        if code == 2:
            assert cli_error.message == message and "internal error" not in cli_error.message


def _can_mount_read_only(folder):
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} {folder}"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["--resume", "--overwrite"])
def test_a_store_on_a_read_only_file_system_is_refused_in_one_line(ray_address, runner, cli, video, tiny_model, tmp_path, mode):
    out = tmp_path / "store" / "ro.zarr"
    out.parent.mkdir()
    r = run(runner, cli, "--input", video, "--out", out, "--model", tiny_model, "--samples", 1, "--actors", 1)
    assert r.exit_code == 0, r.output
    if not _can_mount_read_only(out):
        pytest.skip("no user and mount namespaces here (unshare -rm) to make a read-only file system")
    before = sorted((f.relative_to(out), f.stat().st_mtime_ns) for f in out.rglob("*"))
    run_it = " ".join(map(str, [sys.executable, "-m", "segbatch", *_run_args(video, tiny_model, out, mode, "--address", ray_address)]))
    # the store alone is read-only (a mount of its own, in a mount namespace of this command's own): its folder stays writable
    script = f"mount --bind {out} {out} && mount -o remount,bind,ro {out} {out} && exec {run_it}"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "Read-only file system" in line and "internal error" not in line, line
    assert sorted((f.relative_to(out), f.stat().st_mtime_ns) for f in out.rglob("*")) == before
