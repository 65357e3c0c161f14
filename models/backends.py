"""Inference backends: the engines that run a member's ONNX graph.

The same ONNX file runs on any of them; the runtime (:mod:`ictus.models.runtime`) sees
one small interface, :class:`Runner` (``run(window) -> logits``):

- ``openvino``: OpenVINO's CPU plugin reading the ONNX graph directly, compiled once with
  its dynamic axes, fp32 inference precision (never bf16, so that it agrees with the others).
  On the 2-core AVX2 machine it ran a BLAST-CT member 1.5x faster than onnxruntime
  (``scripts/bench_model.py --backends``).
- ``onnxruntime``: the portable fallback, and with its CUDA provider the GPU path.

:func:`choose_backend` ("auto"): onnxruntime with CUDA when a GPU provider is present, else
OpenVINO when it is installed, else onnxruntime on the CPU. int8 members: on the CPU with
OpenVINO and NNCF installed, OpenVINO IR quantised by NNCF (``ictus.models.runtime.quantize_member_nncf``);
else onnxruntime's QDQ graphs (``quantize_member``), the fallback.

int8 OpenVINO models are compiled per input shape (``static_shapes``): OpenVINO 2026.4's CPU
plugin gave wrong int8 3D convolutions with dynamic (or bounded) spatial axes, and right ones
once the shape is static (measured on BLAST-CT member 1 with one convolution quantised: its
output's mean relative error 1.0 dynamic, 0.01 static; the whole int8 member gave no
foreground at all with dynamic axes). A compile costs ~0.5 s and holds ~35 MB per member and
shape (measured, 2 threads); the last ``max_shapes`` (8) compiled shapes are kept per member.
"""
from __future__ import annotations

import functools
import logging
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from ictus.imaging.errors import ModelError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "openvino")


class Runner(Protocol):
    """One loaded member: logits [1, C, z, y, x] of a window [1, 1, z, y, x] (float32)."""

    def run(self, window: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class BackendInfo:
    """What ran the members, for the findings' provenance."""

    name: str  # "onnxruntime" or "openvino"
    version: str
    device: str  # "CPU", "CUDA"

    def describe(self) -> str:
        return f"{self.name} {self.version} ({self.device})"


@functools.lru_cache(maxsize=1)
def _openvino_core() -> Any:
    """The process's one OpenVINO Core (it owns the plugins; members share it)."""
    import openvino as ov

    return ov.Core()


@functools.lru_cache(maxsize=1)
def openvino_available() -> bool:
    """True when the OpenVINO runtime imports and has a CPU device (probed once per process)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    try:
        return "CPU" in _openvino_core().available_devices
    except Exception:  # a broken install: fall back quietly
        log.warning("OpenVINO is installed but has no usable CPU device; using onnxruntime")
        return False


@functools.lru_cache(maxsize=1)
def nncf_available() -> bool:
    """True when NNCF (OpenVINO's quantisation tool, the ``quantize`` extra) imports."""
    try:
        import nncf  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def available_providers(providers: Sequence[str] | None = None) -> list[str]:
    """onnxruntime's providers to use: CUDA when it has it (and it was not excluded), then CPU."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    wanted = list(providers) if providers else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = [p for p in wanted if p in have]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def choose_backend(name: str = "auto", *, providers: Sequence[str] | None = None, precision: str = "fp32") -> str:
    """The backend to use: ``name`` itself when forced (a clear error when it is not
    installed), else (``auto``) CUDA onnxruntime, OpenVINO, onnxruntime CPU in that order.
    ``precision="int8"`` (auto): OpenVINO only when NNCF is installed too (it makes the
    int8 models), else onnxruntime (its own QDQ quantiser)."""
    if name not in BACKENDS:
        raise ModelError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    if name == "openvino":
        if not openvino_available():
            raise ModelError("backend 'openvino' was asked for but OpenVINO is not installed; "
                             "pip install openvino, or use --backend onnxruntime")
        return name
    if name == "onnxruntime":
        return name
    if "CUDAExecutionProvider" in available_providers(providers):
        return "onnxruntime"
    if precision == "int8":
        return "openvino" if openvino_available() and nncf_available() else "onnxruntime"
    return "openvino" if openvino_available() else "onnxruntime"


class OnnxRuntimeRunner:
    """An onnxruntime session (CPU or CUDA provider)."""

    def __init__(self, model_bytes: bytes, *, threads: int | None, providers: Sequence[str]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle threads sleep instead of spinning: on a shared or oversubscribed CPU
        # (batch workers, test runners) spinning threads were measured 6-8x slower.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        # One arena per session would keep each member's peak (~1.5 GB at 60^3 tiles)
        # for the life of the session: 12 members went past 16 GB. Freed after each run instead.
        options.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(model_bytes, options, providers=list(providers))
        self._input = self.session.get_inputs()[0].name

    def run(self, window: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: window})[0]


_MALLOC_TRIM: Any = None


def _trim_heap() -> None:
    """Return freed heap pages to the system (glibc's ``malloc_trim``; nothing elsewhere)."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):  # musl or another libc without it
                _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


class OpenVinoRunner:
    """An OpenVINO CPU model compiled once with the graph's dynamic spatial axes (the cascade's
    sub-bricks vary in shape; recompiling per shape cost more than the dynamic run did).
    fp32 inference precision (no bf16, so that it agrees with onnxruntime); latency hint, one stream.

    ``model``: ONNX bytes, or the path of an OpenVINO IR (``.xml``, e.g. an NNCF int8 model).
    ``static_shapes``: compile per input shape instead (int8 models; see the module docstring),
    keeping up to ``max_shapes`` compiled shapes."""

    def __init__(self, model: bytes | Path, *, threads: int | None, static_shapes: bool = False,
                 max_shapes: int = 8) -> None:
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = _openvino_core()
        self._config = config
        self._model = core.read_model(str(model)) if isinstance(model, (str, Path)) else core.read_model(model)
        self.static_shapes = bool(static_shapes)
        self._max_shapes = max(1, int(max_shapes))
        self._by_shape: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._compiled: Any = None if self.static_shapes else core.compile_model(self._model, "CPU", config)

    def _for_shape(self, shape: tuple[int, ...]) -> Any:
        compiled = self._by_shape.get(shape)
        if compiled is None:
            model = self._model.clone()
            model.reshape({model.inputs[0].get_any_name(): list(shape)})
            compiled = _openvino_core().compile_model(model, "CPU", self._config)
            self._by_shape[shape] = compiled
            while len(self._by_shape) > self._max_shapes:
                self._by_shape.popitem(last=False)
        else:
            self._by_shape.move_to_end(shape)
        return compiled

    def run(self, window: np.ndarray) -> np.ndarray:
        compiled = self._for_shape(tuple(window.shape)) if self.static_shapes else self._compiled
        logits = np.array(compiled(window)[compiled.outputs[0]], copy=True)
        # Intermediate buffers are freed after each run, as onnxruntime's arena is: kept, twelve
        # members held 5.3 GB on the GE head (measured), against 1.35 GB for onnxruntime. Freed
        # but left to glibc, the windows of different shapes fragment its heap: the default
        # ensemble still peaked at 3.1 GB on the GE head; handing the free pages back to the
        # system after each run brought it to 1.8 GB (measured 2026-12-01).
        compiled.release_memory()
        _trim_heap()
        return logits


def load_runner(backend: str, model_bytes: bytes | Path, *, threads: int | None,
                providers: Sequence[str] | None = None, static_shapes: bool = False) -> Runner:
    """A :class:`Runner` for ``model_bytes`` (an ONNX graph; for OpenVINO also the path of an IR
    ``.xml``) on ``backend`` (already chosen). ``static_shapes``: OpenVINO compiles per input
    shape (int8 models)."""
    if backend == "openvino":
        return OpenVinoRunner(model_bytes, threads=threads, static_shapes=static_shapes)
    if isinstance(model_bytes, (str, Path)):
        raise ModelError(f"onnxruntime runs ONNX graphs, not {model_bytes}")
    return OnnxRuntimeRunner(model_bytes, threads=threads, providers=available_providers(providers))


def backend_info(backend: str, providers: Sequence[str] | None = None) -> BackendInfo:
    """Name, version and device of ``backend`` (already chosen)."""
    if backend == "openvino":
        import openvino as ov

        return BackendInfo("openvino", str(ov.__version__).split("-")[0], "CPU")
    import onnxruntime as ort

    device = "CUDA" if available_providers(providers)[0] == "CUDAExecutionProvider" else "CPU"
    return BackendInfo("onnxruntime", str(ort.__version__), device)
