"""Shared fixtures: a CLI runner and tiny models that run fast on 2 CPU cores."""

from __future__ import annotations

import pytest
from click.testing import CliRunner


def pytest_collection_modifyitems(items):
    """A test that runs Ray end to end is slow: `-m "not slow"` keeps the fast part (units, contracts, parsers, messages)
    under a couple of minutes. Those on the session's runtime are marked here; a test whose driver process starts a runtime
    of its own says so with its own mark. An in-process run must take `ray_address`: without it, it starts a runtime per
    command, or joins the session's if an earlier test started it."""
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
def s3_server():
    """An S3-compatible server on 127.0.0.1 for the session, and the standard variables pointing obstore and GDAL at it; set
    before the Ray runtime starts (`ray_address` depends on this), as its workers take the driver's environment at start."""
    import os

    from tests.helpers.s3 import S3Server, environment

    server = S3Server()
    server.start()
    saved = {name: os.environ.get(name) for name in environment(server.port)}
    os.environ.update(environment(server.port))
    yield server
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.stop()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A new, empty bucket of the session's S3 server: its s3:// URL."""
    return s3_server.bucket()


@pytest.fixture(scope="session")
def ray_address(s3_server):
    """One local Ray runtime for the whole test session (`start_test_ray`: 2 CPUs, its own)."""
    import ray

    from tests.helpers.runtime import start_test_ray

    yield start_test_ray()
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
