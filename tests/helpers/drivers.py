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


def signal_mid_run(store: Path, proc: subprocess.Popen, signum: int, count: int = 1) -> int:
    """Send `signum` to the driver at a known point: `count` units in the ledger, and the driver frozen (SIGSTOP), so that it
    cannot finish the run before the signal lands; checked mid-run, then let go (SIGCONT): the signal is the first thing it
    meets. Returns the units done when it was sent (its actors may still finish the units they hold)."""
    wait_for_units(store, proc, count)
    assert proc.poll() is None, "the driver ended before the signal could be sent"
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        while process_state(proc.pid) not in ("T", "t", ""):
            time.sleep(0.01)
        done = finished_units(store)
        assert count <= done < total_units(store), f"the signal would not land mid-run ({done} of {total_units(store)} units done)"
        os.kill(proc.pid, signum)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    return done


def process_state(pid: int) -> str:
    """The state letter of a process in /proc (R, S, T stopped, Z, ...); "" once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return ""
    return stat[stat.rindex(b")") + 2 :].split()[0].decode()


def signal_delivered(pid: int, signum: int) -> bool:
    """Whether no `signum` sent to `pid` is still pending (the kernel handed it to the process, or the process is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    bit = 1 << (signum - 1)
    return not any(line.split(":")[0] in ("SigPnd", "ShdPnd") and int(line.split()[1], 16) & bit for line in status.splitlines())


def kill_driver_mid_run(store: Path, proc: subprocess.Popen) -> int:
    """SIGKILL the driver once a unit is finished; check it died mid-run, leaving a "running" store; returns the units done."""
    wait_for_units(store, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = finished_units(store)
    assert 1 <= done < total_units(store), f"the driver was not killed mid-run ({done} of {total_units(store)} units done)"
    assert zarr.open_group(str(store), mode="r").attrs["segbatch"]["status"] == "running"
    return done


def start_local_driver(*args: object, prelude: str = "", env: dict[str, str] | None = None, new_session: bool = False) -> subprocess.Popen:
    """`segbatch run ARGS` in its own process, starting a local Ray runtime of its own (no --address, no RAY_ADDRESS).

    `prelude`: Python run in the driver before the command (to hold it at a
    known point); `env`: added to the environment; `new_session`: the driver
    leads a process group of its own, as a terminal's foreground job does.
    """
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (env or {})
    entry = [sys.executable, "-m", "segbatch"]
    if prelude:
        entry = [sys.executable, "-c", f"{prelude}\nimport sys\nsys.argv[0] = 'segbatch'\nfrom segbatch.cli.main import main\nmain()"]
    cmd = [*entry, "run", *map(str, args), "--quiet"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environ, start_new_session=new_session)


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
