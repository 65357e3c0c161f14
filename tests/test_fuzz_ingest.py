"""The fuzzed bad-input corpus (scripts/fuzz_ingest.py) with a fixed seed.

500 mutated copies of the real GE head / WG04 / ct0012 files go through the
in-process ingest path (:func:`ictus.pipelines.triage.load_volume`, one forked child
per study with a time limit), and 20 of them also through the real ``ictus
volume`` subprocess. Each must end with exit 0, 3 or 4 (one error line for 3/4),
never exit 1, a traceback, a hang or a half-written output file.
"""
from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import ROOT, shared_dicom

SEED = 14
COUNT = 500
CLI_COUNT = 20


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("fuzz_ingest", ROOT / "scripts" / "fuzz_ingest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_ingest"] = module
    spec.loader.exec_module(module)
    return module


def test_every_mutation_builds_a_study(tmp_path):
    shared_dicom("ge-head-tilt-variable-spacing")
    fuzz = _fuzz_module()
    src = fuzz.Sources.load()
    for i, name in enumerate(sorted(fuzz.MUTATIONS)):
        files = fuzz.MUTATIONS[name][1](src, fuzz.study_rng(SEED, i))
        assert files, name


@pytest.mark.slow  # about 4 min: 500 fuzzed studies through the CLI
def test_fuzzed_bad_input_ends_as_promised(tmp_path):
    shared_dicom("ge-head-tilt-variable-spacing")
    fuzz = _fuzz_module()
    report = fuzz.fuzz(SEED, COUNT, tmp_path, timeout_s=30.0, cli_count=CLI_COUNT)
    print(report.to_text())
    assert sum(1 for o in report.outcomes if o.path_kind == "in_process") == COUNT
    assert sum(1 for o in report.outcomes if o.path_kind == "cli") == CLI_COUNT
    assert not report.failures, "\n".join(f"#{o.index} {o.mutation}: {o.problem[:300]}" for o in report.failures)
    counts = report.counts("in_process")
    assert set(counts) <= {"exit 0", "exit 3", "exit 4"}
    assert counts["exit 0"] > 0 and counts["exit 4"] > 0  # both kinds of outcome are exercised
