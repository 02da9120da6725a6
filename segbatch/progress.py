"""Progress bars on stderr: shown for people at a terminal, silent for scripts and `--quiet`."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, unit: str, quiet: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr (items/s and ETA), disabled when quiet or stderr is not a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True, **kwargs)


def note(message: str, quiet: bool = False) -> None:
    """A one-line status message on stderr (stdout stays clean for data)."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)
