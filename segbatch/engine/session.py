"""What a command's Ray session adds to the process: the Ray it was told to use, stop signals handled like Ctrl-C, and no Ray
processes left behind.

Which Ray: --address when given; else RAY_ADDRESS when the environment sets
it (Ray Jobs does); else a private local runtime, started for the command and
gone with it. Never the cluster the last `ray start` on the machine recorded
in Ray's temp folder (what ray.init(address=None) would join: another job's
cluster, or a dead one). ray.init runs in a thread of its own, so joining is
bounded (CONNECT_TIMEOUT_S, then one line naming the address) and a stop
while Ray starts is a stop like any other.

SIGINT (Ctrl-C), SIGTERM (Kubernetes, SLURM, `docker stop`, `timeout`) and
SIGHUP (a closed terminal) stop a run alike: a KeyboardInterrupt in the main
thread, so the run leaves its store resumable and ends with one line; the
signal is remembered for the exit code (128 + its number). Only the first
one interrupts: those that follow (three quick Ctrl-Cs) find the run
stopping already, and are noted, not raised into its cleanup (which would
lose the closing line, or crash Ray's shutdown). The handlers are installed
before ray.init and again after it: ray.init sets its own SIGTERM handling
(exit 15, and a stack dump from its C++ core), so ours win; the previous ones
come back when the session ends.

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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from segbatch.heap import worker_arenas

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
REAPER_EXIT_WAIT_S = 10.0

_stopped_by: list[int] = []  # the stop signals received during the current (or last) session, first first


def stop_signal() -> int:
    """The signal that stopped the last run: the first SIGINT, SIGTERM or SIGHUP received (SIGINT when none was: a plain
    KeyboardInterrupt)."""
    return _stopped_by[0] if _stopped_by else int(signal.SIGINT)


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    _stopped_by.append(signum)
    if len(_stopped_by) == 1:
        raise KeyboardInterrupt  # Ray's waits turn any exception a handler raises into a plain KeyboardInterrupt anyway


def signal_handlers(handlers: dict[int, Any] | None = None) -> dict[int, Any]:
    """The Python handlers of the stop signals now; given `handlers`, set those again first (a library that replaced them at
    the C level, as Ray's core does for SIGTERM, is overruled). Main thread only: elsewhere, nothing."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    for sig, handler in (handlers or {}).items():
        if handler is not None:
            signal.signal(sig, handler)
    return {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}


@contextmanager
def stop_signals() -> Iterator[None]:
    """For the length of the block: SIGINT, SIGTERM and SIGHUP interrupt once (a KeyboardInterrupt, the signal remembered
    for stop_signal()); those that follow the first are noted only, so the run's cleanup is never interrupted."""
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


@contextmanager
def command_signals() -> Iterator[None]:
    """For a whole command in its own process (the console script): stop signals as in stop_signals(), so a second Ctrl-C
    never interrupts the cleanup of the first, wherever it lands; once the command is over, none at all, so that nothing
    interrupts the process's exit (the exit code is the command's; Ray's atexit hooks run undisturbed)."""
    try:
        with stop_signals():
            yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)


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


def reap_on_exit(before: set[int], tag: str, session: str) -> Reaper | None:
    """Start a reaper for the processes ray.init started (this process's children not in `before`, all tagged with `tag`,
    all using the Ray `session` folder, when not ""); None when it started none.

    The session is the caller's to name: only the runtime this process started
    (never one it merely shares, as a test suite's) may be reaped by its folder.
    """
    started = child_processes() - before
    if not started:
        return None
    try:
        return Reaper(started, tag, session)
    except OSError:  # no reaper: Ray's own fate-sharing still ends most of them
        return None


PROBE_TIMEOUT_S = 5.0  # nothing listens at HOST:PORT: said in seconds
CONNECT_TIMEOUT_S = 30.0  # something listens, but ray.init cannot join it (not Ray's port, a token it lacks): it would retry for minutes
START_TIMEOUT_S = 300.0  # a private local runtime that has not started by then never will (Ray's own waits are shorter)
LOCAL = "local"  # ray.init's address for a new runtime of this process's own


def ray_target(address: str | None) -> str:
    """The Ray a command uses: `address` (--address) when given; else RAY_ADDRESS when the environment sets it (Ray Jobs
    does); else LOCAL, a private runtime -- never the cluster a `ray start` recorded on the machine (ray.init(None) would
    join that)."""
    if address:
        return address
    return os.environ.get("RAY_ADDRESS", "").strip() or LOCAL


@contextmanager
def ray_session(address: str | None, verbose: int = 0) -> Iterator[None]:
    """Ray for the length of a command (see ray_target): joined or started on entry, shut down on exit if this started it.

    Meanwhile SIGINT, SIGTERM and SIGHUP stop the command (exit 130, 143, 129),
    from before Ray starts, and a local runtime this started goes with the
    driver even if it is killed.
    """
    with stop_signals():  # before ray.init too: a stop while Ray starts ends the command as any stop does (Ray's handler: exit 15)
        before = child_processes()
        with runtime_tag() as tag, worker_arenas():  # every process of a runtime ray.init starts here carries them
            try:
                started = ensure_ray(address, verbose)
            except BaseException:
                _reap_now(before, tag)  # what a start that failed or was stopped left running
                raise
        reaper = None
        try:
            reaper = reap_on_exit(before, tag, _session_dir()) if started else None
            yield
        finally:
            if started:
                _shutdown_ray()
            if reaper is not None:
                reaper.close()


def ensure_ray(address: str | None, verbose: int = 0) -> bool:
    """Join or start the command's Ray (see ray_target); True when this call did, False when this process had it already.

    ray.init runs in a thread (RayStarter) while this one waits, for
    CONNECT_TIMEOUT_S at most when joining: then one line naming the address,
    exit 2. A stop while Ray starts lets the start finish, shuts Ray down and
    stops. Ray's own logs (its driver's, and what workers print) reach stderr
    at `verbose` >= 2 (`-vv`); otherwise only its errors.
    """
    import logging

    import ray

    from segbatch.errors import InputError, RunError, first_line

    if ray.is_initialized():
        return False
    target = ray_target(address)
    check_worker_imports()
    if target not in (LOCAL, "auto"):
        probe(target)
    handlers = signal_handlers()
    starter = RayStarter(
        address=target,
        include_dashboard=False,
        log_to_driver=verbose >= 2,
        logging_level=logging.INFO if verbose >= 2 else logging.ERROR,
        configure_logging=True,
    )
    timeout = START_TIMEOUT_S if target == LOCAL else CONNECT_TIMEOUT_S
    try:
        # quiet: a join that fails makes Ray's core print warnings every few seconds, and a SIGTERM before the handlers are
        # back (below) a stack dump; what went wrong is said in one line
        with _quiet_stderr(verbose < 2):
            stopped = not starter.wait(timeout)
            signal_handlers(handlers)  # ray.init's core replaced the SIGTERM handler at the C level: ours again
    except KeyboardInterrupt:  # a stop signal between the two
        stopped = True
    if stopped:
        if starter.ready.is_set() and starter.error is None:
            _shutdown_ray()
        raise KeyboardInterrupt
    if not starter.ready.is_set():  # still trying: left to itself (a daemon thread), the command ends here
        if target == LOCAL:
            raise RunError(f"the local Ray runtime did not start in {START_TIMEOUT_S:.0f} s (see Ray's logs in its temp folder)")
        raise InputError(f"cannot reach the Ray cluster at {target}: no answer in {CONNECT_TIMEOUT_S:.0f} s (is it a Ray cluster, and may this user join it?)")
    if starter.error is not None:
        if isinstance(starter.error, ConnectionError | ValueError | RuntimeError):
            raise InputError(f"cannot reach the Ray cluster at {target}: {first_line(starter.error)}") from None
        raise starter.error
    return True


class RayStarter(threading.Thread):
    """ray.init(**kwargs) in a thread of its own, which then lives on until Ray is shut down.

    The main thread waits for it, interruptibly and for a bounded time (a
    join can hang for minutes), and ray.init, off the main thread, leaves the
    process's SIGTERM handler alone. The thread outlives the start because
    the processes a local runtime starts die with the thread that started
    them (Linux's parent-death signal follows the thread, not the process).
    """

    current: RayStarter | None = None  # the one that started this process's Ray, until it is shut down

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(name="segbatch-ray-start", daemon=True)
        self.kwargs = kwargs
        self.error: BaseException | None = None  # what ray.init raised
        self.ready = threading.Event()  # ray.init returned or raised
        self.released = threading.Event()  # Ray was shut down: the thread may end
        RayStarter.current = self
        self.start()

    def run(self) -> None:
        import ray

        try:
            ray.init(**self.kwargs)
        except BaseException as exc:  # noqa: B036  (handed to the waiting thread, whatever it is)
            self.error = exc
        self.ready.set()
        if self.error is None:
            self.released.wait()

    def wait(self, timeout: float) -> bool:
        """Wait until ray.init returns or raises, or `timeout` s pass; False when a stop signal came meanwhile (then the
        wait goes on, as long again at most, so that a runtime half started is whole when it is shut down)."""
        deadline, stopped = time.monotonic() + timeout, False
        while not self.ready.is_set() and time.monotonic() < deadline:
            try:
                self.ready.wait(max(0.0, deadline - time.monotonic()))
            except KeyboardInterrupt:
                stopped, deadline = True, time.monotonic() + timeout
        return not stopped


@contextmanager
def _quiet_stderr(quiet: bool) -> Iterator[None]:
    """For the block, when `quiet`: file descriptor 2 goes nowhere (what Ray's C++ core writes there, which no logging level
    silences, included); this process says what went wrong itself, in one line."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _shutdown_ray() -> None:
    """ray.shutdown, then let the thread that started Ray end."""
    import ray

    ray.shutdown()
    starter, RayStarter.current = RayStarter.current, None
    if starter is not None:
        starter.released.set()


def _reap_now(before: set[int], tag: str) -> None:
    """End at once the processes a start left behind (this process's new children, the tagged ones)."""
    reaper = reap_on_exit(before, tag, _session_dir())
    if reaper is not None:
        reaper.close()


def check_worker_imports() -> None:
    """Refuse to start Ray's workers where they would run another copy of segbatch than this driver's.

    Ray puts the driver's working folder first on its workers' sys.path. A
    segbatch/ folder there that is a namespace package (the clone, seen from
    its parent folder) loses to an installed regular package (the editable
    install is a path entry; see setup.cfg), but a regular package there (the
    root of another checkout) wins, and the workers would run that code.
    """
    import segbatch
    from segbatch.errors import InputError

    try:
        here = Path.cwd() / "segbatch"
        ours = Path(segbatch.__file__).resolve().parent
        other = (here / "__init__.py").is_file() and here.resolve() != ours
    except OSError:  # no working folder (deleted): nothing there for the workers to import
        return
    if other:
        raise InputError(f"{here} is another copy of segbatch than this one ({ours}), and Ray's workers would import it: run from another folder")


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


def pool_size(actors: int | None, gpus_per_actor: float | None, cpus_per_actor: float, units: int, actors_per_gpu: int | None = 1) -> tuple[int, float]:
    """(actors, GPUs per actor): `actors_per_gpu` per GPU (or one per `cpus_per_actor` CPUs) unless `actors` says, never
    more than units or the CPUs hold. Under `auto` (None) an actor per GPU holds it whole; the pool adds helpers.

    A pool the cluster could never place is refused here, before a store exists.
    """
    import ray

    from segbatch.errors import InputError

    if gpus_per_actor is not None and actors_per_gpu != 1:
        raise InputError("--gpus-per-actor and --actors-per-gpu both say how actors share a GPU; give one of them")
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    if gpus_per_actor is not None:
        gpus = gpus_per_actor
    elif resources.get("GPU", 0) > 0:
        gpus = 1.0 if actors_per_gpu is None else 1.0 / actors_per_gpu
    else:
        gpus = 0.0
    if actors is not None:
        n_actors = actors
    elif gpus > 0:
        n_actors = max(1, min(int(resources.get("GPU", 0) / gpus + 1e-9), int(resources.get("CPU", 1) // cpus_per_actor)))
    else:
        n_actors = max(1, int(resources.get("CPU", 1) // cpus_per_actor))
    n_actors = max(1, min(n_actors, units))
    for what, need, have in (("CPUs", n_actors * cpus_per_actor, resources.get("CPU", 0.0)), ("GPUs", n_actors * gpus, resources.get("GPU", 0.0))):
        if need > have + 1e-9:
            raise InputError(f"{n_actors} actors need {need:g} {what} but the Ray cluster has {have:g}; lower --actors or the per-actor request")
    return n_actors, gpus
