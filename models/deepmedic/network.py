"""DeepMedic in torch (extra ``train``): our own port of the BLAST-CT network.

Written from ``../shared/models/blast-ct/SOURCE.md`` and Kamnitsas et al.
(DeepMedic) / Monteiro et al. 2020 (BLAST-CT). Module names follow the
published state dicts, so the V1 weights load with ``strict=True``:
``path(5, 5, 5)0.path.{1..8}.{bn,conv,prelu}`` (index 0 is the sub-sampler and
9 the up-sampler, both parameter-free) and ``fully_connected.{0,1,2}``.

All size arithmetic uses only ``+ - * //`` on ``x.shape`` values: plain Python
ints in eager mode, and traced values under the legacy ONNX exporter, so an
export keeps dynamic spatial axes (see :mod:`ictus.models.export`). The triage path
never imports this module; it runs the ONNX graph from :mod:`ictus.models.onnx_build`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ictus.models.onnx_build import parse_spec

SCALE_FACTORS = ((5, 5, 5), (3, 3, 3), (1, 1, 1))
FEATURE_MAPS = (30, 30, 40, 40, 40, 40, 50, 50)
FULLY_CONNECTED = (250, 250)
DROPOUT = (0.0, 0.5, 0.5)


def _centre_start(size, crop):
    """First index of a centre crop of length ``crop`` (the reference's rounding)."""
    return size // 2 - crop // 2


class PreActBlock(nn.Module):
    """BatchNorm -> dropout -> PReLU (one slope) -> valid conv without bias; residual if widths match."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sequence[int] = (3, 3, 3),
                 dropout: float = 0.0) -> None:
        super().__init__()
        kx, ky, kz = (int(k) for k in kernel_size)
        self.kernel_size = (kx, ky, kz)
        self.bn = nn.BatchNorm3d(in_channels)
        self.dropout = nn.Dropout(dropout)
        self.prelu = nn.PReLU()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=self.kernel_size, bias=False)
        self.residual = in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(self.prelu(self.dropout(self.bn(x))))
        if self.residual:
            a, b, c = (k // 2 for k in self.kernel_size)
            out = out + x[:, :, a:x.shape[2] - a, b:x.shape[3] - b, c:x.shape[4] - c]
        return out


class DownSample(nn.Module):
    """Sub-sampling by strided slicing ``x[..., s//2::s]`` (no parameters)."""

    def __init__(self, scale: Sequence[int]) -> None:
        super().__init__()
        self.scale = tuple(int(s) for s in scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (a, b, c), (sa, sb, sc) = (s // 2 for s in self.scale), self.scale
        return x[:, :, a::sa, b::sb, c::sc]


class UpSample(nn.Module):
    """Nearest-neighbour up-sampling by the pathway's scale (no parameters)."""

    def __init__(self, scale: Sequence[int]) -> None:
        super().__init__()
        self.scale = tuple(int(s) for s in scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == (1, 1, 1):
            return x
        return F.interpolate(x, scale_factor=tuple(float(s) for s in self.scale), mode="nearest")


class Pathway(nn.Module):
    """Centre crop, sub-sample, pre-activation blocks, up-sample, centre crop to the output size."""

    def __init__(self, scale: Sequence[int], input_channels: int, feature_maps: Sequence[int]) -> None:
        super().__init__()
        self.scale = tuple(int(s) for s in scale)
        widths = (input_channels, *feature_maps)
        blocks = [PreActBlock(widths[i], widths[i + 1]) for i in range(len(feature_maps))]
        self.shrink = tuple(sum(b.kernel_size[a] - 1 for b in blocks) for a in range(3))
        self.path = nn.Sequential(DownSample(self.scale), *blocks, UpSample(self.scale))

    def input_sizes(self, output_size):
        """Per axis: sub-sampled cells ceil(o/s), and the 1 mm input length they need."""
        cells = [(o + s - 1) // s for o, s in zip(output_size, self.scale)]
        return cells, [(c + n) * s for c, n, s in zip(cells, self.shrink, self.scale)]

    def forward(self, image: torch.Tensor, output_size) -> torch.Tensor:
        cells, needed = self.input_sizes(output_size)
        start = [_centre_start(image.shape[2 + a], needed[a]) for a in range(3)]
        x = image[:, :, start[0]:start[0] + needed[0], start[1]:start[1] + needed[1], start[2]:start[2] + needed[2]]
        x = self.path(x)
        begin = [_centre_start(c * s, o) for c, s, o in zip(cells, self.scale, output_size)]
        return x[:, :, begin[0]:begin[0] + output_size[0], begin[1]:begin[1] + output_size[1],
                 begin[2]:begin[2] + output_size[2]]


class DeepMedic(nn.Module):
    """Multi-scale DeepMedic: parallel pathways, concatenation, 1x1x1 blocks; returns logits.

    Valid input sizes per axis are ``m*k + m*shrink`` where ``m`` is the first
    (coarsest) scale factor: 5k+80 for BLAST-CT, giving an output of 5k.
    """

    def __init__(self, input_channels: int = 1, num_classes: int = 5,
                 scale_factors: Sequence[Sequence[int]] = SCALE_FACTORS,
                 feature_maps: Sequence[int] = FEATURE_MAPS,
                 fully_connected: Sequence[int] = FULLY_CONNECTED,
                 dropout: Sequence[float] = DROPOUT) -> None:
        super().__init__()
        if len(dropout) != len(fully_connected) + 1:
            raise ValueError("dropout needs one probability per 1x1x1 block (len(fully_connected) + 1)")
        self.path_names: list[str] = []
        for i, scale in enumerate(scale_factors):
            name = f"path{tuple(int(s) for s in scale)}{i}"  # e.g. "path(5, 5, 5)0", as in the state dicts
            self.add_module(name, Pathway(scale, input_channels, feature_maps))
            self.path_names.append(name)
        widths = (feature_maps[-1] * len(self.path_names), *fully_connected, num_classes)
        self.fully_connected = nn.Sequential(*(
            PreActBlock(widths[i], widths[i + 1], kernel_size=(1, 1, 1), dropout=dropout[i])
            for i in range(len(widths) - 1)))

    @property
    def pathways(self) -> list[Pathway]:
        return [getattr(self, name) for name in self.path_names]

    def output_size(self, input_size):
        """Output size for an input size, from the first pathway (ints, or traced values when exporting)."""
        first = self.pathways[0]
        return [(i // s - n) * s for i, s, n in zip(input_size, first.scale, first.shrink)]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        output_size = self.output_size([image.shape[2], image.shape[3], image.shape[4]])
        out = torch.cat([path(image, output_size) for path in self.pathways], dim=1)
        return self.fully_connected(out)


def deepmedic_for_state_dict(state: Mapping[str, np.ndarray | torch.Tensor],
                             dropout: Sequence[float] | None = None) -> DeepMedic:
    """A DeepMedic whose widths match ``state``, with the weights loaded strictly, in eval mode.

    ``dropout`` (not stored in state dicts) defaults to BLAST-CT's where the
    number of 1x1x1 blocks matches, else none.
    """
    arrays = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in state.items()}
    spec = parse_spec(arrays)
    first = spec.paths[0]
    if any(set(b.kernel) != {3} for p in spec.paths for b in p.blocks):
        raise ValueError("only 3x3x3 pathway convolutions are supported by the torch port")
    network = DeepMedic(
        input_channels=spec.input_channels, num_classes=spec.num_classes,
        scale_factors=[p.scale for p in spec.paths], feature_maps=[b.out_channels for b in first.blocks],
        fully_connected=[b.out_channels for b in spec.fully_connected[:-1]],
        dropout=dropout if dropout is not None else
        (DROPOUT if len(DROPOUT) == len(spec.fully_connected) else [0.0] * len(spec.fully_connected)))
    network.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, strict=True)
    return network.eval()
