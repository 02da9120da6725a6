"""How a run ends: its figures and closing line, the store marked complete, failed or resumable (Ctrl-C), its ledger checked."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from segbatch.engine.session import stop_signal
from segbatch.errors import Interrupted, RunError, first_line
from segbatch.lease import LeaseLostError
from segbatch.location import Location
from segbatch.store import finished_units, update_attrs

if TYPE_CHECKING:
    from zarr import Group

    from segbatch.engine.groups import InputState


@dataclass
class RunSummary:
    """What the run did, for the closing line and the store's attributes."""

    items: int = 0  # frames, tiles or images done by this run
    units: int = 0
    skipped_units: int = 0
    seconds: float = 0.0
    actors: int = 0
    device: str = ""
    actors_per_gpu: list[int] = field(default_factory=list)  # the most actors that fed each GPU at once (empty on CPUs)
    problems: list[dict[str, Any]] = field(default_factory=list)
    noun: str = "frame"
    stitch_seconds: float | None = None

    def line(self, out: Location) -> str:
        rate = self.items / self.seconds if self.seconds > 0 else 0.0
        resumed = f", {self.skipped_units} units already done" if self.skipped_units else ""
        resumed += f", {shared(self.actors_per_gpu)}" if self.actors_per_gpu else ""
        stitched = f", stitched in {self.stitch_seconds:.1f} s" if self.stitch_seconds is not None else ""
        return (
            f"segmented {self.items} {self.noun}s in {self.seconds:.1f} s ({rate:.2f} {self.noun}s/s) on {self.actors} actor(s) "
            f"[{self.device}]{resumed}{stitched} -> {out}"
        )


def shared(actors_per_gpu: Sequence[int]) -> str:
    """'2 GPUs, 3 actors each' or 'actors per GPU 3, 2': how the actors shared the devices."""
    counts = list(actors_per_gpu)
    gpus = f"{len(counts)} GPU{'s' if len(counts) != 1 else ''}"
    if len(set(counts)) == 1:
        return f"{gpus}, {counts[0]} actor{'s' if counts[0] != 1 else ''} each"
    return f"{gpus}, actors per GPU {', '.join(map(str, counts))}"


@dataclass
class JobSummary(RunSummary):
    """A job's figures: its units' as a run's, and the inputs done and failed."""

    inputs: int = 0
    complete: int = 0
    already: int = 0  # inputs complete before this run (--resume)
    failed: list[InputState] = field(default_factory=list)

    def line(self, out: Location) -> str:
        rate = self.items / self.seconds if self.seconds > 0 else 0.0
        failed = f", {len(self.failed)} failed" if self.failed else ""
        stitched = f", stitched in {self.stitch_seconds:.1f} s" if self.stitch_seconds is not None else ""
        already = f" ({self.already} done before)" if self.already else ""
        return (
            f"segmented {self.items} {self.noun}s of {self.complete} of {self.inputs} inputs{already}{failed} in {self.seconds:.1f} s "
            f"({rate:.2f} {self.noun}s/s) on {self.actors} actor(s) [{self.device}]{stitched} -> {out}"
        )


@contextmanager
def recorded_outcome(root: Group, total: int, what: str, left: Callable[[], int] | None = None, fail: Callable[[str], None] | None = None) -> Iterator[None]:
    """Make a run's end visible in the store: Ctrl-C, SIGTERM or SIGHUP leave it resumable (exit 130, 143, 129), any failure marks it failed.

    `left` counts what is still to do and `fail` marks the store failed
    (defaults: a single store's ledger and attributes; a job store has its own).
    """
    try:
        yield
    except KeyboardInterrupt:
        todo = left() if left is not None else total - len(finished_units(root))
        of = f" of {total}" if left is None else ""
        message = f"interrupted with {todo}{of} {what} left; finish with the same command and --resume"
        raise Interrupted(message, signum=stop_signal()) from None
    except Exception as exc:
        if not isinstance(exc, LeaseLostError):  # a run that lost its store writes nothing more to it
            try:
                (fail or (lambda why: update_attrs(root, status="failed", error=why)))(first_line(exc))
            except Exception:  # noqa: S110  (marking it failed failed too, a read-only store say: the first cause is what the user needs)
                pass
        raise


def finished_or_fail(root: Group, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The ledger, every unit `ids` names in it (else the store is marked failed and the run says --resume finishes it)."""
    ledger = finished_units(root)
    missing = [i for i in ids if i not in ledger]
    if missing:
        update_attrs(root, status="failed", error=f"{len(missing)} units never finished")
        raise RunError(f"{len(missing)} units never finished (first: {missing[0]}); finish with --resume")
    return ledger


def stage_totals(ledger: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Seconds per pipeline stage over every unit, and the stage that bounds the run (what to make faster)."""
    totals: dict[str, float] = {}
    for entry in ledger.values():
        for stage, seconds in entry.get("stages", {}).items():
            totals[stage] = totals.get(stage, 0.0) + float(seconds)
    if not totals:
        return {}
    busy = {k: v for k, v in totals.items() if k != "wait"}
    return {"seconds": {k: round(v, 3) for k, v in totals.items()}, "bottleneck": max(busy, key=lambda k: busy[k]) if busy else None}


def mark_complete(root: Group, problems: list[dict[str, Any]], summary: RunSummary, totals: dict[str, Any], ledger: Mapping[int, Mapping[str, Any]]) -> None:
    """The final attributes: status complete, the problems, and the run's figures (stage times included)."""
    summary.problems = problems
    update_attrs(
        root,
        drop=("error",),
        status="complete",
        problems=problems,
        summary={
            **totals,
            "worker_seconds": round(sum(float(s.get("seconds", 0.0)) for s in ledger.values()), 3),
            "wall_seconds": round(summary.seconds, 3),
            "actors": summary.actors,
            "device": summary.device,
            **({"actors_per_gpu": summary.actors_per_gpu} if summary.actors_per_gpu else {}),
            "stages": stage_totals(ledger),
        },
    )
