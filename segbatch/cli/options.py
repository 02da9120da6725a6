"""Options shared by several commands, so the same flag means the same thing everywhere."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from segbatch import location
from segbatch.model.catalog import ARCHS, MAX_WIDTH, PLACEMENTS

EMPTY_PATH = "an empty path names no file (write . for the current folder)"


def _refuse_empty(kind: click.ParamType[Any], value: Any, param: click.Parameter | None, ctx: click.Context | None) -> None:
    """An empty (or blank) value is a mistake, e.g. an unset shell variable; never the current folder Path("") makes of it."""
    if isinstance(value, str) and not value.strip():
        kind.fail(EMPTY_PATH, param, ctx)


class LocationType(click.ParamType[location.Location]):
    """A path, or an fsspec URL (s3://bucket/key, gs://..., file:///...) kept as a string; never empty."""

    name = "path|url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        _refuse_empty(self, value, param, ctx)
        return location.parse(value) if isinstance(value, str) else value


LOCATION = LocationType()
SOURCE_HELP = "Where the store's input is now, when not where the run read it (moved, or a signed URL, whose signature is never recorded)."


class FileRefused(click.ClickException):
    """A file or folder that cannot be used as given (missing, in the way, not writable): one line and exit 2.

    Not a usage error, so click prints no "Usage: ... Try --help" lines: the
    command was typed right and help would not say what is wrong.
    """

    exit_code = 2  # segbatch.status.ExitStatus.BAD_INPUT (imported lazily elsewhere: `--help` stays instant)


class PathType(click.Path):
    """click.Path (same checks and options) that refuses an empty value: every local path option uses this one.

    A path that must exist and does not is refused as a missing file (FileRefused), not as a usage error. A file:// URL is
    the local path it names (`~` is expanded too), so every spelling of a place reaches the same checks.
    """

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        _refuse_empty(self, value, param, ctx)
        if isinstance(value, str):
            value = location.local_path(value)
        if self.exists and isinstance(value, (str, Path)) and not os.path.lexists(value) and not (self.allow_dash and str(value) == "-"):
            what = "file" if not self.dir_okay else "folder" if not self.file_okay else "file or folder"
            flag = f"{param.opts[0]} " if isinstance(param, click.Option) else ""
            raise FileRefused(f"{flag}{value}: no such {what}")
        return super().convert(value, param, ctx)


def path_type(**kwargs: Any) -> PathType:
    """A local path option's type: `path_type(exists=True, dir_okay=False)`; values are pathlib Paths."""
    return PathType(path_type=Path, **kwargs)


class CommandGroup(click.Group):
    """A group whose help lists each command with its summary whole (its docstring's first sentence), wrapped to the terminal.

    click cuts a summary at 45 characters ("the most uncertain items,..."), which
    leaves half a phrase where the one line that says what a command does belongs.
    """

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=SUMMARY_LIMIT)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


SUMMARY_LIMIT = 1000  # characters: never reached by a first sentence, so none is cut


quiet_opt = click.option("--quiet", "-q", is_flag=True, help="No progress bar or notes (the one-line summary and warnings stay).")
verbose_opt = click.option(
    "--verbose",
    "-v",
    count=True,
    help="More on stderr: -v a line per finished unit (seconds, stages) and the stage times at the end; -vv Ray's own logs too.",
)
progress_opt = click.option(
    "--progress",
    type=click.Choice(["bar", "json"]),
    default="bar",
    show_default=True,
    help="bar: a progress bar at a terminal; json: one JSON line per finished unit on stderr (done, total, items, rate, eta), for orchestrators.",
)
json_opt = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
seed_opt = click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed (dropout masks, shuffles).")
overwrite_opt = click.option("--overwrite", is_flag=True, help="Replace an existing output.")
width_opt = click.option(
    "--width",
    type=click.FloatRange(min=0, min_open=True, max=MAX_WIDTH),
    default=1.0,
    show_default=True,
    help="Channel-width multiplier (e.g. 0.25 for a small CPU model).",
)


def check_verbosity(quiet: bool, verbose: int) -> None:
    """--quiet and --verbose ask for opposite things: refused, rather than one silently winning."""
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose exclude each other")


arch_opt = click.option("--arch", type=click.Choice(ARCHS), default="segnet-basic", show_default=True, help="Model architecture.")
dropout_opt = click.option(
    "--dropout",
    type=click.Choice(PLACEMENTS),
    default="central",
    show_default=True,
    help="Where the Bayesian SegNet dropout layers go (central = the released models).",
)


def parse_size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """HxW -> (height, width), both positive."""
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HxW, e.g. 360x480") from None
    if h < 1 or w < 1:
        raise click.BadParameter(f"{value!r}: height and width must be positive")
    return h, w


def parse_names(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    """A comma-separated list of class names."""
    if not value:
        return ()
    names = tuple(n.strip() for n in value.split(","))
    if any(not n for n in names):
        raise click.BadParameter(f"{value!r} has an empty class name")
    return names


def refuse_existing(path: Any, overwrite: bool) -> None:
    """Never clobber a user's file without --overwrite."""
    if Path(path).exists() and not overwrite:
        raise FileRefused(f"{path} exists; pass --overwrite to replace it")


def _read_classes_file(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, Any] | None:
    """A JSON file {"names": [...], "palette": [[r, g, b], ...]} (palette optional)."""
    if value is None:
        return None
    import json

    try:
        with open(value, encoding="utf-8") as f:
            data = json.load(f)
        names = tuple(str(n) for n in data["names"])
        palette = tuple(tuple(int(c) for c in rgb) for rgb in data.get("palette", ()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise click.BadParameter(f"{value}: not a classes file ({type(exc).__name__}: {exc})") from None
    if palette and (len(palette) != len(names) or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in palette)):
        raise click.BadParameter(f"{value}: the palette needs one [r, g, b] (0-255) per class name")
    return {"names": names, "palette": palette}


classes_file_opt = click.option(
    "--classes-file",
    type=PathType(exists=True, dir_okay=False),
    callback=_read_classes_file,
    help='JSON {"names": [...], "palette": [[r, g, b], ...]} naming (and colouring) the classes.',
)


def resolve_classes(
    names: tuple[str, ...], classes_file: dict[str, Any] | None, num_classes: int | None
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Class names and palette from --class-names or --classes-file (not both), checked against --classes."""
    if names and classes_file:
        raise click.UsageError("give --class-names or --classes-file, not both")
    palette: tuple[tuple[int, int, int], ...] = ()
    if classes_file:
        names, palette = classes_file["names"], classes_file["palette"]
    if names and num_classes is not None and len(names) != num_classes:
        raise click.UsageError(f"{len(names)} class names for --classes {num_classes}")
    return names, palette


def check_writable(path: Any) -> None:
    """Fail before the work, not after it, when the output's folder is missing or read-only."""
    parent = Path(path).parent
    if not parent.is_dir():
        raise FileRefused(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise FileRefused(f"cannot write {path}: folder {parent} is not writable")
