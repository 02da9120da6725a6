"""Shared fixtures: a CLI runner and tiny models that run fast on 2 CPU cores."""

from __future__ import annotations

import pytest
from click.testing import CliRunner


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cli():
    from segbatch.cli.main import cli

    return cli
