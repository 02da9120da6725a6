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
    ok = _verify_job(store, job, threads, as_json) if job is not None else _verify_one(target, threads, as_json, lease=store)
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
    if as_json:
        click.echo(json.dumps({"store": str(store), "ok": not bad, "groups": {name: r.as_dict() for name, r in reports.items()}}, indent=2))
        return not bad
    for name in bad:
        _print_bad(reports[name], prefix=f"{name}: ")
    chunks = sum(r.chunks for r in reports.values())
    seconds = sum(r.seconds for r in reports.values())
    verdict = "all match" if not bad else f"{len(bad)} group(s) damaged (first: {bad[0]})"
    click.echo(f"verified {chunks} chunks of {len(reports)} groups in {seconds:.1f} s: {verdict}", err=True)
    if bad:
        click.echo(f"{store}: `segbatch run` with its inputs and options and --resume redoes the damaged units", err=True)
    return not bad


def _verify_one(store: Path | str, threads: int, as_json: bool, lease: Path | str) -> bool:
    from segbatch.verify import verify_store

    report = verify_store(store, threads, lease=lease)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print_bad(report)
        unchecked = f"; {report.unchecked_units} units have no digests (written before segbatch recorded them)" if report.unchecked_units else ""
        verdict = "all match" if report.ok else f"{len(report.bad)} bad in {len(report.bad_units)} units"
        click.echo(f"verified {report.chunks} chunks of {report.units} units in {report.seconds:.1f} s: {verdict}{unchecked}", err=True)
        if not report.ok:
            marked = " (marked damaged)" if report.marked == "damaged" else ""
            click.echo(f"{store} is damaged{marked}: `segbatch run` with its options and --resume redoes those units", err=True)
    return report.ok


def _print_bad(report: Any, prefix: str = "") -> None:
    """The bad chunks, one line each (the first MAX_LINES), and the units the ledger lacks."""
    from segbatch.problems import printable

    for bad in report.bad[:MAX_LINES]:
        click.echo(f"{prefix}unit {bad['unit']}: chunk {printable(bad['chunk'])} {bad['problem']}")
    if len(report.bad) > MAX_LINES:
        click.echo(f"{prefix}... and {len(report.bad) - MAX_LINES} more bad chunks (--json lists them all)")
    if report.unfinished:
        click.echo(f"{prefix}{len(report.unfinished)} units are not in the ledger (first: {report.unfinished[0]})")
