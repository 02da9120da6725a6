"""One error root for the library; the CLI alone turns these into one-line messages and exit codes."""

from __future__ import annotations

import errno


class SegbatchError(Exception):
    """Root of every error segbatch raises on purpose."""


class InputError(SegbatchError, ValueError):
    """The user's input (a file, an option value, a dataset) cannot be used; exit code 2."""


class CheckpointError(InputError):
    """A checkpoint file is missing, corrupt, foreign, or does not fit the job."""


class DataError(InputError):
    """A dataset item is unusable (unreadable, wrong size, class id out of range); the message names the file."""


class RunError(SegbatchError, RuntimeError):
    """Work failed after it started; exit code 1 (the output stays resumable)."""


class Interrupted(SegbatchError):
    """The work was stopped: Ctrl-C, SIGTERM or SIGHUP (`signum`); exit code 128 + signum (130, 143, 129); the output stays resumable."""

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.signum = signum  # SIGINT (2) unless a SIGTERM (15) or SIGHUP (1) stopped it


class StoreBusyError(InputError):
    """Another live run owns the store (its lease is renewed): this command leaves it alone; exit code 2."""


class StoreError(InputError):
    """A store's attributes or ledger are unreadable or contradict each other (tampered, or damaged): exit code 2."""


def first_line(exc: BaseException) -> str:
    """An exception as one line: its message's first line, else its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def task_failure(exc: BaseException, what: str) -> SegbatchError:
    """The error a failed Ray task or actor call stands for: the cause it raised when that is ours (its type says the
    exit code), else a RunError saying `what` failed. Ray wraps a task's exception in one with a `cause`."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, SegbatchError):
        return cause
    return RunError(f"{what} failed: {first_line(cause if isinstance(cause, BaseException) else exc)}")


REFUSED_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})  # the system refuses the write: no retry helps


def environment_refusal(exc: BaseException) -> str | None:
    """When `exc` is, or was raised from or while handling, an OSError by which the system refused the command (a read-only
    file system, a permission denied): that error as one line naming its file; else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in REFUSED_ERRNOS:
            where = f": {current.filename}" if current.filename else ""
            return f"{current.strerror or current}{where}"
        current = current.__cause__ or current.__context__
    return None
