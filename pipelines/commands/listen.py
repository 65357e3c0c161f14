"""``ictus listen --config listener.toml``: the DICOM listener (storage SCP) for the hospital.

Receives studies by C-STORE from the allowed AE titles, triages each study
after its quiet period and sends SEG, SR, key images and the report back to
the destination AE (see :mod:`ictus.pipelines.pacs.listener` for the TOML keys).
SIGTERM (or Ctrl-C) drains: no new association, the study in hand is finished
and its results sent; what is still queued is kept for the next start.

``ictus listen --config FILE --status`` prints the queue (JSON) and exits.
``ictus listen --config FILE --orthanc http://127.0.0.1:8042`` does not
listen for DICOM but polls Orthanc's ``/changes`` for stable studies and
uploads the results by REST (see :mod:`ictus.pipelines.pacs.orthanc`).
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

import click


@click.command("listen")
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="listener.toml (see examples/listener.toml).")
@click.option("--status", "show_status", is_flag=True, help="Print the queue status as JSON and exit.")
@click.option("--orthanc", "orthanc_url", default=None,
              help="Poll this Orthanc's REST API for stable studies instead of listening for DICOM.")
@click.option("--once", is_flag=True, help="With --orthanc: process the changes so far, then exit.")
def command(config_path: Path, show_status: bool, orthanc_url: str | None, once: bool) -> None:
    """Run the DICOM listener (or the Orthanc poller) from a config file."""
    import logging

    from ictus.pipelines.pacs.listener import Listener, load_config

    ctx = click.get_current_context()
    if not (ctx.obj and ctx.obj.get("debug")):
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per PDU otherwise
    config = load_config(config_path)
    if show_status:
        from ictus.pipelines.pacs.spool import status_from_file

        click.echo(json.dumps(status_from_file(config.spool_dir), indent=2))
        return
    if orthanc_url:
        from ictus.pipelines.pacs.handover import load_engine_factory
        from ictus.pipelines.pacs.orthanc import OrthancClient, OrthancPoller

        poller = OrthancPoller(OrthancClient(orthanc_url), load_engine_factory(config.engine)(config.triage),
                               Path(config.spool_dir), send_report=config.send_report)
        _on_signals(poller.stop)
        if once:
            poller.poll_once()
        else:
            poller.run(config.poll_interval_s)
        return
    listener = Listener(config)
    listener.start()
    _on_signals(listener.request_stop)
    click.echo(f"ictus: listening as {config.ae_title} on {config.host}:{listener.bound_port}", err=True)
    listener.wait()
    listener.stop()
    click.echo("ictus: listener stopped", err=True)


def _on_signals(callback) -> None:
    def handler(signum, _frame):
        callback()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
