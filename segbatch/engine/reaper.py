"""The reaper of a local Ray runtime: once the driver that started it is gone (even by SIGKILL), its processes go too.

Ray fate-shares the processes a driver starts (gcs_server, raylet, monitor,
dashboard, log monitor: PR_SET_PDEATHSIG), and its workers exit once their
raylet is gone; but the raylet's agents (dashboard agent, runtime-env agent)
then spend about a minute trying to tell the dead GCS that the raylet died.
A user running hundreds of jobs on one machine would pile them up, so the
driver (segbatch.engine.session.reap_on_exit) starts this script, standard
library only, as `python -I -S reaper.py TAG SESSION_DIR PID...` with the PIDs of the
processes ray.init started, and a pipe on stdin whose other end only the
driver holds. Every SCAN_EVERY_S it notes those processes and their
descendants (pid and start time, so a reused pid is never touched); at the
pipe's end of file (the driver closed it after ray.shutdown, or died) it
kills whichever of them are still alive, and every process whose
environment carries TAG (the driver set it for ray.init, so every process of
that runtime inherits it: one started since the last scan, and orphaned when
its parent died, is still found) or holds a file open in the runtime's
session folder (a process that rewrote its environment area for its title
still logs there), and exits. Linux only (/proc).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

SCAN_EVERY_S = 2.0
GRACE_S = 3.0  # after SIGTERM, before SIGKILL


def processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks since boot) of every live process, from /proc."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) ": state, ppid, ..., starttime (field 22)
        if fields[0] not in (b"Z", b"X"):  # a zombie is gone, whoever has yet to reap it
            table[int(entry.name)] = (int(fields[1]), int(fields[19]))
    return table


def children(pid: int, table: dict[int, tuple[int, int]] | None = None) -> dict[int, int]:
    """The direct children of `pid`: pid -> start time."""
    table = processes() if table is None else table
    return {child: start for child, (parent, start) in table.items() if parent == pid}


def family(known: dict[int, int], table: dict[int, tuple[int, int]]) -> dict[int, int]:
    """The processes of `known` (pid -> start time) still alive, and all their descendants."""
    kids: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        kids.setdefault(parent, []).append(pid)
    found = {pid: start for pid, start in known.items() if pid in table and table[pid][1] == start}
    stack = list(found)
    while stack:
        for child in kids.get(stack.pop(), ()):
            if child not in found:
                found[child] = table[child][1]
                stack.append(child)
    return found


def tagged(tag: str, table: dict[int, tuple[int, int]]) -> dict[int, int]:
    """The processes whose environment holds `tag` (NAME=VALUE): pid -> start time."""
    marker = tag.encode() + b"\0"
    found = {}
    for pid, (_, start) in table.items():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read() + b"\0"
        except OSError:
            continue
        if environ.startswith(marker) or b"\0" + marker in environ:
            found[pid] = start
    return found


def holding(folder: str, table: dict[int, tuple[int, int]]) -> dict[int, int]:
    """The processes with a file open under `folder` (a Ray session's logs): pid -> start time."""
    prefix = folder.rstrip("/") + "/"
    found = {}
    for pid, (_, start) in table.items():
        if not folder:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                    found[pid] = start
                    break
            except OSError:
                continue
    return found


def end(known: dict[int, int], tag: str, session: str, spared: set[int]) -> None:
    """SIGTERM what is left of `known`, its descendants, the tagged processes and those using the session (not `spared`);
    SIGKILL what is still there GRACE_S later."""
    table = processes()
    left = {pid: start for pid, start in (family(known, table) | tagged(tag, table) | holding(session, table)).items() if pid not in spared}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + (GRACE_S if sig == signal.SIGTERM else 0.0)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = family(left, processes())
        left = family(left, processes())


def main(argv: list[str]) -> None:
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # a terminal's signals are for the driver; its end is what this waits for
    tag, session, pids = argv[0], argv[1], argv[2:]
    spared = {os.getpid(), os.getppid()}  # itself, and the driver (which holds the session's files too, and may still be finishing)
    table = processes()
    known = {pid: table[pid][1] for pid in map(int, pids) if pid in table}
    while True:
        readable, _, _ = select.select([0], [], [], SCAN_EVERY_S)
        if readable and not os.read(0, 4096):
            break
        known = family(known, processes())
    end(known, tag, session, spared)


if __name__ == "__main__":
    main(sys.argv[1:])
