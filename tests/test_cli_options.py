"""The options triage, batch and evaluate share (ictus.pipelines.commands.options) take their choices from
one place each: the model registry, the locale catalogues and the writers' output kinds."""
from __future__ import annotations

import click
import pytest

from ictus.models.registry import DEFAULT_MODEL
from ictus.pipelines.commands import batch, evaluate, options, triage
from ictus.pipelines.writers import ALL_OUTPUTS, common


def _option(command: click.Command, name: str) -> click.Option:
    return next(p for p in command.params if isinstance(p, click.Option) and p.name == name)


@pytest.mark.parametrize("command", [triage.command, batch.command, evaluate.command])
def test_model_option_defaults_to_the_registry_default(command):
    option = _option(command, "model")
    assert option.default == DEFAULT_MODEL and DEFAULT_MODEL in option.help


@pytest.mark.parametrize("command", [triage.command, batch.command])
def test_lang_and_outputs_come_from_the_catalogues_and_the_writers(command):
    assert tuple(_option(command, "lang").type.choices) == common.LANGUAGES
    assert set(common.LANGUAGES) == {p.stem for p in common.LOCALES_DIR.glob("*.json")}
    assert _option(command, "outputs").default == ",".join(ALL_OUTPUTS)


def test_parse_outputs():
    assert options.parse_outputs("JSON, seg,json") == ("json", "seg")
    with pytest.raises(click.BadParameter, match="choose from json,seg,sr,sc,report"):
        options.parse_outputs("json,png")
