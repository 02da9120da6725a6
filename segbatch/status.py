"""Exit codes, defined once (docs/architecture.md, "Exit codes")."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """What `segbatch` returns to the shell."""

    OK = 0
    FAILED = 1  # a run that failed after starting; its output stays resumable
    BAD_INPUT = 2  # bad usage or bad input (click's convention)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); the output stays resumable
    TERMINATED = 143  # SIGTERM (128 + 15: Kubernetes, SLURM, docker stop, timeout); like Ctrl-C
    HANGUP = 129  # SIGHUP (128 + 1: the terminal closed); like Ctrl-C

    @classmethod
    def stopped_by(cls, signum: int) -> ExitStatus:
        """The exit code of a run stopped by SIGINT, SIGTERM or SIGHUP: 128 + the signal's number."""
        return cls(128 + int(signum))
