"""Ictus pipelines: the triage function, findings, writers and entry points."""
import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
