"""The ``ictus`` command line. The only place that prints, exits, configures
logging, and maps :class:`ictus.imaging.errors.IctusError` to exit codes.

Exit codes: 0 ok, 2 usage, 3 no eligible series, 4 invalid or unreadable
input, 5 model error, 6 output error (1 for an unexpected internal error).
"""
from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from ictus.imaging.errors import IctusError
from ictus.pipelines import phi

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERNAL = 1

# Each sub-command lives in its own module under pipelines/commands and
# exposes a click command (or group) named ``command``. The modules are imported when their
# command runs, not for ``ictus --help``, which lists them from the short help below
# (tests/test_cli_lazy.py keeps it equal to each command's own).
COMMAND_HELP = {
    "series": "List every series of STUDY (a folder, DICOMDIR or file) with its score or rejection reason, "
              "and the one chosen for triage.",
    "volume": "Write the HU volume (LPS, float32) of the chosen series of STUDY.",
    "phantom": "Write a synthetic head-CT DICOM study with known ground truth into OUT_DIR.",
    "models": "Model cards, weights and assets (atlases): list, pull, verify.",
    "triage": "Triage the head-CT study STUDY (folder, DICOMDIR or file).",
    "listen": "Run the DICOM listener (or the Orthanc poller) from a config file.",
    "batch": "Triage every study of SOURCES into OUT.",
    "evaluate": "Evaluate triage on the labelled DATASET (a folder; see --layout).",
    "train": "Train a MONAI SegResNet on DATA_DIR (ct_scans/ + masks/ NIfTI, the CT-ICH layout).",
}
COMMAND_MODULES = tuple(COMMAND_HELP)

log = logging.getLogger(__name__)


class _ErrorsOnly(logging.Filter):
    """Lets only records of level ERROR and above through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


class IctusGroup(click.Group):
    """A click group that turns errors into one line on stderr and an exit code, and imports
    each sub-command's module only when that command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            try:
                module = importlib.import_module(f"ictus.pipelines.commands.{cmd_name}")
            except ModuleNotFoundError as exc:  # a command whose extra is not installed
                if not (exc.name or "").startswith("ictus.pipelines.commands"):
                    raise
                return None
            self.add_command(module.command)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(n) for n in names), default=0)  # as click.Group does
        rows = []
        for name in names:
            loaded = self.commands.get(name)
            text = loaded.get_short_help_str(limit=limit) if loaded is not None else \
                click.Command(name, help=COMMAND_HELP.get(name, "")).get_short_help_str(limit=limit)
            rows.append((name, text))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

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
        # A filter, not only a level: pydicom resets its logger's level to WARNING when it is
        # first imported, which now happens after this (sub-commands load lazily).
        pydicom_log = logging.getLogger("pydicom")
        pydicom_log.setLevel(logging.ERROR)
        if not any(isinstance(f, _ErrorsOnly) for f in pydicom_log.filters):
            pydicom_log.addFilter(_ErrorsOnly())
    else:
        for f in [f for f in logging.getLogger("pydicom").filters if isinstance(f, _ErrorsOnly)]:
            logging.getLogger("pydicom").removeFilter(f)
    # Warnings go through logging, and the identifying values of every study read in this
    # command are redacted from logs, warnings and error lines (ictus.pipelines.phi).
    ctx.with_resource(phi.phi_guard())


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
