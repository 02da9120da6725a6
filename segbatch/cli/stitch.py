"""`segbatch stitch`: blend a raster store's kept tiles into its final arrays again."""

from __future__ import annotations

from pathlib import Path

import click

from segbatch.cli.options import LOCATION, check_verbosity, quiet_opt, verbose_opt


@click.command()
@click.argument("store", type=LOCATION)
@click.option("--group", metavar="NAME", help="A job of many rasters: stitch the group of input NAME.")
@quiet_opt
@verbose_opt
def stitch(store: Path | str, group: str | None, quiet: bool, verbose: int) -> None:
    """Re-run the stitch of a raster store (its tiles/ must have been kept: run --keep-tiles)."""
    from segbatch.engine.restitch import restitch

    check_verbosity(quiet, verbose)
    summary = restitch(store, quiet, verbose, group)
    where = f"{store} (group {group})" if group else store
    click.echo(f"stitched {summary.units} tiles in {summary.stitch_seconds or 0:.1f} s -> {where}", err=True)
