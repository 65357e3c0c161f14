"""``ictus series``: table and JSON output, and the documented exit code with
one line on stderr (never a traceback) for each bad input."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from conftest import shared_dicom
from test_dicom_io import write_series

EXIT_OK, EXIT_NO_SERIES, EXIT_INVALID = 0, 3, 4


def _assert_clean_error(code: int, out: str, err: str, expected: int) -> None:
    assert code == expected, (code, out, err)
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ictus: error: ")


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, int]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    noise = tmp_path / "noise"
    noise.mkdir()
    (noise / "x.dcm").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    truncated = tmp_path / "truncated"
    (path,) = write_series(truncated, 1, size=64)
    path.write_bytes(path.read_bytes()[:-100])
    mr = tmp_path / "mr"
    write_series(mr, 30, modality="MR", sop_class="1.2.840.10008.5.1.4.1.1.4")
    single = tmp_path / "single"
    write_series(single, 1)
    no_pixels = tmp_path / "no_pixels"
    write_series(no_pixels, 30, pixels=False)
    return {
        "missing": (tmp_path / "does-not-exist", EXIT_INVALID),
        "empty folder": (empty, EXIT_INVALID),
        "random bytes": (noise, EXIT_INVALID),
        "truncated": (truncated, EXIT_INVALID),
        "MR only": (mr, EXIT_NO_SERIES),
        "single slice": (single, EXIT_NO_SERIES),
        "no pixel data": (no_pixels, EXIT_NO_SERIES),
    }


@pytest.mark.parametrize("as_json", [False, True])
def test_bad_inputs_exit_codes(tmp_path: Path, cli_runner, as_json: bool) -> None:
    for name, (path, expected) in _bad_inputs(tmp_path).items():
        args = ["series", path] + (["--json"] if as_json else [])
        code, out, err = cli_runner(*args)
        _assert_clean_error(code, out, err, expected)
        if expected == EXIT_NO_SERIES:
            assert out.strip(), name  # the list is still printed
            if as_json:
                assert json.loads(out)["chosen"] is None


def test_good_series_table_and_json(tmp_path: Path, cli_runner) -> None:
    study = generate_uid()
    write_series(tmp_path / "a", 30, study_uid=study, description="Brain 5mm")
    write_series(tmp_path / "b", 30, study_uid=study, description="Brain bone", kernel="BONE")
    code, out, err = cli_runner("series", tmp_path)
    assert code == EXIT_OK, err
    marked = [line for line in out.splitlines() if line.startswith("*")]
    assert len(marked) == 1 and "Brain 5mm" in marked[0]
    assert "rejected: bone or sharp kernel (BONE)" in out

    code, out, err = cli_runner("series", tmp_path, "--json")
    assert code == EXIT_OK
    data = json.loads(out)
    chosen = next(s for s in data["series"] if s["key"] == data["chosen"])
    assert chosen["description"] == "Brain 5mm" and chosen["eligible"] and chosen["n_slices"] == 30
    assert len(chosen["files"]) == 30
    other = next(s for s in data["series"] if s["key"] != data["chosen"])
    assert other["score"] is None and other["rejections"][0]["rule"] == "sharp_kernel"


def test_header_text_cannot_reach_the_terminal_or_leak_identity(tmp_path: Path, cli_runner) -> None:
    write_series(tmp_path, 30, series_uid="1.2.3/../../x\x1b[2J", description="head\x1b]0;pwned\x07\r\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = cli_runner("series", tmp_path)
    assert code == EXIT_OK
    assert not any(ch in out for ch in "\x1b\x07\r\x00")
    assert err.strip() == ""
    # pydicom's warnings about the odd values would reach stderr outside pytest
    assert not [w for w in caught if "pydicom" in (w.filename or "")]
    assert "Doe" not in out + err and "PID-777" not in out + err


def test_debug_shows_a_traceback(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ictus.pipelines.cli import cli

    result = CliRunner().invoke(cli, ["--debug", "series", str(tmp_path)])
    assert result.exit_code != 0 and result.exception is not None  # raised, not swallowed


def test_real_philips_study_exit_zero(cli_runner) -> None:
    folder = shared_dicom("philips-head-phantom-tilted")
    code, out, err = cli_runner("series", folder, "--json")
    assert code == EXIT_OK, err
    data = json.loads(out)
    assert data["skipped_non_dicom"] == len(list(folder.rglob("DIRFILE")))
    chosen = next(s for s in data["series"] if s["key"] == data["chosen"])
    assert Path(chosen["files"][0]).parent.name in ("S2010", "S3010")


def test_real_wg04_exit_three(cli_runner) -> None:
    code, out, err = cli_runner("series", shared_dicom("wg04-ct2-compression"))
    _assert_clean_error(code, out, err, EXIT_NO_SERIES)
    assert "too few slices" in err


@pytest.mark.parametrize("extra,expected,rule", [((), EXIT_OK, None), (("--contrast",), EXIT_NO_SERIES, "contrast")])
def test_phantom_study(tmp_path: Path, cli_runner, extra: tuple[str, ...], expected: int, rule: str | None) -> None:
    """The phantom generator (written by someone else) feeds the selection."""
    pytest.importorskip("ictus.imaging.phantom")
    code, _, err = cli_runner("phantom", tmp_path / "study", "--with-scout", "--matrix", "128",
                              "--pixel-spacing-mm", "1.8", *extra)
    assert code == 0, err
    code, out, err = cli_runner("series", tmp_path / "study", "--json")
    assert code == expected, err
    series = json.loads(out)["series"]
    assert len(series) == 2
    scout = next(s for s in series if s["n_slices"] == 1)
    axial = next(s for s in series if s["n_slices"] > 1)
    assert scout["rejections"][0]["rule"] == "localizer"
    if rule is None:
        assert axial["eligible"] and json.loads(out)["chosen"] == axial["key"]
    else:
        assert axial["rejections"][0]["rule"] == rule
