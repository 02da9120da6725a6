"""`segbatch verify`: recompute a store's chunk digests against its ledger; exit 1 when any chunk is missing or altered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from segbatch.cli.options import LOCATION, json_opt

MAX_LINES = 20


@click.command()
@click.argument("store", type=LOCATION)
@click.option("--threads", type=click.IntRange(min=1), default=8, show_default=True, help="Chunks read in parallel.")
@click.option("--group", metavar="NAME", help="A job of many inputs: only the group of input NAME (default: every group with results).")
@json_opt
def verify(store: Path | str, threads: int, group: str | None, as_json: bool) -> None:
    """Check every chunk of STORE against the digests its ledger recorded (a scrub); exit 1 when any is missing or altered."""
    from segbatch.jobstore import reader_target
    from segbatch.status import ExitStatus

    job, target = reader_target(store, group, "verify")
    from segbatch.store import enclosing_store

    owner = enclosing_store(target) or store  # a job's group given as a path is in the job's hands: its root's lease
    ok = _verify_job(store, job, threads, as_json) if job is not None else _verify_one(target, threads, as_json, lease=owner)
    if not ok:
        click.get_current_context().exit(ExitStatus.FAILED)


def _verify_job(store: Path | str, job: dict[str, Any], threads: int, as_json: bool) -> bool:
    """Every group of a job that has results, one after the other; the job passes when every group does."""
    from segbatch import location
    from segbatch.jobstore import group_location
    from segbatch.verify import verify_store

    names = [i["name"] for i in job["inputs"] if location.exists(group_location(store, i["name"]))]
    reports = {name: verify_store(group_location(store, name), threads, lease=store) for name in names}
    bad = [name for name, r in reports.items() if not r.ok]
    without = [i["name"] for i in job["inputs"] if i["name"] not in reports]  # inputs that never got a group: nothing of theirs to check
    if as_json:
        groups = {name: r.as_dict() for name, r in reports.items()}
        click.echo(json.dumps({"store": str(store), "ok": not bad and not without, "groups": groups, "without_results": without}, indent=2))
        return not bad and not without
    for name in bad:
        _print_bad(reports[name], prefix=f"{name}: ")
    chunks = sum(r.chunks for r in reports.values())
    seconds = sum(r.seconds for r in reports.values())
    damaged = [name for name in bad if reports[name].complete]
    unfinished = [name for name in bad if not reports[name].complete] + without
    parts = [f"{len(damaged)} group(s) damaged (first: {damaged[0]})"] if damaged else []
    parts += [f"{len(unfinished)} input(s) not complete (first: {unfinished[0]})"] if unfinished else []
    click.echo(f"verified {chunks} chunks of {len(reports)} groups in {seconds:.1f} s: {'; '.join(parts) or 'all match'}", err=True)
    if parts:
        redo = _beyond_resume([group_location(store, name) for name in damaged], "its inputs and options")
        click.echo(f"{store}: {redo or '`segbatch run` with its inputs and options and --resume redoes what is damaged or not finished'}", err=True)
    return not parts


def _verify_one(store: Path | str, threads: int, as_json: bool, lease: Path | str) -> bool:
    from segbatch.verify import verify_store

    report = verify_store(store, threads, lease=lease)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print_bad(report)
        checked = f"{report.chunks} chunks" + (f" and {report.coordinates} coordinates" if report.coordinates else "")
        click.echo(f"verified {checked} of {report.units} units in {report.seconds:.1f} s: {_verdict(report)}{_unchecked(report)}", err=True)
        if report.bad_coordinates:
            click.echo(f"{store}: its coordinates are made once with the store; `segbatch run` with its options and --overwrite makes it again", err=True)
        elif report.bad or report.unfinished and report.complete:
            marked = " (marked damaged)" if report.marked == "damaged" else ""
            redo = _beyond_resume([store], "its options") or "`segbatch run` with its options and --resume redoes those units"
            click.echo(f"{store} is damaged{marked}: {redo}", err=True)
        elif not report.ok:
            click.echo(f"{store} is not complete (status {report.status}): `segbatch run` with its options and --resume finishes it", err=True)
    return report.ok


def _beyond_resume(damaged: list[Path | str], what: str) -> str | None:
    """The advice for damaged stores (a store, or a job's groups) that --resume cannot repair: a raster's whose tiles/ are gone."""
    from segbatch.store import open_store, store_attrs
    from segbatch.tilestore import tiles_removed

    for path in damaged:
        root = open_store(path)
        if tiles_removed(root, store_attrs(root)["source"]["kind"]):
            where = "its" if len(damaged) == 1 else f"{path}'s"
            return f"{where} tiles/ were removed after stitching, so --resume cannot redo its units; `segbatch run` with {what} and --overwrite makes it again"
    return None


def _verdict(report: Any) -> str:
    """A report in a few words: all match, what is bad, or why a store that is not complete does not pass."""
    if report.bad:
        return f"{len(report.bad)} bad in {len(report.bad_units)} units" + (f" and {len(report.bad_coordinates)} coordinates" if report.bad_coordinates else "")
    if not report.complete:
        nothing = "; no data to check" if report.chunks == 0 else ""
        return f"not complete (status {report.status}): {len(report.unfinished)} of {report.units} units not finished{nothing}"
    if report.unfinished:
        return f"{len(report.unfinished)} of {report.units} units missing from the ledger"
    return "all match"


def _unchecked(report: Any) -> str:
    """What could not be checked: what a store made before segbatch recorded digests lacks them for."""
    parts = [f"{report.unchecked_units} units"] if report.unchecked_units else []
    parts += [f"{report.unchecked_coordinates} coordinates"] if report.unchecked_coordinates else []
    return f"; {' and '.join(parts)} have no digests (written before segbatch recorded them)" if parts else ""


def _print_bad(report: Any, prefix: str = "") -> None:
    """The bad chunks, one line each (the first MAX_LINES), and the units the ledger lacks."""
    from segbatch.problems import printable

    for bad in report.bad[:MAX_LINES]:
        if bad["unit"] is None:
            click.echo(f"{prefix}coordinate {printable(bad['chunk'])} {bad['problem']}")
        elif not bad["chunk"]:
            click.echo(f"{prefix}unit {bad['unit']}: its ledger entry {bad['problem']} (this version records them for every unit)")
        else:
            click.echo(f"{prefix}unit {bad['unit']}: chunk {printable(bad['chunk'])} {bad['problem']}")
    if len(report.bad) > MAX_LINES:
        click.echo(f"{prefix}... and {len(report.bad) - MAX_LINES} more bad chunks (--json lists them all)")
    if report.unfinished:
        click.echo(f"{prefix}{len(report.unfinished)} units are not in the ledger (first: {report.unfinished[0]})")
    elif not report.complete:
        click.echo(f"{prefix}the store is {report.status}: every unit is in the ledger, but its run did not finish it")
