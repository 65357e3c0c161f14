"""The ``ictus`` command line. The only place that prints, exits, configures
logging, and maps :class:`imaging.errors.IctusError` to exit codes.

Exit codes: 0 ok, 2 usage, 3 no eligible series, 4 invalid or unreadable
input, 5 model error, 6 output error (1 for an unexpected internal error).
"""
from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from imaging.errors import IctusError
from pipelines import phi

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERNAL = 1

# Each sub-command lives in its own module under pipelines/commands and
# exposes a click command (or group) named ``command``.
COMMAND_MODULES = (
    "series",
    "volume",
    "phantom",
    "models",
    "triage",
    "listen",
    "batch",
    "evaluate",
    "train",
)

log = logging.getLogger(__name__)


class IctusGroup(click.Group):
    """A click group that turns errors into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except IctusError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"ictus: error: {phi.redact(exc)}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("ictus: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # noqa: BLE001 - last line of defence, no traceback
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(
                f"ictus: internal error: {type(exc).__name__}: {phi.redact(exc)} "
                "(run again with --debug for a traceback and report it)",
                err=True,
            )
            ctx.exit(EXIT_INTERNAL)


@click.group(cls=IctusGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
@click.version_option(package_name="ictus", prog_name="ictus")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """Ictus: triage of non-contrast head CT. A triage aid, not a diagnostic device."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.DEBUG if debug else (logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not debug:
        # pydicom and SimpleITK warn loudly on odd-but-readable files; QC flags carry what matters.
        logging.getLogger("pydicom").setLevel(logging.ERROR)
    # Warnings go through logging, and the identifying values of every study read in this
    # command are redacted from logs, warnings and error lines (pipelines.phi).
    ctx.with_resource(phi.phi_guard())


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"pipelines.commands.{_name}")
    except ModuleNotFoundError as _exc:  # a command whose extra is not installed
        if not (_exc.name or "").startswith("pipelines.commands"):
            raise
        continue
    cli.add_command(_module.command)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ictus`` console script."""
    try:
        cli.main(args=argv, prog_name="ictus", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
