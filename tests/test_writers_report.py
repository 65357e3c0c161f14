"""The human report (HTML, PDF) in English, Russian and Kazakh, findings.json, and the catalogues.

The HTML is rendered by headless Chromium (a browser nobody here wrote) to a
PNG; the PDF text is extracted with pypdf. Both must carry the key numbers.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ictus.imaging.errors import OutputError
from ictus.pipelines.findings.record import DISCLAIMER
from ictus.pipelines.writers import ALL_OUTPUTS, common, write_outputs
from ictus.pipelines.writers.json_out import findings_json_text
from tests.writers_support import phantom_result, require_tool, with_pipeline_findings

LANGS = ("en", "ru", "kk")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 40-slice phantom (30 mL IPH, 6 mm shift) with findings from ictus.pipelines.findings.record; all outputs in
    English and the report in ru/kk."""
    root = tmp_path_factory.mktemp("writers-report")
    result, _ = phantom_result(root / "study", n_slices=40, tilt_deg=0.0, shift_mm=6.0)
    result = with_pipeline_findings(result)
    paths = {"en": write_outputs(result, root / "out-en", outputs=ALL_OUTPUTS, lang="en")}
    for lang in ("ru", "kk"):
        paths[lang] = write_outputs(result, root / f"out-{lang}", outputs=("report",), lang=lang)
    return result, paths, root


def _key_numbers(findings) -> list[str]:
    ich = findings.ich
    return [
        f"{ich.subtypes['IPH'].volume_ml:.1f}",
        f"{ich.total_volume_ml:.1f}",
        f"{findings.oedema.volume_ml:.1f}",
        f"{findings.midline_shift_mm:.1f}",
        f"{ich.probability:.2f}",
    ]


def test_all_outputs_are_written(study):
    _, paths, root = study
    assert set(paths["en"]) == set(ALL_OUTPUTS)
    out = root / "out-en"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["findings.json", "seg.dcm", "sr.dcm", "keyimages", "report.html", "report.pdf"])
    assert not list(root.glob("**/.ictus-outputs-*")) and not list(root.glob("**/*.tmp"))


@pytest.mark.parametrize("lang", LANGS)
def test_html_report_is_self_contained_and_has_the_numbers(study, lang):
    result, paths, _ = study
    html = Path(paths[lang]["report"][0]).read_text(encoding="utf-8")
    m = common.load_messages(lang)
    for number in _key_numbers(result.findings):
        assert number in html
    for key in ("disclaimer", "priority_critical", "ich_present", "class_IPH", "midline_shift", "qc", "provenance"):
        assert m[key].replace("'", "&#x27;") in html, key
    assert f'<html lang="{lang}">' in html
    assert re.findall(r'src="([^"]*)"', html) and all(s.startswith("data:image/png;base64,") for s in re.findall(r'src="([^"]*)"', html))
    assert "<link" not in html and "http://" not in html and "https://" not in html
    model = result.findings.models[0]
    assert model.members and all(member.sha256 in html for member in model.members)
    assert result.findings.ich.abc2.volume_ml > 0 and m["abc2"] in html
    lesion = result.findings.ich.subtypes["IPH"].lesions[0]
    assert m[f"hemisphere_{lesion.hemisphere}"] in html  # the phantom's bleed side, translated


@pytest.mark.parametrize("lang", LANGS)
def test_pdf_report_has_the_numbers(study, lang):
    pypdf = pytest.importorskip("pypdf", reason="pypdf reads the PDF text (pip install pypdf)")
    result, paths, _ = study
    pdfs = [p for p in paths[lang]["report"] if p.endswith(".pdf")]
    if not pdfs:
        pytest.skip("report.pdf was not made here (reportlab or DejaVu font missing)")
    text = " ".join(page.extract_text() for page in pypdf.PdfReader(pdfs[0]).pages)
    flat = re.sub(r"\s+", " ", text)
    for number in _key_numbers(result.findings):
        assert number in flat
    m = common.load_messages(lang)
    assert m["priority_critical"] in flat and m["report_title"] in flat
    if lang != "en":
        assert re.search("[\u0400-\u04ff]{4,}", flat)  # Cyrillic survived the font embedding


@pytest.mark.parametrize("lang", LANGS)
def test_html_report_renders_in_headless_chromium(study, lang, tmp_path):
    chromium = require_tool("chromium")
    _, paths, _ = study
    png = tmp_path / f"report-{lang}.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1200,2000",
           Path(paths[lang]["report"][0]).resolve().as_uri()]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and png.exists(), proc.stderr[-2000:]
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert img.shape[:2] == (2000, 1200)
    # the red disclaimer frame, the critical badge and the dark key images are on the page
    red = (img[..., 0] > 150) & (img[..., 1] < 60) & (img[..., 2] < 80)
    dark = img.sum(axis=-1) < 60
    assert red.sum() > 2000 and dark.sum() > 50000, (red.sum(), dark.sum())


def test_catalogues_are_complete_and_translated():
    en = common.load_messages("en")
    for lang in ("ru", "kk"):
        raw = json.loads((common.LOCALES_DIR / f"{lang}.json").read_text(encoding="utf-8"))
        assert set(raw) == set(json.loads((common.LOCALES_DIR / "en.json").read_text(encoding="utf-8")))
        m = common.load_messages(lang)
        same = [k for k in en if m[k] == en[k] and re.search("[a-z]{3,}", en[k]) and k not in ("sha256",)]
        assert not same, same  # every sentence translated
        assert all(not re.search("[\u0400-\u04ff]", en[k]) for k in en)
        assert re.search("[\u0400-\u04ff]", m["disclaimer"])
    assert re.search("[әғқңөұүһі]", common.load_messages("kk")["disclaimer"])  # Kazakh, not Russian
    raw_en = json.loads((common.LOCALES_DIR / "en.json").read_text(encoding="utf-8"))
    assert raw_en["disclaimer"] == en["disclaimer"] == DISCLAIMER  # one English text, translated by the others
    assert set(common.LANGUAGES) == {p.stem for p in common.LOCALES_DIR.glob("*.json")}
    for lang in LANGS:  # format fields agree across languages
        m = common.load_messages(lang)
        for key in ("key_image_lesion", "key_image_midline", "key_image_slice"):
            assert m[key].format(slice=3, slices=30)


def test_unknown_language_or_output_is_refused_before_writing(study, tmp_path):
    result, _, _ = study
    with pytest.raises(OutputError, match="language"):
        write_outputs(result, tmp_path / "a", lang="de")
    with pytest.raises(OutputError, match="unknown output"):
        write_outputs(result, tmp_path / "b", outputs=("json", "png"))
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_findings_json_round_trips(study):
    result, paths, _ = study
    written = json.loads(Path(paths["en"]["json"][0]).read_text(encoding="utf-8"))
    outputs = written.pop("outputs")  # findings.json is written last and lists every output
    assert written == result.findings.to_dict()
    assert {k: v["status"] for k, v in outputs.items()} == dict.fromkeys(("json", "seg", "sr", "sc", "report"), "written")
    text = findings_json_text({"a": np.float32(1.5), "b": np.int64(3), "c": (1, 2), "d": np.array([1.0])})
    assert json.loads(text) == {"a": 1.5, "b": 3, "c": [1, 2], "d": [1.0]}
    with pytest.raises(OutputError, match="finite"):
        findings_json_text({"ich": {"total_volume_ml": float("nan")}})
