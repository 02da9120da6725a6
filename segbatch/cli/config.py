"""`--config FILE`: a YAML workflow file supplies a command's options; flags on the command line override it.

A file has one section per command (`run:`, `audit:`), each mapping option
names (as on the command line, dashes or underscores) to values. A key the
command does not have is an error that names it, so a typo never silently
falls back to a default. Relative paths are taken from the current folder,
exactly as they would be on the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

SECTIONS = ("run", "audit")


def read_config(path: Path) -> dict[str, Any]:
    """The parsed file, checked to be a mapping of known command sections."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise click.BadParameter(f"{path}: {exc.strerror or exc}", param_hint="--config") from None
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"{path} is not valid YAML ({str(exc).splitlines()[0]})", param_hint="--config") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: expected sections {', '.join(SECTIONS)} at the top level", param_hint="--config")
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise click.BadParameter(f"{path}: unknown section {unknown[0]!r} (expected {', '.join(SECTIONS)})", param_hint="--config")
    return data


def _as_default(param: click.Parameter, value: Any) -> Any:
    """YAML values as click expects defaults: lists for comma-separated options become "a,b,c"."""
    if isinstance(value, list) and not param.multiple:
        return ",".join(str(v) for v in value)
    return value


def _load(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is None:
        return None
    section = read_config(value).get(ctx.command.name or "")
    if section is None:
        raise click.BadParameter(f"{value} has no {ctx.command.name!r} section", param_hint="--config")
    if not isinstance(section, dict):
        raise click.BadParameter(f"{value}: section {ctx.command.name!r} must map option names to values", param_hint="--config")
    by_name = {p.name: p for p in ctx.command.params if p.name and p.name != "config"}
    for p in ctx.command.params:  # the flag's own spelling (e.g. input for --input whose variable is input_path)
        for opt in getattr(p, "opts", []):
            if opt.startswith("--") and p.name != "config":
                by_name[opt[2:].replace("-", "_")] = p
    defaults = {}
    for key, v in section.items():
        p = by_name.get(str(key).replace("-", "_"))
        if p is None:
            raise click.BadParameter(f"{value}: unknown key {ctx.command.name}.{key}", param_hint="--config")
        defaults[p.name] = _as_default(p, v)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


config_opt = click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    is_eager=True,
    expose_value=False,
    callback=_load,
    help="YAML workflow file with this command's options (flags given here override it).",
)
