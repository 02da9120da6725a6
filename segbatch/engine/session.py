"""What a command's Ray session adds to the process: stop signals handled like Ctrl-C, and no Ray processes left behind.

SIGTERM (Kubernetes, SLURM, `docker stop`, `timeout`) and SIGHUP (a closed
terminal) stop a run the way Ctrl-C does: a KeyboardInterrupt in the main
thread, so the run leaves its store resumable and ends with one line; the
signal is remembered for the exit code (128 + its number). The handlers are
installed after ray.init, which sets its own SIGTERM handler (exit 15) and
whose C++ core prints a stack dump on SIGTERM, so ours win; the previous
ones come back when the session ends.

A driver that started its own local Ray runtime also starts a reaper
(segbatch.engine.reaper), so that runtime's processes go within seconds of
the driver, however it ends (SIGKILL included). A cluster joined with
--address is never touched.

Standard library only at import: the CLI imports this to map a stop to its exit code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
REAPER_EXIT_WAIT_S = 10.0

_stopped_by: list[int] = []  # the stop signals received during the current (or last) session


def stop_signal() -> int:
    """The signal that stopped the last run: the first SIGTERM or SIGHUP received, else SIGINT (Ctrl-C)."""
    return _stopped_by[0] if _stopped_by else int(signal.SIGINT)


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    _stopped_by.append(signum)
    raise KeyboardInterrupt  # Ray's waits turn any exception a handler raises into a plain KeyboardInterrupt anyway


@contextmanager
def stop_signals() -> Iterator[None]:
    """For the length of the block: SIGTERM and SIGHUP interrupt like Ctrl-C, remembered for stop_signal()."""
    _stopped_by.clear()
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (and only it receives KeyboardInterrupt)
        return
    previous = {sig: signal.signal(sig, _on_stop_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def child_processes() -> set[int]:
    """The pids of this process's children (empty where there is no /proc)."""
    if not sys.platform.startswith("linux"):
        return set()
    from segbatch.engine.reaper import children

    try:
        return set(children(os.getpid()))
    except OSError:  # no /proc mounted
        return set()


REAP_TAG = "SEGBATCH_LOCAL_RAY"  # in the environment of every process of a Ray runtime a driver starts (value: a uuid)


@contextmanager
def runtime_tag() -> Iterator[str]:
    """For the block (ray.init): a unique NAME=VALUE in this process's environment, which the processes it starts inherit."""
    import uuid

    value = uuid.uuid4().hex
    os.environ[REAP_TAG] = value
    try:
        yield f"{REAP_TAG}={value}"
    finally:
        os.environ.pop(REAP_TAG, None)


def _session_dir() -> str:
    """The folder of the Ray session this process started ("" where Ray does not say)."""
    try:
        import ray

        node: Any = ray._private.worker._global_node
        return str(node.get_session_dir_path())
    except Exception:  # a private API: without it the reaper still has the pids and the tag
        return ""


class Reaper:
    """The reaper of the Ray processes this driver started; see segbatch.engine.reaper."""

    def __init__(self, pids: set[int], tag: str, session: str) -> None:
        from segbatch.engine import reaper

        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", reaper.__file__, tag, session, *map(str, sorted(pids))],
            stdin=subprocess.PIPE,  # its only writer is this process: end of file once it closes or dies
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C or hangup reaches the driver, not this
        )

    def close(self) -> None:
        """After ray.shutdown: let the reaper end whatever is left, and wait for it."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=REAPER_EXIT_WAIT_S)
        except (OSError, subprocess.TimeoutExpired):
            pass


def reap_on_exit(before: set[int], tag: str) -> Reaper | None:
    """Start a reaper for the processes ray.init started (this process's children not in `before`, all tagged with `tag`,
    all using its session folder); None when it started none."""
    started = child_processes() - before
    if not started:
        return None
    try:
        return Reaper(started, tag, _session_dir())
    except OSError:  # no reaper: Ray's own fate-sharing still ends most of them
        return None


PROBE_TIMEOUT_S = 5.0


@contextmanager
def ray_session(address: str | None, verbose: int = 0) -> Iterator[None]:
    """Ray for the length of a command: joined or started on entry, shut down on exit if this started it.

    Meanwhile SIGTERM and SIGHUP stop the command like Ctrl-C (exit 143, 129),
    and a local runtime this started goes with the driver even if it is killed.
    """
    before = child_processes()
    with runtime_tag() as tag:  # every process of a runtime ray.init starts here carries it
        started = ensure_ray(address, verbose)
    reaper = reap_on_exit(before, tag) if started else None
    with stop_signals():  # after ray.init, which installs its own SIGTERM handling
        try:
            yield
        finally:
            if started:
                import ray

                ray.shutdown()
            if reaper is not None:
                reaper.close()


def ensure_ray(address: str | None, verbose: int = 0) -> bool:
    """Join the given cluster, or start a local Ray runtime; True when this call started it.

    Ray's own logs (its driver's, and what workers print) reach stderr at `verbose` >= 2 (`-vv`); otherwise only its errors.
    """
    import logging

    import ray

    from segbatch.errors import InputError, first_line

    if ray.is_initialized():
        return False
    if address and address != "auto":
        probe(address)
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=verbose >= 2,
            logging_level=logging.INFO if verbose >= 2 else logging.ERROR,
            configure_logging=True,
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise InputError(f"cannot reach the Ray cluster at {address}: {first_line(exc)}") from None
    return True


def probe(address: str) -> None:
    """Fail in seconds, with one line, when nothing listens at HOST:PORT (ray.init would retry for minutes)."""
    import socket

    from segbatch.errors import InputError

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--address {address!r} is not auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise InputError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def pool_size(actors: int | None, gpus_per_actor: float | None, cpus_per_actor: float, units: int) -> tuple[int, float]:
    """(actors, GPUs per actor): one per GPU (or per `cpus_per_actor` CPUs) unless `actors` says, never more than units.

    A pool the cluster could never place is refused here, before a store exists.
    """
    import ray

    from segbatch.errors import InputError

    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    gpus = gpus_per_actor if gpus_per_actor is not None else (1.0 if resources.get("GPU", 0) > 0 else 0.0)
    if actors is not None:
        n_actors = actors
    elif gpus > 0:
        n_actors = max(1, int(resources.get("GPU", 0) / gpus))
    else:
        n_actors = max(1, int(resources.get("CPU", 1) // cpus_per_actor))
    n_actors = max(1, min(n_actors, units))
    for what, need, have in (("CPUs", n_actors * cpus_per_actor, resources.get("CPU", 0.0)), ("GPUs", n_actors * gpus, resources.get("GPU", 0.0))):
        if need > have + 1e-9:
            raise InputError(f"{n_actors} actors need {need:g} {what} but the Ray cluster has {have:g}; lower --actors or the per-actor request")
    return n_actors, gpus
