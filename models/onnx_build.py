"""Torch-free conversion of DeepMedic state dicts (BLAST-CT V1) to ONNX.

The graph is written node by node with ``onnx.helper`` from the numpy state
dict that :mod:`ictus.models.legacy_pt` reads, so a torch-free install can convert
the published weights. Runtime dependencies: numpy and onnx only.

The network (see ``../shared/models/blast-ct/SOURCE.md``): parallel pathways,
each sub-sampling the input by strided slicing ``x[..., s//2::s]`` after a
centre crop, then pre-activation blocks (BatchNorm, PReLU with one slope,
valid convolution without bias, plus a centre crop of the block input when
the channel count is unchanged), then nearest up-sampling by ``s`` and a
centre crop to the common output size; the pathways are concatenated and
passed through 1x1x1 pre-activation blocks to logits.

Spatial axes are dynamic. All crop offsets are computed inside the graph from
the input shape with the reference's integer arithmetic, so every valid size
(``5k+80`` per axis for BLAST-CT, giving ``5k``) reproduces the reference.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ictus.imaging.atomic import atomic_path
from ictus.imaging.errors import ModelError
from ictus.models.hashing import file_sha256
from ictus.models.legacy_pt import read_state_dict

logger = logging.getLogger(__name__)

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; older onnxruntimes load it
BN_EPSILON = 1e-5  # torch.nn.BatchNorm3d default, used by BLAST-CT
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
BLOCK_PARAMS = ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "conv.weight", "prelu.weight")
_PATH_KEY = re.compile(r"^(path\((\d+(?:, \d+)*)\)(\d+))\.path\.(\d+)\.(.+)$")
_FC_KEY = re.compile(r"^fully_connected\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class BlockSpec:
    """One pre-activation block: BN -> PReLU -> conv (valid, no bias) [+ residual crop]."""

    prefix: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...]

    @property
    def residual(self) -> bool:
        """Whether the block adds a centre crop of its input (equal channel counts)."""
        return self.in_channels == self.out_channels


@dataclass(frozen=True)
class PathSpec:
    """A pathway: sub-sample by ``scale``, run ``blocks``, up-sample by ``scale``."""

    name: str
    scale: tuple[int, ...]
    blocks: tuple[BlockSpec, ...]

    @property
    def shrink(self) -> tuple[int, ...]:
        """Voxels (at the pathway's own resolution) the valid convolutions remove per axis."""
        return tuple(sum(b.kernel[a] - 1 for b in self.blocks) for a in range(len(self.scale)))

    def input_size(self, output_size: Sequence[int]) -> tuple[int, ...]:
        """Centre crop of the 1 mm input this pathway reads to cover ``output_size``."""
        return tuple((-(-o // s) + n) * s for o, s, n in zip(output_size, self.scale, self.shrink))


@dataclass(frozen=True)
class DeepMedicSpec:
    """The architecture read off a state dict's keys and shapes (plain Python)."""

    paths: tuple[PathSpec, ...]
    fully_connected: tuple[BlockSpec, ...]

    @property
    def input_channels(self) -> int:
        return self.paths[0].blocks[0].in_channels

    @property
    def num_classes(self) -> int:
        return self.fully_connected[-1].out_channels

    @property
    def context_voxels(self) -> tuple[int, ...]:
        """Input voxels per side beyond the output region (40 for BLAST-CT)."""
        first = self.paths[0]
        return tuple(n * s // 2 for n, s in zip(first.shrink, first.scale))

    @property
    def size_multiple(self) -> tuple[int, ...]:
        """Valid input and output sizes step by this much per axis (5 for BLAST-CT)."""
        return self.paths[0].scale

    @property
    def phase_multiple(self) -> tuple[int, ...]:
        """Tile offsets that are multiples of this keep every pathway's sub-sampling phase (15)."""
        return tuple(math.lcm(*(p.scale[a] for p in self.paths)) for a in range(len(self.paths[0].scale)))

    def output_size(self, input_size: Sequence[int]) -> tuple[int, ...]:
        """Output size for ``input_size``, or ModelError when the reference would reject it."""
        first = self.paths[0]
        output = tuple((i // s - n) * s for i, s, n in zip(input_size, first.scale, first.shrink))
        if any(o <= 0 for o in output) or self.input_size(output) != tuple(input_size):
            rule = ", ".join(f"{m}k+{2 * c}" for m, c in zip(self.size_multiple, self.context_voxels))
            raise ModelError(f"Input size {tuple(input_size)} is not valid for this model; use sizes {rule} (k >= 1).")
        return output

    def input_size(self, output_size: Sequence[int]) -> tuple[int, ...]:
        """The valid input size that yields ``output_size`` (a multiple of ``size_multiple``)."""
        return self.paths[0].input_size(output_size)


def _block(state: Mapping[str, np.ndarray], prefix: str, ndim: int) -> BlockSpec:
    missing = [p for p in BLOCK_PARAMS if f"{prefix}.{p}" not in state]
    if missing:
        raise ModelError(f"State dict lacks {prefix}.{missing[0]}; it is not a DeepMedic state dict.")
    weight = state[f"{prefix}.conv.weight"]
    if weight.ndim != ndim + 2:
        raise ModelError(f"{prefix}.conv.weight has shape {weight.shape}; expected a {ndim}-D convolution.")
    out_channels, in_channels = int(weight.shape[0]), int(weight.shape[1])
    for name in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        if state[f"{prefix}.{name}"].shape != (in_channels,):
            raise ModelError(f"{prefix}.{name} has shape {state[f'{prefix}.{name}'].shape}; expected ({in_channels},).")
    if state[f"{prefix}.prelu.weight"].size != 1:
        raise ModelError(f"{prefix}.prelu.weight has {state[f'{prefix}.prelu.weight'].size} slopes; expected one.")
    return BlockSpec(prefix, in_channels, out_channels, tuple(int(k) for k in weight.shape[2:]))


def parse_spec(state: Mapping[str, np.ndarray]) -> DeepMedicSpec:
    """Read the DeepMedic architecture from a state dict (keys as in BLAST-CT)."""
    paths: dict[int, tuple[str, tuple[int, ...], set[int]]] = {}
    fc_indices: set[int] = set()
    for key in state:
        if m := _PATH_KEY.match(key):
            name, index, block = m.group(1), int(m.group(3)), int(m.group(4))
            scale = tuple(int(v) for v in m.group(2).split(", "))
            if paths.setdefault(index, (name, scale, set()))[0] != name:
                raise ModelError(f"State dict has two pathways numbered {index}; it is not a DeepMedic state dict.")
            paths[index][2].add(block)
        elif m := _FC_KEY.match(key):
            fc_indices.add(int(m.group(1)))
        else:
            raise ModelError(f"State dict has an unexpected key {key!r}; it is not a DeepMedic state dict.")
    if not paths or sorted(paths) != list(range(len(paths))) or sorted(fc_indices) != list(range(len(fc_indices))):
        raise ModelError("State dict lacks numbered pathways or fully_connected blocks; not a DeepMedic state dict.")
    specs = []
    for index in sorted(paths):
        name, scale, blocks = paths[index]
        if sorted(blocks) != list(range(1, len(blocks) + 1)):
            raise ModelError(f"Pathway {name} has blocks {sorted(blocks)}; expected 1..n.")
        block_specs = tuple(_block(state, f"{name}.path.{b}", len(scale)) for b in sorted(blocks))
        specs.append(PathSpec(name, scale, block_specs))
    ndim = len(specs[0].scale)
    fully_connected = tuple(_block(state, f"fully_connected.{i}", ndim) for i in sorted(fc_indices))
    spec = DeepMedicSpec(tuple(specs), fully_connected)
    for path in spec.paths:
        if len(path.scale) != ndim or path.blocks[0].in_channels != spec.input_channels:
            raise ModelError(f"Pathway {path.name} disagrees with the first pathway's input; not a DeepMedic model.")
        if any(a.out_channels != b.in_channels for a, b in zip(path.blocks, path.blocks[1:])):
            raise ModelError(f"Pathway {path.name} has blocks whose channel counts do not chain.")
        if any(s > f for s, f in zip(path.scale, spec.paths[0].scale)):
            raise ModelError("The first pathway must have the largest scale factor on every axis.")
    concat = sum(p.blocks[-1].out_channels for p in spec.paths)
    chain = [concat] + [b.out_channels for b in fully_connected]
    if (any(b.in_channels != c for b, c in zip(fully_connected, chain))
            or any(set(b.kernel) != {1} for b in fully_connected)):
        raise ModelError("fully_connected blocks do not chain from the concatenated pathways as 1x1x1 convolutions.")
    return spec


class _Graph:
    """A small helper that names nodes and constants uniquely."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def tensor(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, hint: str, values: Sequence[int]) -> str:
        return self.tensor(self.name(hint), np.asarray(values, dtype=np.int64))

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out


def _preact_block(g: _Graph, state: Mapping[str, np.ndarray], block: BlockSpec, x: str, epsilon: float) -> str:
    p = block.prefix
    for name in BLOCK_PARAMS:
        g.tensor(f"{p}.{name}", state[f"{p}.{name}"].astype(np.float32))
    out = g.op("BatchNormalization", [x, f"{p}.bn.weight", f"{p}.bn.bias", f"{p}.bn.running_mean",
                                      f"{p}.bn.running_var"], f"{p}.bn", epsilon=float(epsilon))
    out = g.op("PRelu", [out, f"{p}.prelu.weight"], f"{p}.prelu")
    out = g.op("Conv", [out, f"{p}.conv.weight"], f"{p}.conv", kernel_shape=list(block.kernel),
               pads=[0] * (2 * len(block.kernel)), strides=[1] * len(block.kernel))
    if block.residual:
        shortcut = x
        if any(k > 1 for k in block.kernel):
            axes = [a + 2 for a, k in enumerate(block.kernel) if k > 1]
            starts = [k // 2 for k in block.kernel if k > 1]
            ends = [-(k // 2) for k in block.kernel if k > 1]
            shortcut = g.op("Slice", [x, g.ints("starts", starts), g.ints("ends", ends), g.ints("axes", axes)],
                            f"{p}.shortcut")
        out = g.op("Add", [out, shortcut], f"{p}.residual")
    return out


def build_model(state: Mapping[str, np.ndarray], *, metadata: Mapping[str, str] | None = None,
                bn_epsilon: float = BN_EPSILON) -> onnx.ModelProto:
    """Build the eval-mode ONNX graph (opset 17) of a DeepMedic state dict.

    Input ``image`` is float32 [N, C, D, H, W] with dynamic batch and spatial
    axes; output ``logits`` is float32 [N, classes, D', H', W'] where each
    spatial size shrinks by twice ``context_voxels`` (110 -> 30 for BLAST-CT).
    ``metadata`` goes into ``metadata_props`` on top of the architecture facts.
    """
    spec = parse_spec(state)
    ndim = len(spec.paths[0].scale)
    axes = list(range(2, 2 + ndim))
    g = _Graph()
    size_in = g.op("Shape", [INPUT_NAME], "input_size", start=2)
    half_in = g.op("Div", [size_in, g.ints("two", [2] * ndim)], "half_input")
    first = spec.paths[0]
    # Output size, computed like the reference from the first (coarsest) pathway.
    cells_first = g.op("Div", [size_in, g.ints("scale", first.scale)])
    size_out = g.op("Mul", [g.op("Sub", [cells_first, g.ints("shrink", first.shrink)]), g.ints("scale", first.scale)],
                    "output_size")
    half_out = g.op("Div", [size_out, g.ints("two", [2] * ndim)], "half_output")
    axes_name = g.ints("spatial_axes", axes)
    branches = []
    for path in spec.paths:
        scale = path.scale
        # Sub-sampled cells needed: ceil(output / s); pathway input P = (cells + shrink) * s.
        rounded_up = g.op("Add", [size_out, g.ints("s_minus_1", [s - 1 for s in scale])])
        cells = g.op("Div", [rounded_up, g.ints("scale", scale)], f"{path.name}.cells")
        needed = g.op("Mul", [g.op("Add", [cells, g.ints("shrink", path.shrink)]), g.ints("scale", scale)],
                      f"{path.name}.input_size")
        start = g.op("Sub", [half_in, g.op("Div", [needed, g.ints("two", [2] * ndim)])], f"{path.name}.crop_start")
        # Centre crop and sub-sampling x[..., s//2::s] in one strided slice.
        x = g.op("Slice", [INPUT_NAME, g.op("Add", [start, g.ints("phase", [s // 2 for s in scale])]),
                           g.op("Add", [start, needed]), axes_name, g.ints("steps", scale)], f"{path.name}.downsample")
        for block in path.blocks:
            x = _preact_block(g, state, block, x, bn_epsilon)
        if any(s > 1 for s in scale):
            scales = g.tensor(g.name(f"{path.name}.up_scales"), np.asarray([1, 1, *scale], dtype=np.float32))
            x = g.op("Resize", [x, "", scales], f"{path.name}.upsample", mode="nearest",
                     coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        # Up-sampled size cells*s can exceed the output size (not for s = 1 or the first pathway's s).
        if any(s not in (1, f) for s, f in zip(scale, first.scale)):
            upsampled = g.op("Mul", [cells, g.ints("scale", scale)])
            half_up = g.op("Div", [upsampled, g.ints("two", [2] * ndim)])
            begin = g.op("Sub", [half_up, half_out], f"{path.name}.out_start")
            x = g.op("Slice", [x, begin, g.op("Add", [begin, size_out]), axes_name], f"{path.name}.crop")
        branches.append(x)
    x = g.op("Concat", branches, "concat", axis=1)
    for block in spec.fully_connected:
        x = _preact_block(g, state, block, x, bn_epsilon)
    g.nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME], name=OUTPUT_NAME))

    dims_in = ["batch", *("depth", "height", "width")[-ndim:]] if ndim <= 3 else ["batch", *(f"in_{a}" for a in axes)]
    dims_out = ["batch", *(f"out_{d}" for d in dims_in[1:])]
    graph = helper.make_graph(
        g.nodes, "deepmedic",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [dims_in[0], spec.input_channels, *dims_in[1:]])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [dims_out[0], spec.num_classes, *dims_out[1:]])],
        g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="ictus.models.onnx_build", ir_version=IR_VERSION)
    model.doc_string = "DeepMedic (BLAST-CT layout), eval mode: 1 mm HU-windowed image in, class logits out."
    props = {
        "architecture": "DeepMedic",
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "output": "logits (softmax over axis 1 gives probabilities)",
        "scale_factors": ";".join(",".join(str(v) for v in p.scale) for p in spec.paths),
        "context_voxels": ",".join(str(c) for c in spec.context_voxels),
        "size_multiple": ",".join(str(m) for m in spec.size_multiple),
        "phase_multiple": ",".join(str(m) for m in spec.phase_multiple),
        "input_channels": str(spec.input_channels),
        "num_classes": str(spec.num_classes),
    }
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ModelError(f"ONNX metadata must map strings to strings; got {key!r}: {type(value).__name__}.")
        props[key] = value
    helper.set_model_props(model, props)
    return model


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file (the same digest the weights registry checks)."""
    return file_sha256(Path(path))


def convert_member(pt_path: str | Path, onnx_path: str | Path, *, metadata: Mapping[str, str] | None = None) -> Path:
    """Convert one ``torch.save``-d DeepMedic state dict to an ONNX file, atomically.

    Reads the weights with the restricted torch-free reader, records
    ``member`` (file stem), ``source_file`` and ``source_sha256`` in the
    ONNX metadata (``metadata`` entries override or add to these), checks the
    model with ``onnx.checker`` and writes it via a temporary file and
    ``os.replace``. Returns the ONNX path.
    """
    pt_path, onnx_path = Path(pt_path), Path(onnx_path)
    props = {"member": pt_path.stem, "source_file": pt_path.name, "source_sha256": sha256_file(pt_path)}
    props.update(metadata or {})
    model = build_model(read_state_dict(pt_path), metadata=props)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"Converted model for {pt_path.name} fails the ONNX checker; report this as a bug.") from exc
    write_model_atomic(model, onnx_path)
    logger.info("converted %s to %s", pt_path.name, onnx_path.name)
    return onnx_path


def write_model_atomic(model: onnx.ModelProto, onnx_path: str | Path) -> Path:
    """Write an ONNX model via a temporary file in the same folder and a rename."""
    onnx_path = Path(onnx_path)
    try:
        with atomic_path(onnx_path) as tmp:
            tmp.write_bytes(model.SerializeToString())
    except OSError as exc:
        raise ModelError(f"Cannot write {onnx_path} ({exc.strerror or exc}); check the folder is writable.") from exc
    return onnx_path


def read_metadata(onnx_path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, as a dict."""
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise ModelError(f"Cannot read ONNX model {onnx_path} ({type(exc).__name__}); re-run the conversion.") from exc
    return {p.key: p.value for p in model.metadata_props}
