"""What the CLI tests share: invoking a command in-process, and reading and comparing the arrays of stores."""

from __future__ import annotations

import json
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


def new_video_store(
    path: Path, frames: int, height: int, width: int, outputs: tuple[str, ...] = ARRAYS, float_dtype: str = "float16", fps: float = 25.0
) -> zarr.Group:
    """A video-kind store written directly (no model, no Ray): claimed, its arrays empty, its ledger one finished unit; the
    caller fills the arrays and marks it complete (`update_attrs(root, status="complete")`). Its source is `path`.mp4."""
    from segbatch.lease import Lease, claim
    from segbatch.store import LEDGER, StoreLayout, base_attrs, create_store

    layout = StoreLayout(
        dims=("frame", "y", "x"),
        shape=(frames, height, width),
        chunks=(8, height, width),
        num_classes=11,
        units=1,
        outputs=tuple(outputs),
        float_dtype=float_dtype,
        coords={"time": (("frame",), np.arange(frames) / fps, {"units": "s"})},
    )
    source = {"path": str(Path(path).with_suffix(".mp4")), "kind": "video", "codec": "h264", "rotation": 0, "frames": frames}
    source |= {"height": height, "width": width, "frame_range": [0, frames]}
    model = {"arch": "segnet-basic", "classes": [f"c{i}" for i in range(11)], "palette": [[i * 20, 0, 0] for i in range(11)], "sha256": "0" * 64}
    lease = Lease.new()
    claim(path, lease)
    root = create_store(path, layout, base_attrs(source, model, 4, 0, {}, lease.run) | {"unit_frames": frames})
    root[LEDGER][0] = json.dumps({"unit": 0, "frames": [0, frames], "run": lease.run})  # one unit, finished: a complete store's ledger is whole
    return root
