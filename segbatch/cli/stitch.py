"""`segbatch stitch`: blend a raster store's kept tiles into its final arrays again."""

from __future__ import annotations

from pathlib import Path

import click

from segbatch.cli.options import LOCATION, check_verbosity, quiet_opt, verbose_opt


@click.command()
@click.argument("store", type=LOCATION)
@quiet_opt
@verbose_opt
def stitch(store: Path | str, quiet: bool, verbose: int) -> None:
    """Re-run the stitch of a raster store (its tiles/ must have been kept: run --keep-tiles)."""
    from segbatch.engine.raster import restitch

    check_verbosity(quiet, verbose)
    summary = restitch(store, quiet, verbose)
    click.echo(f"stitched {summary.units} tiles in {summary.stitch_seconds or 0:.1f} s -> {store}", err=True)
