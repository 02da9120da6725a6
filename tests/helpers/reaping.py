"""The reaper's scenario, run in a process of its own (tests/test_session.py): no Ray there, nothing of the suite's to end.

Run in the test process itself, the reaper would see that process's children
(the suite's shared Ray runtime among them) and, given a Ray session, every
process holding its files: it ended the suite's GCS and raylet once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from segbatch.engine.session import child_processes, reap_on_exit, runtime_tag
from tests.helpers.drivers import descendants, still_alive


def reap_tree_and_late_tagged() -> None:
    """A tree standing for what ray.init starts, and a tagged process started after the reaper's last look, end when the
    reaper is let go; an untagged process started afterwards does not. Raises AssertionError otherwise."""
    assert "ray" not in sys.modules, "this scenario runs without Ray"
    before = child_processes()
    late = other = None
    with runtime_tag() as tag:
        shell = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300"])  # stands for what ray.init starts
    try:
        deadline = time.monotonic() + 30
        while len(descendants(shell.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = {pid: start for pid, start in descendants(os.getpid()).items() if pid == shell.pid} | descendants(shell.pid)
        assert len(tree) == 3, tree
        reaper = reap_on_exit(before, tag, session="")
        assert reaper is not None
        # started after the reaper's last look and not below what it knows (as an agent a raylet starts just before it dies): found by its tag
        name, value = tag.split("=")
        late = subprocess.Popen(["sleep", "300"], env={**os.environ, name: value})
        other = subprocess.Popen(["sleep", "300"])  # untagged, started afterwards: none of the reaper's business
        reaper.close()  # what ray_session does after ray.shutdown; a killed driver's pipe ends the same way
        assert shell.wait(timeout=30) is not None and late.wait(timeout=30) is not None
        assert not still_alive(tree), still_alive(tree)
        assert other.poll() is None
    finally:
        for proc in (shell, late, other):
            if proc is not None:
                proc.kill()
                proc.wait()
    assert "ray" not in sys.modules, "the reaper imported Ray"


if __name__ == "__main__":
    reap_tree_and_late_tagged()
