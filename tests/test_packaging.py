"""A clean build: the wheel carries the demo model, and setuptools has nothing to warn about (issue 12, point 9)."""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_the_wheel_holds_the_demo_weights_and_the_build_prints_no_warning(tmp_path):
    pytest.importorskip("setuptools")
    # a copy of what the build reads: the build writes build/ and *.egg-info beside its sources, never in the checkout
    src = tmp_path / "src"
    shutil.copytree(ROOT / "segbatch", src / "segbatch", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    # the environment's setuptools (no index needed); -v shows the backend's own output, where its warnings go
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index", "-v", "-w", str(tmp_path / "wheel")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    output = r.stdout + r.stderr
    # Python warnings the build emits ("build_py.py:215: _Warning: Package 'segbatch.demo.weights' is absent from ...");
    # distutils' lowercase "warning: ... byte-compiling is disabled" lines only echo the environment (PYTHONDONTWRITEBYTECODE)
    warnings = [line for line in output.splitlines() if re.search(r"\w*Warning\b:", line) or "absent from the `packages`" in line]
    assert warnings == [], "\n".join(warnings)
    (wheel,) = (tmp_path / "wheel").glob("segbatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "segbatch/demo/weights/demo-segnet-basic.pt" in names
    assert "segbatch/cli/main.py" in names and not any("__pycache__" in n or n.startswith(("tests/", "benchmarks/")) for n in names)
