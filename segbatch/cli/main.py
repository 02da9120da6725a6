"""The root command group, and the one place where errors become messages and exit codes.

Command modules import only click at module level; torch, ray and av are
imported inside the commands, so `segbatch --help` stays instant.
"""

from __future__ import annotations

import warnings
from typing import Any

import click

from segbatch import __version__
from segbatch.cli.options import CommandGroup
from segbatch.errors import InputError, Interrupted, SegbatchError, environment_refusal
from segbatch.location import redact
from segbatch.status import ExitStatus

# zarr warns on every consolidation that consolidated metadata is not yet in the v3 spec (xarray and zarr-python read it)
CONSOLIDATION_WARNING = "Consolidated metadata is currently not part"


class CliError(click.ClickException):
    """A library error turned into click's one-line message with our exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(redact(message))  # a signed URL's signature or a password in a URL is never shown
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class; each error has its own


class SegbatchGroup(CommandGroup):
    """Maps every error raised below it to one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if ctx.find_root().params.get("traceback"):
                raise
            raise _as_cli_error(exc) from None
        except KeyboardInterrupt:
            if ctx.find_root().params.get("traceback"):
                raise
            from segbatch.engine.session import stop_signal

            raise CliError("interrupted", ExitStatus.stopped_by(stop_signal())) from None


def _as_cli_error(exc: Exception) -> CliError:
    if isinstance(exc, Interrupted):
        return CliError(str(exc), ExitStatus.stopped_by(exc.signum))
    if isinstance(exc, InputError):
        return CliError(str(exc), ExitStatus.BAD_INPUT)
    refused = environment_refusal(exc)
    if refused is not None:  # a read-only file system, a permission denied: the same command fails again
        return CliError(str(exc) if isinstance(exc, SegbatchError) else refused, ExitStatus.BAD_INPUT)
    if isinstance(exc, SegbatchError):
        return CliError(str(exc), ExitStatus.FAILED)
    if isinstance(exc, MemoryError):
        return CliError("out of memory: lower --batch-size or --samples", ExitStatus.FAILED)
    first = str(exc).splitlines()[0] if str(exc) else ""
    return CliError(f"internal error: {type(exc).__name__}: {first} (rerun with --traceback for details)", ExitStatus.FAILED)


@click.group(cls=SegbatchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="segbatch")
@click.option("--traceback", is_flag=True, hidden=True, help="Show the full traceback of an error (for debugging).")
def cli(traceback: bool) -> None:
    """Batch semantic segmentation with calibrated uncertainty (SegNet / Bayesian SegNet)."""
    # for the whole process, before any command starts threads (a `catch_warnings` block is not thread-safe)
    warnings.filterwarnings("ignore", message=CONSOLIDATION_WARNING, category=UserWarning)


def _register() -> None:
    from segbatch.cli import audit, calibrate, demo, export, info, model, run, stitch, train, verify

    commands = (run.run, stitch.stitch, export.export, audit.audit, calibrate.calibrate, info.info, verify.verify, model.model, train.train, demo.demo)
    for command in commands:
        cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point: the command owns the process's stop signals (a second Ctrl-C never breaks the first's cleanup)."""
    from segbatch.engine.session import command_signals

    with command_signals():
        cli(prog_name="segbatch")
