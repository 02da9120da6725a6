"""Exit codes, defined once (DESIGN.md, CLI contract)."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """What `segbatch` returns to the shell."""

    OK = 0
    FAILED = 1  # a run that failed after starting; its output stays resumable
    BAD_INPUT = 2  # bad usage or bad input (click's convention)
    INTERRUPTED = 130  # Ctrl-C
