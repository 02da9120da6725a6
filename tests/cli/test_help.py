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


def _first_sentence(text: str) -> str:
    words = text.split("\n\n")[0].split()
    ends = [i for i, word in enumerate(words) if word.endswith(".")]
    return " ".join(words[: ends[0] + 1] if ends else words)


@pytest.mark.parametrize("path", [(), *(p for p in _commands(root) if isinstance(root.commands[p[0]], click.Group) and len(p) == 1)], ids=" ".join)
def test_each_commands_summary_shows_whole_in_its_groups_help(runner, path):
    result = runner.invoke(root, [*path, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    listing = " ".join(result.output.split("Commands:", 1)[1].split())  # wrapped lines joined
    group = root
    for name in path:
        group = group.commands[name]
    for name, command in group.commands.items():
        summary = _first_sentence(command.help or "")
        assert len(summary) > 10 and f"{name} {summary}" in listing, (name, summary, result.output)
    assert "..." not in listing  # click's cut: "the most uncertain items,..."
