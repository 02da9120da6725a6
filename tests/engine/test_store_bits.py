"""A store is bit for bit what the engine wrote before it was restructured (issue 20: one run path for single inputs and jobs).

tests/data/store_bits.json was recorded with the engine of commit 90ad581: for
each kind (a video, a raster, an image folder, a job of videos, a job of
rasters), the description `tests.helpers.store_bits.store_bits` gives of the
store `segbatch run` wrote. Each case here builds the same inputs and
checkpoint, runs the same command through the CLI on the session's Ray
runtime, and compares: first the inputs (a difference there is the
generators', not the engine's), then arrays, attributes and ledger.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from tests.helpers.store_bits import CASES, differences, run_case

RECORDED = Path(__file__).parents[1] / "data" / "store_bits.json"
SHOWN = 40  # difference lines in a failure message


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(RECORDED.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_store_keeps_its_bits(case, recorded, ray_address, runner, cli, tmp_path):
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if capability != recorded["cpu_capability"]:
        pytest.skip(
            f"the bits were recorded under torch CPU capability {recorded['cpu_capability']}, this CPU has {capability} (float kernels differ across ISAs)"
        )
    want = recorded["cases"][case]
    found = run_case(case, tmp_path, runner, cli, ray_address)

    changed = differences(want["inputs"], found["inputs"])
    if changed:
        pytest.fail(f"{case}: the inputs' generators (or the libraries writing them) changed, not the engine:\n" + "\n".join(changed), pytrace=False)

    # the store's version, its configuration's software versions and the fingerprint digested from them differ by design
    # under other versions of segbatch, torch or PyAV: compared only under the recorded ones
    versions = (want["software"].get("", {}).get("config.software"), found["software"].get("", {}).get("config.software"))
    left_out = {"inputs"} if versions[0] == versions[1] else {"inputs", "software"}
    if "software" in left_out:
        warnings.warn(f"{case}: software-dependent attributes not compared (recorded with {versions[0]}, now {versions[1]})", stacklevel=1)
    changed = differences({k: v for k, v in want.items() if k not in left_out}, {k: v for k, v in found.items() if k not in left_out})
    if changed:
        shown = "\n".join(changed[:SHOWN]) + (f"\n... and {len(changed) - SHOWN} more" if len(changed) > SHOWN else "")
        pytest.fail(f"{case}: the store differs from the one recorded in {RECORDED.name} in {len(changed)} places:\n{shown}", pytrace=False)
