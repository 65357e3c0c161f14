"""Stroke findings in every output: SEG segments, SR ASPECTS section, ASPECTS key images, report section.

The anatomy, ischaemia and dense-artery objects are small fakes with the attributes the writers
read (tests/writers_support.with_stroke); the findings blocks come from ictus.pipelines.findings.stroke.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ictus.pipelines.writers import ALL_OUTPUTS, common, write_outputs
from tests.writers_support import dciodvfy_errors, phantom_result, require_tool, with_stroke

LANGS = ("en", "ru", "kk")


@pytest.fixture(scope="module")
def stroke_study(tmp_path_factory):
    """A tilted phantom (IPH, shift) with left LN + M2 affected and a left M1 dense artery; all outputs in
    English, the report and key images in ru/kk; and the same study with a failed registration."""
    root = tmp_path_factory.mktemp("writers-stroke")
    base, written = phantom_result(root / "study", n_slices=30, tilt_deg=15.0, shift_mm=6.0)
    result = with_stroke(base)
    paths = {"en": write_outputs(result, root / "out-en", outputs=ALL_OUTPUTS, lang="en")}
    for lang in ("ru", "kk"):
        paths[lang] = write_outputs(result, root / f"out-{lang}", outputs=("sc", "report"), lang=lang)
    failed = with_stroke(base, registered=False)
    paths["failed"] = write_outputs(failed, root / "out-failed", outputs=ALL_OUTPUTS, lang="en")
    return result, failed, written, paths


def _dsrdump(path) -> str:
    proc = subprocess.run([require_tool("dsrdump"), "+Pl", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_seg_has_the_stroke_segments_and_passes_dciodvfy(stroke_study):
    result, _, written, paths = stroke_study
    path = paths["en"]["seg"][0]
    assert dciodvfy_errors(path) == []
    seg = hd.seg.segread(path)
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == ["IPH", "ASPECTS LN left", "ASPECTS M2 left", "Hyperdense artery M1 left"]
    by_label = {s.SegmentLabel: s for s in seg.SegmentSequence}
    m2 = by_label["ASPECTS M2 left"]
    assert m2.SegmentDescription == "ASPECTS region M2 left (affected)"
    assert m2.SegmentedPropertyTypeCodeSequence[0].CodeValue == "432504007"
    assert m2.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    region = m2.AnatomicRegionSequence[0]
    assert region.CodeValue == "40146001" and region.AnatomicRegionModifierSequence[0].CodeValue == "7771000"
    artery = by_label["Hyperdense artery M1 left"]
    assert artery.SegmentedPropertyTypeCodeSequence[0].CodeValue == "396339007"
    assert artery.AnatomicRegionSequence[0].CodeValue == "414722000"
    # the M2 segment on the source frames has about the fake region's volume, and lies on the patient's left
    datasets = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in written.series_dir.glob("*.dcm")),
                      key=lambda d: int(d.InstanceNumber))
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=[d.SOPInstanceUID for d in datasets],
                                            segment_numbers=[int(m2.SegmentNumber)], combine_segments=True,
                                            skip_overlap_checks=True).astype(bool)
    grid_ml = float((np.asarray(result.ischaemia.affected_mask) == 6).sum()) * np.prod(result.anatomy.grid.GetSpacing()) / 1000
    voxel_ml = float(np.prod([float(v) for v in datasets[0].PixelSpacing])) * result.volume.spacing_mm[2] / 1000
    assert got.sum() * voxel_ml == pytest.approx(grid_ml, rel=0.15)
    k = int(np.argmax(got.sum(axis=(1, 2))))
    ds = datasets[k]
    rows, cols = np.nonzero(got[k])
    iop = np.array(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    x_mm = float(ds.ImagePositionPatient[0]) + cols.mean() * dc * iop[0] + rows.mean() * dr * iop[3]
    assert x_mm > result.midline.ideal_plane.a_mm  # LPS +x = patient left


def test_sr_has_the_aspects_section_and_passes_dciodvfy(stroke_study):
    result, _, _, paths = stroke_study
    path = paths["en"]["sr"][0]
    assert dciodvfy_errors(path) == []
    text = _dsrdump(path)
    nums = re.findall(r'NUM:\(,,"([^"]+)"\)="([^"]+)" \(([^,]*),UCUM', text)
    aspects = [float(v) for name, v, unit in nums if name == "Alberta Stroke Program Early CT Score"]
    assert aspects == [8.0, 10.0] and all(u == "{score}" for n, _, u in nums if n.startswith("Alberta"))
    assert ("Net water uptake", "10.2", "%") in nums
    assert any(n == "Attenuation Coefficient" and u == "[hnsf'U]" for n, _, u in nums)
    assert any(n == "Length" and u == "mm" for n, _, u in nums)
    assert "likely within 4.5 h" in text and "estimate" in text
    report = hd.sr.srread(path)
    seg = pydicom.dcmread(paths["en"]["seg"][0], stop_before_pixels=True)
    refs = {g.tracking_identifier: g.referenced_segment.referenced_segment_numbers[0]
            for g in report.content.get_volumetric_roi_measurement_groups()}
    assert refs == {"IPH (ictus)": 1, "ASPECTS LN left (ictus)": 2, "ASPECTS M2 left (ictus)": 3,
                    "Hyperdense artery (ictus)": 4}
    assert all(g.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
               for g in report.content.get_volumetric_roi_measurement_groups())
    region_groups = re.findall(r'"Tracking Identifier"\)="(ASPECTS [^"]+)"', text)
    assert len(region_groups) == 21  # the score group and all 20 regions


def test_aspects_key_images_at_two_levels(stroke_study):
    result, _, _, paths = stroke_study
    comments = {pydicom.dcmread(p).ImageComments: p for p in paths["en"]["sc"]}
    kinds = [c.split(":")[1].split(",")[0].strip() for c in comments]
    assert "aspects_ganglionic" in kinds and "aspects_supraganglionic" in kinds
    for path in paths["en"]["sc"]:
        assert dciodvfy_errors(path) == [], path
    ganglionic = next(p for c, p in comments.items() if "aspects_ganglionic" in c)
    rgb = pydicom.dcmread(ganglionic).pixel_array.astype(int)
    banner = rgb[2:10, 2:10].reshape(-1, 3)
    assert np.all(banner[:, 0] > 150) and np.all(banner[:, 1] < 40)
    yellow = (rgb[..., 0] > 150) & (rgb[..., 1] > 120) & (rgb[..., 2] < 90)
    magenta = (rgb[..., 0] > 200) & (rgb[..., 1] < 40) & (rgb[..., 2] > 200)
    assert yellow.sum() > 300 and magenta.sum() > 50  # affected regions filled, the artery marked
    # the levels are the slices of the analysis grid with the most ganglionic / supraganglionic voxels
    from ictus.pipelines.writers.keyimages import aspects_level_slices

    levels = dict(aspects_level_slices(np.asarray(result.anatomy.aspects)))
    assert f"slice {levels['ganglionic'] + 1} " in next(c for c in comments if "aspects_ganglionic" in c)
    assert levels["supraganglionic"] > levels["ganglionic"]


@pytest.mark.parametrize("lang", LANGS)
def test_report_has_the_stroke_section(stroke_study, lang):
    pypdf = pytest.importorskip("pypdf")
    _, _, _, paths = stroke_study
    m = common.load_messages(lang)
    html = Path(next(p for p in paths[lang]["report"] if p.endswith(".html"))).read_text(encoding="utf-8")
    for key in ("stroke_section", "aspects_table", "region_M2", "dense_artery_title", "ich_score_title",
                "cautions_title", "registration_title", "caution_haemorrhage", "nwu_note", "onset_within"):
        assert m[key].replace("'", "&#x27;") in html, key
    assert m["stroke_early_yes"].split("{")[0].strip() in html
    assert html.count('class="affected"') == 3  # LN and M2 left, the dense M1
    assert "10.2 %" in html
    pdfs = [p for p in paths[lang]["report"] if p.endswith(".pdf")]
    if pdfs:
        flat = re.sub(r"\s+", " ", " ".join(page.extract_text() for page in pypdf.PdfReader(pdfs[0]).pages))
        for key in ("stroke_section", "dense_artery_title", "registration_title"):
            assert m[key] in flat, key
        assert "8 / 10" in flat and "10.2" in flat
    key_images = [pydicom.dcmread(p) for p in paths[lang]["sc"]]
    assert sum("aspects" in ds.ImageComments for ds in key_images) == 2


def test_not_assessed_when_registration_failed(stroke_study):
    _, failed, _, paths = stroke_study
    out = paths["failed"]
    assert {"json", "seg", "sr", "sc", "report"} <= set(out)
    seg = hd.seg.segread(out["seg"][0])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["IPH"]
    for path in out["seg"] + out["sr"] + out["sc"]:
        assert dciodvfy_errors(path) == [], path
    text = _dsrdump(out["sr"][0])
    assert 'TEXT:(,,"Alberta Stroke Program Early CT Score")="not assessed (registration_failed' in text
    assert 'NUM:(,,"Alberta' not in text and "ASPECTS M2" not in text
    assert not any("aspects" in pydicom.dcmread(p).ImageComments for p in out["sc"])
    html = Path(out["report"][0]).read_text(encoding="utf-8")
    m = common.load_messages("en")
    assert m["registered_no"] in html and "not assessed" in html
