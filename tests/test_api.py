"""The notebook API: same path as the CLI, nothing printed, NIfTI and DICOM loaders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ictus.pipelines.api as api


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    pytest.importorskip("monai")
    from research_support import tiny_model

    return tiny_model(tmp_path_factory.getbasetemp() / "tiny-segresnet")


def test_public_names() -> None:
    for name in ("triage", "TriageResult", "TriageEngine", "load_volume_and_mask", "plot_montage", "plot_midline",
                 "evaluate_dataset", "read_dataset", "triage_volume"):
        assert hasattr(api, name), name
    # the notebook entry point is the pipeline's triage run inside the PHI guard
    import inspect

    assert "_triage_module.triage(" in inspect.getsource(api.triage) and "phi_guard" in inspect.getsource(api.triage)


def test_triage_matches_the_cli_and_prints_nothing(tiny: Path, tmp_path: Path, cli_runner, capsys) -> None:
    study = tiny.parent.parent.parent / "phantoms" / "p00"
    result = api.triage(study, model=str(tiny), threads=2)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    seg = result.segmentation
    x, y, z = result.volume.size
    assert seg.probabilities.shape == (5, z, y, x) and seg.labels.shape == (z, y, x)
    assert isinstance(result.qc_flags, tuple) and result.provenance.models[0].id == "tiny-segresnet"
    code, _, stderr = cli_runner("triage", study, "--model", tiny, "--out", tmp_path / "o", "--outputs", "json",
                                 "--threads", "2")
    assert code == 0, stderr
    cli = json.loads((tmp_path / "o" / "findings.json").read_text())
    for key in ("priority", "findings_reported", "ich", "oedema", "midline_shift_mm", "qc"):
        assert cli[key] == result.findings_dict()[key], key


def test_triage_volume_on_nifti_equals_dicom(tiny: Path) -> None:
    """The NIfTI the phantom was converted to gives the same labels as its DICOM study."""
    base = tiny.parent.parent.parent
    from_nifti = api.triage_volume(base / "nifti" / "ct_scans" / "000.nii.gz", model=str(tiny), threads=2)
    from_dicom = api.triage(base / "phantoms" / "p00", model=str(tiny), threads=2)
    assert np.array_equal(from_nifti.segmentation.labels, from_dicom.segmentation.labels)


def test_load_volume_and_mask_from_dicom(tiny: Path) -> None:
    folder = tiny.parent.parent.parent / "phantoms" / "p00"
    volume, mask = api.load_volume_and_mask(folder, folder / "ground_truth_labels.nii.gz")
    truth = json.loads((folder / "ground_truth.json").read_text())
    assert mask.shape == volume.array_view().shape
    iph_ml = float((mask == 1).sum()) * volume.voxel_volume_ml
    assert iph_ml == pytest.approx(truth["volumes_ml"]["IPH"]["on_grid_ml"], rel=1e-6)


def test_missing_study_is_an_ictus_error(tmp_path: Path) -> None:
    from ictus.imaging.errors import IctusError

    with pytest.raises(IctusError):
        api.triage(tmp_path / "nothing")
