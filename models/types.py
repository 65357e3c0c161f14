"""Result types of the model layer (plain data, no onnxruntime or torch import)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np


@dataclass(frozen=True)
class Segmentation:
    """A model's output on the grid of the input :class:`ictus.imaging.volume.Volume`.

    Arrays are indexed [z, y, x] like ``Volume.array()``.

    - ``probabilities``: float16 [C, z, y, x], the ensemble-mean softmax (C
      includes background at index 0).
    - ``labels``: uint8 [z, y, x], the argmax of the probabilities (0 = background).
    - ``agreement``: float16 [z, y, x], fraction of the members that ran there
      whose own argmax equals ``labels`` (1.0 where only one member ran).
    - ``class_names``: names of the C channels, index 0 = "background".
    """

    probabilities: np.ndarray
    labels: np.ndarray
    agreement: np.ndarray
    class_names: tuple[str, ...]
    model_id: str = ""
    model_version: str = ""
    members_used: tuple[str, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)

    def class_index(self, name: str) -> int:
        """Channel index of a class name (e.g. "IPH")."""
        return self.class_names.index(name)
