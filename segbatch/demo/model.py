"""The built-in demo model: SegNet-Basic trained on the synthetic street scenes.

It lets `segbatch run` work out of the box; it knows only the generator's
synthetic world, which is why every use prints a notice. README.md gives the
exact commands that reproduce the weights.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_NOTICE = "note: using the built-in demo model (SegNet-Basic trained on synthetic street scenes); pass --model CKPT for real data"


def demo_checkpoint_path() -> Path:
    """Where the package keeps the demo weights."""
    return Path(str(resources.files("segbatch.demo").joinpath("weights/demo-segnet-basic.pt")))
