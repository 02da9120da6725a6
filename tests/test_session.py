"""The pieces of a command's Ray session: stop signals as KeyboardInterrupt, their exit codes, the reaper."""

import os
import signal
import subprocess
import sys
import time

import pytest

from segbatch.engine.session import child_processes, reap_on_exit, runtime_tag, stop_signal, stop_signals
from segbatch.status import ExitStatus
from tests.helpers.drivers import descendants, still_alive


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reaper reads /proc")
def test_the_reaper_ends_the_processes_started_their_descendants_and_late_tagged_ones_when_let_go():
    before = child_processes()
    late = other = None
    with runtime_tag() as tag:
        shell = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300"])  # stands for what ray.init starts
    try:
        deadline = time.monotonic() + 10
        while len(descendants(shell.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = {pid: start for pid, start in descendants(os.getpid()).items() if pid == shell.pid} | descendants(shell.pid)
        assert len(tree) == 3
        reaper = reap_on_exit(before, tag)
        assert reaper is not None
        # started after the reaper's last look and not below what it knows (as an agent a raylet starts just before it dies): found by its tag
        late = subprocess.Popen(["sleep", "300"], env={**os.environ, tag.split("=")[0]: tag.split("=")[1]})
        other = subprocess.Popen(["sleep", "300"])  # untagged, started afterwards: none of the reaper's business
        reaper.close()  # what ray_session does after ray.shutdown; a killed driver's pipe ends the same way
        assert shell.wait(timeout=10) is not None and late.wait(timeout=10) is not None
        assert not still_alive(tree), still_alive(tree)
        assert other.poll() is None
    finally:
        for proc in (shell, late, other):
            if proc is not None:
                proc.kill()
                proc.wait()
