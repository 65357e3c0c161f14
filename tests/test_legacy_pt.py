"""ictus.models.legacy_pt: the torch-free restricted reader, checked against torch.load."""
from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from ictus.imaging.errors import ModelError
from ictus.models.legacy_pt import LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, read_state_dict
from tests.conftest import blast_ct_weights

torch = pytest.importorskip("torch")

MEMBERS = [f"model_{n}.pt" for n in range(1, 13)]


def _assert_same(ours: dict[str, np.ndarray], theirs: dict) -> None:
    assert list(ours) == list(theirs)
    for key, tensor in theirs.items():
        expected = tensor.detach().cpu().numpy()
        got = ours[key]
        assert got.dtype == expected.dtype, key
        assert got.shape == expected.shape, key
        assert got.tobytes() == np.ascontiguousarray(expected).tobytes(), key


@pytest.mark.parametrize("member", MEMBERS)
def test_blast_ct_members_match_torch_load_bit_for_bit(member):
    path = blast_ct_weights() / "saved_models_v1" / member
    ours = read_state_dict(path)
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    _assert_same(ours, theirs)
    assert len(ours) == 189
    assert {a.dtype for a in ours.values()} == {np.dtype(np.float32), np.dtype(np.int64)}


def _views_state() -> OrderedDict:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return OrderedDict(
        whole=base,
        offset_view=base[1:, ::2],
        transposed=base.t(),
        scalar=torch.tensor(7, dtype=torch.int64),
        doubles=torch.linspace(0, 1, 5, dtype=torch.float64),
        empty=torch.zeros(0, 3),
    )


@pytest.mark.parametrize("zip_format", [False, True])
def test_shared_storages_offsets_and_strides(tmp_path, zip_format):
    path = tmp_path / "views.pt"
    torch.save(_views_state(), path, _use_new_zipfile_serialization=zip_format)
    _assert_same(read_state_dict(path), torch.load(path, weights_only=True))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _legacy_file(path, payload, magic=LEGACY_MAGIC_NUMBER) -> None:
    with open(path, "wb") as file:
        pickle.dump(magic, file, protocol=2)
        pickle.dump(LEGACY_PROTOCOL_VERSION, file, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {}}, file, protocol=2)
        pickle.dump(payload, file, protocol=2)
        pickle.dump([], file, protocol=2)


def test_malicious_reduce_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    _legacy_file(path, OrderedDict(w=_Exploit(marker)))
    with pytest.raises(ModelError, match="posix.system|os.system|nt.system"):
        read_state_dict(path)
    assert not marker.exists()


def test_malicious_global_in_header_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_header.pt"
    _legacy_file(path, OrderedDict(), magic=_Exploit(marker))
    with pytest.raises(ModelError, match="refusing"):
        read_state_dict(path)
    assert not marker.exists()


def test_malicious_zip_pickle_is_refused(tmp_path):
    import zipfile

    marker = tmp_path / "pwned"
    path = tmp_path / "evil_zip.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(_Exploit(marker), protocol=2))
    with pytest.raises(ModelError, match="refusing"):
        read_state_dict(path)
    assert not marker.exists()


def test_truncated_file_is_a_model_error(tmp_path):
    path = tmp_path / "full.pt"
    torch.save(_views_state(), path, _use_new_zipfile_serialization=False)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelError, match="truncated"):
        read_state_dict(cut)


def test_not_a_state_dict_is_a_model_error(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelError, match="not a state dict"):
        read_state_dict(path)


def test_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="Cannot read"):
        read_state_dict(tmp_path / "absent.pt")
