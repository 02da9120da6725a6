"""`segbatch verify`: recompute a store's chunk digests against its ledger; exit 1 when any chunk is missing or altered."""

from __future__ import annotations

import json
from pathlib import Path

import click

from segbatch.cli.options import LOCATION, json_opt

MAX_LINES = 20


@click.command()
@click.argument("store", type=LOCATION)
@click.option("--threads", type=click.IntRange(min=1), default=8, show_default=True, help="Chunks read in parallel.")
@json_opt
def verify(store: Path | str, threads: int, as_json: bool) -> None:
    """Check every chunk of STORE against the digests its ledger recorded (a scrub); exit 1 when any is missing or altered."""
    from segbatch.problems import printable
    from segbatch.status import ExitStatus
    from segbatch.verify import verify_store

    report = verify_store(store, threads)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for bad in report.bad[:MAX_LINES]:
            click.echo(f"unit {bad['unit']}: chunk {printable(bad['chunk'])} {bad['problem']}")
        if len(report.bad) > MAX_LINES:
            click.echo(f"... and {len(report.bad) - MAX_LINES} more bad chunks (--json lists them all)")
        if report.unfinished:
            click.echo(f"{len(report.unfinished)} units are not in the ledger (first: {report.unfinished[0]})")
        unchecked = f"; {report.unchecked_units} units have no digests (written before segbatch recorded them)" if report.unchecked_units else ""
        verdict = "all match" if report.ok else f"{len(report.bad)} bad in {len(report.bad_units)} units"
        click.echo(f"verified {report.chunks} chunks of {report.units} units in {report.seconds:.1f} s: {verdict}{unchecked}", err=True)
        if not report.ok:
            marked = " (marked damaged)" if report.marked == "damaged" else ""
            click.echo(f"{store} is damaged{marked}: `segbatch run` with its options and --resume redoes those units", err=True)
    if not report.ok:
        click.get_current_context().exit(ExitStatus.FAILED)
