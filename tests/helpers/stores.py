"""What the CLI tests share: invoking a command in-process, and reading and comparing the arrays of stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

ARRAYS = ("labels", "uncertainty", "entropy", "confidence")


def invoke(runner, cli, *args):
    """`segbatch ARGS` in this process (arguments as strings); exceptions propagate, as a bug should."""
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def run(runner, cli, *args):
    """`segbatch run ARGS --quiet`, an unexpected exception kept in the result (exit 1) like a user would see it."""
    return runner.invoke(cli, ["run", *map(str, args), "--quiet"])


def arrays(store: Path | str, names: tuple[str, ...] = ARRAYS) -> dict[str, np.ndarray]:
    """The store's output arrays that exist (a --samples 0 store has no uncertainty)."""
    root = zarr.open_group(str(store), mode="r")
    return {name: root[name][...] for name in names if name in root}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def one_line(output: str) -> str:
    """The output's only line (an error message is one line, never a traceback)."""
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "Traceback" not in output and "internal error" not in output
    return lines[0]
