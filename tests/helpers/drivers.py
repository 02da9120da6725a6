"""Running `segbatch run` as a separate driver process, to kill or interrupt it mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import zarr

from segbatch.store import LEDGER


def finished_units(store: Path) -> int:
    """Ledger entries written so far (0 while the store does not exist yet)."""
    try:
        return int((zarr.open_group(str(store), mode="r")[LEDGER][...] != "").sum())
    except Exception:
        return 0


def total_units(store: Path) -> int:
    return zarr.open_group(str(store), mode="r")[LEDGER].shape[0]


def start_driver(ray_address: str, *args: object) -> subprocess.Popen:
    """`segbatch run ARGS` in its own process, joined to the test session's Ray cluster (its actors die with it)."""
    cmd = [sys.executable, "-m", "segbatch", "run", *map(str, args), "--address", ray_address, "--quiet"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_units(store: Path, proc: subprocess.Popen, count: int = 1, timeout: float = 120) -> None:
    """Return once `count` units are in the ledger (or the driver ended, or time ran out)."""
    deadline = time.time() + timeout
    while finished_units(store) < count and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)


def kill_driver_mid_run(store: Path, proc: subprocess.Popen) -> int:
    """SIGKILL the driver once a unit is finished; check it died mid-run, leaving a "running" store; returns the units done."""
    wait_for_units(store, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = finished_units(store)
    assert 1 <= done < total_units(store), f"the driver was not killed mid-run ({done} of {total_units(store)} units done)"
    assert zarr.open_group(str(store), mode="r").attrs["segbatch"]["status"] == "running"
    return done


def start_local_driver(*args: object) -> subprocess.Popen:
    """`segbatch run ARGS` in its own process, starting a local Ray runtime of its own (no --address, no RAY_ADDRESS)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "segbatch", "run", *map(str, args), "--quiet"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time) of every live (not zombie) process, from /proc (Linux)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        state, parent, *rest = stat[stat.rindex(b")") + 2 :].split()
        if state not in (b"Z", b"X"):
            table[int(entry.name)] = (int(parent), int(rest[17]))  # starttime, field 22 of /proc/PID/stat
    return table


def descendants(pid: int) -> dict[int, int]:
    """`pid`'s live descendants now: pid -> start time (so a pid reused later is not mistaken for one of them)."""
    table = _processes()
    found: dict[int, int] = {}
    stack = [pid]
    while stack:
        parent = stack.pop()
        for child, (ppid, start) in table.items():
            if ppid == parent and child not in found:
                found[child] = start
                stack.append(child)
    return found


def still_alive(processes: dict[int, int]) -> dict[int, str]:
    """Those of `processes` (pid -> start time) still running: pid -> command line."""
    table = _processes()
    alive = {}
    for pid, start in processes.items():
        if table.get(pid, (0, None))[1] == start:
            try:
                alive[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
            except OSError:
                continue
    return alive
