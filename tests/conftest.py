"""Shared fixtures: a CLI runner and tiny models that run fast on 2 CPU cores."""

from __future__ import annotations

import pytest
from click.testing import CliRunner


def pytest_collection_modifyitems(items):
    """A test that runs Ray end to end (the session's runtime, or a driver process of its own) is slow: `-m "not slow"` keeps
    the fast part (units, contracts, parsers, messages) under a couple of minutes."""
    for item in items:
        if "ray_address" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cli():
    from segbatch.cli.main import cli

    return cli


@pytest.fixture(scope="module")
def runner_module() -> CliRunner:
    """A runner for module-scoped fixtures (a clean reference store made once per module)."""
    return CliRunner()


@pytest.fixture(scope="module")
def cli_module():
    from segbatch.cli.main import cli

    return cli


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray runtime for the whole test session (4 logical CPUs so 3 actors fit on 2 cores); its own, never a cluster
    that a `ray start` on the machine recorded (what ray.init would join without an address)."""
    import logging

    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """An untrained 11-class SegNet-Basic at width 0.25 with random BatchNorm statistics (non-trivial outputs)."""
    from segbatch.model import save_checkpoint
    from segbatch.model.checkpoint import ModelSpec
    from tests.helpers.models import tiny_segnet_basic

    model = tiny_segnet_basic(11)
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    save_checkpoint(model, path, ModelSpec.of(model))
    return path
