"""`segbatch calibrate`: one temperature for a checkpoint's logits under MC dropout, so its confidence says how often it is right."""

from __future__ import annotations

from pathlib import Path

import click

from segbatch.cli.options import LOCATION, check_writable, overwrite_opt, path_type, quiet_opt, refuse_existing, seed_opt

_dir = path_type(exists=True, file_okay=False)


@click.command()
@click.option("--model", "model_path", type=LOCATION, required=True, help="Checkpoint to calibrate.")
@click.option("--images", type=_dir, required=True, help="Folder of labelled images the model did not train on.")
@click.option("--masks", type=_dir, required=True, help="Folder of class-index masks, same relative names as the images.")
@click.option("--out", type=path_type(dir_okay=False), required=True, help="Checkpoint to write: the model with its temperature recorded.")
@click.option("--samples", type=click.IntRange(min=1), default=8, show_default=True, help="MC dropout samples, as the runs will use.")
@click.option(
    "--held-out",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of the images kept aside to measure NLL and ECE before and after.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1000),
    default=200_000,
    show_default=True,
    help="Labelled pixels drawn from each part (memory: samples x classes x 4 bytes each).",
)
@click.option("--ignore-index", type=click.IntRange(0, 65535), default=255, show_default=True, help="Mask value that is not a class.")
@seed_opt
@overwrite_opt
@quiet_opt
def calibrate(
    model_path: Path | str,
    images: Path,
    masks: Path,
    out: Path,
    samples: int,
    held_out: float,
    max_pixels: int,
    ignore_index: int,
    seed: int,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Fit a temperature for the model's logits under MC dropout (the mean probabilities' NLL on labelled images), record it
    in a new checkpoint, and report NLL and ECE before and after on held-out images.

    Runs with the new checkpoint divide every sample's logits by it before the softmax: `confidence` and `probs` are
    calibrated, and the audit says on what.
    """
    from segbatch import location
    from segbatch.calibrate import calibrate as run_calibration
    from segbatch.errors import InputError

    if location.same(out, model_path):
        raise InputError(f"--out {out} is the checkpoint being calibrated; write another file")
    refuse_existing(out, overwrite)
    check_writable(out)
    found = run_calibration(model_path, images, masks, out, samples, held_out, max_pixels, ignore_index, seed, quiet)
    click.echo(
        f"wrote {out}: temperature {found.temperature:.3f}; on {found.held_out_images} held-out images "
        f"NLL {found.nll_before:.4f} -> {found.nll_after:.4f}, ECE {found.ece_before:.4f} -> {found.ece_after:.4f}",
        err=True,
    )
