"""`--config FILE`: a YAML workflow file supplies a command's options; flags on the command line override it.

A file has one section per command (`run:`, `audit:`), each mapping option
names (as on the command line, dashes or underscores) to values. A key the
command does not have is an error that names it, so a typo never silently
falls back to a default. Each value is checked as its flag's would be (and
stricter: 1.5 is not an integer, "no" is not false, null is no path), with
an error naming the file and the key. Relative paths are taken from the
current folder, exactly as they would be on the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import click

from segbatch.cli.options import LocationType, path_type

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


# Options whose value is a comma-separated list on the command line: a YAML list is joined into one.
COMMA_LISTS = frozenset({"extra_outputs", "bands"})


OMIT = object()  # `key: null` for an option whose default is "not given": the same as leaving the key out
_NO_DEFAULT = (None, getattr(click.core, "UNSET", None))  # an option without a default (click >= 8.2 marks it UNSET)


def check_value(ctx: click.Context, param: click.Parameter, value: Any, where: str) -> Any:
    """A file's value as the flag would take it, checked as the flag is (type, range, callback); `where` names it in errors.

    Stricter than click's own conversion of defaults, which would truncate
    1.5 to 1 for an integer, read "no" as false, or take null for a required
    option: a file value must be what a person could have typed, of the
    right kind. Returns the value for click's default_map, or OMIT.
    """

    def refuse(why: str) -> NoReturn:
        raise click.BadParameter(f"{where}: {why}", ctx=ctx, param_hint="--config")

    given = value
    if value is None:
        if param.required or param.default not in _NO_DEFAULT or getattr(param, "is_flag", False):
            refuse("needs a value, not null")
        return OMIT
    if isinstance(value, list) and param.name in COMMA_LISTS:
        if any(isinstance(v, (bool, list, dict)) or v is None for v in value):
            refuse(f"expected a list of plain values, got {value!r}")
        value = ",".join(str(v) for v in value)
    elif isinstance(value, (list, dict)):
        refuse(f"expected one value, not a {'list' if isinstance(value, list) else 'mapping'} ({value!r})")
    kind = param.type
    if getattr(param, "is_flag", False) or isinstance(kind, click.types.BoolParamType):
        if not isinstance(value, bool):
            refuse(f"expected true or false, got {value!r}")
    elif isinstance(kind, click.types.IntParamType):
        if isinstance(value, (bool, float)):
            refuse(f"expected an integer, got {value!r}")
    elif isinstance(kind, click.types.FloatParamType):
        if isinstance(value, bool):
            refuse(f"expected a number, got {value!r}")
    elif isinstance(value, bool):
        refuse(f"expected {kind.name}, got {value!r}")
    elif isinstance(kind, (click.Path, LocationType)) and not isinstance(value, str):
        refuse(f"expected a path, got {value!r}")
    try:
        converted = param.type_cast_value(ctx, value)
        if param.callback is not None:
            param.callback(ctx, param, converted)
    except click.BadParameter as exc:
        number = isinstance(given, (int, float)) and isinstance(kind, click.types.StringParamType)
        refuse(exc.message + (" (YAML read the value as a number: quote it)" if number else ""))
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
        target = by_name.get(str(key).replace("-", "_"))
        if target is None:
            raise click.BadParameter(f"{value}: unknown key {ctx.command.name}.{key}", param_hint="--config")
        checked = check_value(ctx, target, v, f"{value}: {ctx.command.name}.{key}")
        if checked is not OMIT:
            defaults[target.name] = checked
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


config_opt = click.option(
    "--config",
    type=path_type(exists=True, dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=_load,
    help="YAML workflow file with this command's options (flags given here override it).",
)
