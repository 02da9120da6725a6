import subprocess
import sys

import click
import pytest

from segbatch.cli.main import cli as root


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path", [(), *_commands(root)], ids=lambda p: " ".join(p) or "segbatch")
def test_every_command_has_help(runner, path):
    result = runner.invoke(root, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_help_imports_no_heavy_library():
    code = (
        "import sys; from segbatch.cli.main import cli\n"
        "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'ray', 'av', 'rasterio', 'zarr') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "segbatch", "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("segbatch, version")
