"""ictus.models.deepmedic: our torch port loads the V1 weights strictly and matches blast-ct's network."""
from __future__ import annotations

import numpy as np
import pytest

from ictus.models.legacy_pt import read_state_dict
from tests.conftest import blast_ct_weights

torch = pytest.importorskip("torch")
reference = pytest.importorskip("blast_ct.models.deepmedic")  # the network class only, not the CLI

from ictus.models.deepmedic import DeepMedic, deepmedic_for_state_dict  # noqa: E402  (needs torch)

MEMBERS = [f"model_{n}.pt" for n in range(1, 13)]


def _torch_state(name: str) -> dict:
    return torch.load(blast_ct_weights() / "saved_models_v1" / name, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("member", MEMBERS)
def test_v1_state_dicts_load_strictly(member):
    network = DeepMedic()
    result = network.load_state_dict(_torch_state(member), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in network.parameters()) == 1_030_033


def test_module_names_match_the_published_layout():
    names = set(DeepMedic().state_dict())
    assert "path(5, 5, 5)0.path.1.bn.weight" in names
    assert "path(1, 1, 1)2.path.8.prelu.weight" in names
    assert "fully_connected.2.conv.weight" in names
    assert len(names) == 189


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 1, 85, 100, 115), (2, 1, 85, 85, 90)])
def test_logits_equal_reference_network(shape):
    # 85x100x115 exercises, per axis, every size-dependent crop of the x3 and x5 pathways
    # (odd sizes, output not a multiple of 3); the second shape checks the batch axis.
    torch.set_num_threads(2)
    state = _torch_state("model_1.pt")
    ours = DeepMedic()
    ours.load_state_dict(state, strict=True)
    theirs = reference.DeepMedic(input_channels=1, num_classes=5)
    theirs.load_state_dict(state, strict=True)
    image = torch.from_numpy(np.random.default_rng(3).uniform(-1, 1, shape).astype(np.float32))
    with torch.no_grad():
        got = ours.eval()(image)
        expected, _ = theirs.eval()(image)
    assert got.shape == expected.shape == (shape[0], 5, *(s - 80 for s in shape[2:]))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_built_from_torch_free_reader_equals_torch_load():
    path = blast_ct_weights() / "saved_models_v1" / "model_2.pt"
    ours = deepmedic_for_state_dict(read_state_dict(path))
    assert not ours.training
    expected = torch.load(path, map_location="cpu", weights_only=True)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_invalid_dropout_configuration_is_rejected():
    with pytest.raises(ValueError, match="dropout"):
        DeepMedic(fully_connected=(250, 250), dropout=(0.0, 0.5))
