"""Ictus models: the registry and model cards (plain data), weight resolution,
the onnxruntime runtime, and (extra ``train``) the torch port, export and training."""
import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
