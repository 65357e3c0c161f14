"""Click options shared by ``ictus triage``, ``ictus batch`` and ``ictus evaluate``.

Each option takes its default and its choices from the one place that defines them:
``--model`` from the model registry (:data:`ictus.models.registry.DEFAULT_MODEL`, the
shipped card ids in the help), ``--lang`` from the message catalogues present in
``pipelines/writers/locales/``, ``--outputs`` from :data:`ictus.pipelines.writers.ALL_OUTPUTS`,
``--backend`` from :data:`ictus.models.backends.BACKENDS`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from ictus.models.backends import BACKENDS
from ictus.models.registry import DEFAULT_MODEL, list_cards
from ictus.pipelines.writers import ALL_OUTPUTS
from ictus.pipelines.writers.common import LANGUAGES

DEFAULT_LANG = "en"

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def parse_outputs(text: str) -> tuple[str, ...]:
    """``json,seg,sr`` -> a tuple of known output kinds (usage error on an unknown one)."""
    wanted = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    unknown = [w for w in wanted if w not in ALL_OUTPUTS]
    if unknown or not wanted:
        raise click.BadParameter(f"unknown output {', '.join(unknown) or '(none)'}; choose from {','.join(ALL_OUTPUTS)}")
    return wanted


def _model_help() -> str:
    ids = sorted({card.id for card in list_cards()})
    return f"Model card id ({', '.join(ids)}; see `ictus models list`), or a path to a card file/folder."


def model_option() -> Decorator:
    """``--model``: a card id of the registry (default :data:`DEFAULT_MODEL`) or a path to a card."""
    return click.option("--model", default=DEFAULT_MODEL, show_default=True, help=_model_help())


def models_dir_option(help_text: str = "Where model weights live (default: $ICTUS_MODELS_DIR, then the user cache).",
                      ) -> Decorator:
    """``--models-dir`` (also ``$ICTUS_MODELS_DIR``)."""
    return click.option("--models-dir", type=click.Path(path_type=Path), default=None, envvar="ICTUS_MODELS_DIR",
                        help=help_text)


def lang_option() -> Decorator:
    """``--lang``: one of the message catalogues in ``pipelines/writers/locales``."""
    return click.option("--lang", type=click.Choice(LANGUAGES), default=DEFAULT_LANG, show_default=True,
                        help="Report language.")


def outputs_option() -> Decorator:
    """``--outputs``: comma-separated kinds of :data:`ALL_OUTPUTS` (parsed by :func:`parse_outputs`)."""
    return click.option("--outputs", default=",".join(ALL_OUTPUTS), show_default=True,
                        help=f"Outputs to write (any of {','.join(ALL_OUTPUTS)}).")


def fast_option() -> Decorator:
    """``--fast``: one ensemble member."""
    return click.option("--fast", is_flag=True, help="One ensemble member instead of the full ensemble.")


def backend_option() -> Decorator:
    """``--backend``: the inference engine (auto: CUDA onnxruntime, else OpenVINO, else onnxruntime)."""
    return click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
                        help="Inference engine for the model: auto picks onnxruntime with CUDA on a GPU, "
                             "else OpenVINO when installed, else onnxruntime on the CPU.")


def threads_option(per_worker: bool = False) -> Decorator:
    """``--threads``: inference threads (per worker for batch)."""
    default = "cores / workers" if per_worker else "all cores"
    return click.option("--threads", type=click.IntRange(1, 256), default=None,
                        help=f"Inference threads{' per worker' if per_worker else ''} (default: {default}).")
