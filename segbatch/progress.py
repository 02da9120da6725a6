"""Progress on stderr: a bar for people at a terminal, unit lines with -v, JSON lines for orchestrators; stdout stays clean.

`segbatch run` reports through a `RunProgress`:

- `--progress bar` (the default): a tqdm bar, shown only at a terminal and never with `--quiet`;
- `--progress json`: one JSON object per line, for orchestrators and `ray job logs` (a `start` line, then one
  `unit` line per finished unit with done/total units, items, rate and ETA), whatever the terminal or `--quiet`;
- `-v`: one line per finished unit (its seconds and where they went), and at the end the seconds of each
  pipeline stage over the run's units and the stage that bounds the run.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from tqdm import tqdm

PROGRESS_MODES = ("bar", "json")


def progress_bar(total: int | None, desc: str, unit: str, quiet: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr (items/s and ETA), disabled when quiet or stderr is not a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True, **kwargs)


def note(message: str, quiet: bool = False) -> None:
    """A one-line status message on stderr (stdout stays clean for data)."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


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
        self.bar = progress_bar(items - done_items, "segmenting", noun, quiet or mode != "bar")

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
    """A unit's ledger row (a tile is its id; other units carry `.id`), and its group when it is a unit of a job of many inputs."""
    if hasattr(unit, "group") and hasattr(unit, "unit"):
        return {"group": unit.group, **_unit_key(unit.unit)}
    if isinstance(unit, int):
        return {"unit": unit}
    return {"unit": getattr(unit, "id", str(unit))}
