"""Lesion regions come from the installed assets, from any working directory (issue: regions
vanished outside the project folder because the atlas was found only through an environment
variable pointing into the test data)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import shared_dicom

pytestmark = pytest.mark.slow


def test_regions_resolve_from_a_foreign_working_directory(fast_models_dir, tmp_path):
    study = shared_dicom("ge-head-tilt-variable-spacing")
    env = {k: v for k, v in os.environ.items() if k not in ("ICTUS_ATLAS_DIR", "ICTUS_SHARED_DIR", "ICTUS_MODELS_DIR")}
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    ictus = Path(sys.executable).with_name("ictus")
    proc = subprocess.run([str(ictus), "triage", str(study), "--fast", "--models-dir", str(fast_models_dir),
                           "--outputs", "json", "--out", "out"], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((elsewhere / "out" / "findings.json").read_text())
    assert doc["location"]["region_status"] == "ok", doc["location"]
    assert doc["anatomy"]["registered"] is True
    assert doc["ischaemia"]["assessed"] is True and doc["ischaemia"]["aspects"] == {"left": 10, "right": 10}
