"""Ictus models: the registry and model cards (plain data), weight resolution,
the onnxruntime runtime, and (extra ``train``) the torch port, export and training."""

if __name__ != "ictus.models":  # the source folder imported as a top-level package, e.g. from the repo root
    raise ImportError(f"Ictus's models/ folder is installed as ictus.models; import ictus.models (found as {__name__!r})")

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
