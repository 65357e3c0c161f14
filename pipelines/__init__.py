"""Ictus pipelines: the triage function, findings, writers and entry points."""

if __name__ != "ictus.pipelines":  # the source folder imported as a top-level package, e.g. from the repo root
    raise ImportError(f"Ictus's pipelines/ folder is installed as ictus.pipelines; import ictus.pipelines (found as {__name__!r})")

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
