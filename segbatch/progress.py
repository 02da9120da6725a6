"""Progress on stderr: a bar for people at a terminal, unit lines with -v, JSON lines for orchestrators; stdout stays clean.

`segbatch run` reports through a `RunProgress`:

- `--progress bar` (the default): a tqdm bar, shown only at a terminal and never with `--quiet`;
- `--progress json`: one JSON object per line, for orchestrators and `ray job logs` (a `start` line, then one
  `unit` line per finished unit with done/total units, items, rate and ETA), whatever the terminal or `--quiet`;
- `-v`: one line per finished unit (its seconds and where they went), and at the end the seconds of each
  pipeline stage over the run's units and the stage that bounds the run.

Before the first unit finishes (a minute and more on a cold machine) a `StartUp` says what is going on, a
phase at a time: planning, starting Ray, starting the actors, loading the model, the first unit running (on
the progress line, as `phase` JSON lines before and after the `start` line, as `-v` lines).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, ClassVar

from tqdm import tqdm

from segbatch.location import redact

PROGRESS_MODES = ("bar", "json")


def progress_bar(total: int | None, desc: str, unit: str, quiet: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr (items/s and ETA), disabled when quiet or stderr is not a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True, **kwargs)


def note(message: str, quiet: bool = False) -> None:
    """A one-line status message on stderr (stdout stays clean for data), above the progress line when there is one."""
    if not quiet:
        tqdm.write(redact(message), file=sys.stderr)
        sys.stderr.flush()


class StartUp:
    """What a command says between its start and its first finished unit, one phase at a time.

    On a cold machine a minute and more goes by before a unit finishes:
    planning the input, starting Ray, starting the actors, loading the model
    on each, running the first unit. Each phase replaces the last on the
    progress line at a terminal (the bar, once it appears, says the phase as
    its description until the first unit is done); `--progress json` gets a
    `phase` event for each (as it gets the `unit` events, whatever `--quiet`
    says); `-v` a line for each. With `--quiet` nothing shows at a terminal.

    One for the length of a command (`with StartUp(...)`): the engine says
    phases through `phase()` and `RunProgress` finds the line here, so no
    layer between the command and the actor pool has to carry it.
    """

    current: ClassVar[StartUp | None] = None  # the command's, while its block runs

    def __init__(self, quiet: bool = False, verbose: int = 0, mode: str = "bar") -> None:
        self.verbose, self.mode = verbose, mode
        self.live = mode == "bar" and not quiet and sys.stderr.isatty()  # a line to rewrite: where a bar would show
        self.message = ""  # the phase going on
        self.over = False  # the first unit finished: nothing more to say
        self.line: tqdm | None = None  # the status line at a terminal, until the bar takes its place
        self.bar: tqdm | None = None  # the run's bar, once it exists
        self.started = time.perf_counter()
        self.outer: StartUp | None = None

    def __enter__(self) -> StartUp:
        self.outer, StartUp.current = StartUp.current, self
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._clear_line()  # an error's one line starts on a line of its own
        StartUp.current = self.outer

    def say(self, name: str, message: str, **fields: Any) -> None:
        """Phase `name` begins: `message` says it in words; `fields` go into its JSON event."""
        if self.over:
            return
        self.message = message
        if self.mode == "json":
            event = {"event": "phase", "phase": name, "message": message, "elapsed": round(time.perf_counter() - self.started, 3), **fields}
            print(json.dumps(event), file=sys.stderr, flush=True)
        if self.verbose:
            note(message)
        if not self.live:
            return
        if self.bar is not None:
            self.bar.set_description_str(message)
        elif self.line is not None:
            self.line.set_description_str(message)
        else:
            self.line = tqdm(file=sys.stderr, bar_format="{desc}", desc=message, leave=False, dynamic_ncols=True)

    def hand_over(self) -> str:
        """The line is wiped for the run's bar (set `bar` once made), which says the phase until the first unit finishes: its description."""
        self._clear_line()
        return self.message if self.live and not self.over and self.message else RUN_DESCRIPTION

    def first_unit_done(self) -> None:
        """Start-up is over: the bar says what it counts from now on."""
        if not self.over and self.bar is not None and self.live:
            self.bar.set_description_str(RUN_DESCRIPTION)
        self.over = True

    def _clear_line(self) -> None:
        if self.line is not None:
            self.line.close()  # leave=False: the line is wiped
            self.line = None


RUN_DESCRIPTION = "segmenting"  # the bar's description once units finish


def phase(name: str, message: str, **fields: Any) -> None:
    """Say that start-up phase `name` begins (see StartUp); nothing outside a command's `with StartUp(...)` block."""
    if StartUp.current is not None:
        StartUp.current.say(name, redact(message), **{k: redact(v) if isinstance(v, str) else v for k, v in fields.items()})


class RunProgress:
    """What a run says while its units finish: the bar, `-v` unit lines and the stage summary, or `--progress json` lines.

    Counts cover the whole store: units a resumed run finds done count as done
    from the start (`done` starts there), while `rate` and `eta` come from
    this run's own pace (items per second since it started).

    Args:
        units, items: the store's units and items (frames, tiles, images).
        done_units, done_items: how many of them were finished before this run.
        noun: what an item is called (frame, tile, image).
        describe: a unit in words (for `-v`).
        size: a unit's items.
        quiet, verbose, mode: `--quiet`, the count of `-v`, `--progress`.
    """

    def __init__(
        self,
        units: int,
        items: int,
        done_units: int = 0,
        done_items: int = 0,
        noun: str = "item",
        describe: Callable[[Any], str] = str,
        size: Callable[[Any], int] = lambda unit: 1,
        quiet: bool = False,
        verbose: int = 0,
        mode: str = "bar",
    ) -> None:
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress mode {mode!r} is not one of {', '.join(PROGRESS_MODES)}")
        self.units, self.items, self.done_units, self.done_items = units, items, done_units, done_items
        self.noun, self.describe, self.size = noun, describe, size
        self.quiet, self.verbose, self.mode = quiet, verbose, mode
        self.ran_units = self.ran_items = 0  # this run's
        self.stages: dict[str, float] = {}  # seconds per pipeline stage over this run's units
        self.started = time.perf_counter()
        self.startup = StartUp.current  # the command's start-up line, whose place this bar takes
        description = self.startup.hand_over() if self.startup is not None else RUN_DESCRIPTION
        self.bar = progress_bar(items - done_items, description, noun, quiet or mode != "bar")
        if self.startup is not None:
            self.startup.bar = self.bar

    def __enter__(self) -> RunProgress:
        self.started = time.perf_counter()
        if self.mode == "json":
            self._json("start")
        if self.verbose:
            already = f" ({self.done_units} done before)" if self.done_units else ""
            self._line(f"segmenting {self.items - self.done_items} {self.noun}s in {self.units - self.done_units} units{already}")
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.bar.close()
        if kind is None and self.verbose and self.stages:
            self._line(stage_line(self.stages, self.ran_units))

    def unit_done(self, unit: Any, entry: Any = None) -> None:
        """A unit finished; `entry` is its ledger entry (seconds, stages), as its worker returned it."""
        if self.startup is not None:
            self.startup.first_unit_done()
        n = self.size(unit)
        self.done_units += 1
        self.done_items += n
        self.ran_units += 1
        self.ran_items += n
        self.bar.update(n)
        stats: Mapping[str, Any] = entry if isinstance(entry, Mapping) else {}
        stages: Mapping[str, Any] = stats["stages"] if isinstance(stats.get("stages"), Mapping) else {}
        for stage, seconds in stages.items():
            self.stages[stage] = self.stages.get(stage, 0.0) + float(seconds)
        if self.mode == "json":
            self._json("unit", **_unit_key(unit), seconds=stats.get("seconds"))
        if self.verbose:
            self._line(self._unit_line(unit, n, stats, stages))

    def rate(self) -> float:
        """Items per second in this run so far."""
        elapsed = time.perf_counter() - self.started
        return self.ran_items / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds left at this run's pace (None before its first unit)."""
        rate = self.rate()
        return (self.items - self.done_items) / rate if rate > 0 else None

    # inside

    def _unit_line(self, unit: Any, n: int, stats: Mapping[str, Any], stages: Mapping[str, Any]) -> str:
        seconds = stats.get("seconds")
        took = f" in {float(seconds):.2f} s" if isinstance(seconds, (int, float)) else ""
        where = f" ({', '.join(f'{k} {float(v):.2f}' for k, v in stages.items() if float(v) >= 0.005)})" if stages else ""
        eta = self.eta()
        left = f", about {eta:.0f} s left" if eta is not None and self.done_units < self.units else ""
        return f"{self.describe(unit)}: {n} {self.noun}{'s' if n != 1 else ''}{took}{where} [{self.done_units}/{self.units} units{left}]"

    def _json(self, event: str, **extra: Any) -> None:
        eta = self.eta()
        line = {
            "event": event,
            "done": self.done_units,
            "total": self.units,
            "items": self.done_items,
            "items_total": self.items,
            "noun": self.noun,
            "elapsed": round(time.perf_counter() - self.started, 3),
            "rate": round(self.rate(), 3),
            "eta": round(eta, 1) if eta is not None else None,
            **extra,
        }
        print(json.dumps(line), file=sys.stderr, flush=True)

    def _line(self, text: str) -> None:
        if self.bar.disable:
            print(text, file=sys.stderr, flush=True)
        else:
            self.bar.write(text, file=sys.stderr)  # above the bar, which stays at the bottom


def stage_line(stages: Mapping[str, float], units: int) -> str:
    """The run's seconds per pipeline stage (summed over its units' workers) and the busiest stage: what bounds the run."""
    busy = {k: v for k, v in stages.items() if k != "wait"}
    bottleneck = f"; bottleneck: {max(busy, key=lambda k: busy[k])}" if busy else ""
    spent = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
    return f"stage seconds over {units} unit{'s' if units != 1 else ''} (all workers): {spent}{bottleneck}"


def _unit_key(unit: Any) -> dict[str, Any]:
    """A unit's ledger row, and its group when it is a unit of a job of many inputs."""
    group = getattr(unit, "group", "")
    return ({"group": group} if group else {}) | {"unit": unit.id}
