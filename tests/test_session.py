"""The pieces of a command's Ray session: stop signals as KeyboardInterrupt (the first only), their exit codes, the reaper."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segbatch.engine import session
from segbatch.engine.session import stop_signal, stop_signals
from segbatch.status import ExitStatus

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_interrupt_like_ctrl_c_for_the_block_only(signum, code):
    previous = signal.getsignal(signum)
    with pytest.raises(KeyboardInterrupt), stop_signals():
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler runs at once, between two bytecodes
    assert stop_signal() == signum and ExitStatus.stopped_by(stop_signal()) == code
    assert signal.getsignal(signum) is previous
    with stop_signals():
        pass
    assert stop_signal() == signal.SIGINT and ExitStatus.stopped_by(stop_signal()) == ExitStatus.INTERRUPTED == 130


def test_sigint_too_interrupts_once_for_the_block():
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), stop_signals():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    assert stop_signal() == signal.SIGINT and signal.getsignal(signal.SIGINT) is previous


def _noted(count):
    """Wait (bounded) until the handler has seen `count` stop signals: it runs in this thread at the next bytecode boundary."""
    deadline = time.monotonic() + 10
    while len(session._stopped_by) < count and time.monotonic() < deadline:
        pass
    return len(session._stopped_by)


def test_only_the_first_stop_signal_interrupts_the_ones_after_it_never_break_the_cleanup():
    cleaned = False
    with stop_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            # the run's cleanup (ledger count, ray.shutdown, the closing line): two quick Ctrl-Cs land in it
            for sent, signum in enumerate((signal.SIGINT, signal.SIGINT), start=2):
                os.kill(os.getpid(), signum)
                assert _noted(sent) == sent
            cleaned = True
    assert cleaned
    assert stop_signal() == signal.SIGTERM and ExitStatus.stopped_by(stop_signal()) == 143  # the first decides the exit code


def test_a_command_ignores_stop_signals_once_it_is_over():
    code = (
        "import os, signal\n"
        "from segbatch.engine.session import command_signals\n"
        "with command_signals():\n"
        "    pass\n"
        "os.kill(os.getpid(), signal.SIGINT); os.kill(os.getpid(), signal.SIGTERM)\n"  # as in an atexit hook: nothing happens
        "print(all(signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "True" and r.stderr == "", r.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reaper reads /proc")
def test_the_reaper_ends_the_processes_started_their_descendants_and_late_tagged_ones_when_let_go():
    # in a process of its own, without Ray: here, it would see the suite's Ray runtime among this process's children
    code = "from tests.helpers.reaping import reap_tree_and_late_tagged; reap_tree_and_late_tagged()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_the_variables_a_job_carries_are_never_printed():
    from segbatch.engine.runjob import RunJob
    from segbatch.owner import Fence
    from segbatch.stitch import StitchJob

    secret = {"AWS_SECRET_ACCESS_KEY": "never-printed-3f9a"}
    assert "never-printed" not in repr(RunJob(Fence("s3://b/x.zarr", "run"), None, None, secret))  # type: ignore[arg-type]
    assert "never-printed" not in repr(StitchJob("s3://b/x.zarr", None, "run", environment=secret))  # type: ignore[arg-type]
