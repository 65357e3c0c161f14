"""Stroke findings (ictus.pipelines.findings.stroke): IVH by location, ICH-score components, summary."""
from __future__ import annotations

import numpy as np

from ictus.imaging.measure import measure_labels
from ictus.imaging.volume import volume_from_array
from ictus.pipelines.findings.stroke import (
    IschaemiaFinding,
    DenseArteryFinding,
    ich_score_finding,
    relabel_ivh_by_location,
    stroke_summary,
)

NAMES = ("background", "IPH", "EAH", "oedema", "IVH")


def test_blood_mostly_in_the_ventricles_becomes_ivh_and_a_touching_bleed_does_not():
    labels = np.zeros((20, 40, 40), np.uint8)
    ventricles = np.zeros_like(labels, bool)
    ventricles[5:15, 10:20, 10:20] = True
    labels[6:14, 11:19, 11:19] = 1  # a cast inside the ventricle, called IPH
    labels[5:15, 25:35, 5:15] = 1  # a parenchymal bleed ...
    labels[8:10, 19:25, 12:14] = 0
    labels[5:15, 21:25, 8:12] = 1  # ... touching the ventricle only at its edge
    ventricles[5:15, 21:23, 8:12] = True
    out, moved_ml = relabel_ivh_by_location(labels, NAMES, ventricles, voxel_ml=0.001)
    assert (out[6:14, 11:19, 11:19] == 4).all()
    assert (out[5:15, 25:35, 5:15] == 1).all()
    assert moved_ml == np.count_nonzero(out == 4) * 0.001
    same, none = relabel_ivh_by_location(labels, ("background", "IPH"), ventricles, 0.001)
    assert none == 0.0 and same is labels


def _measure(volume_ml_iph: float, with_ivh: bool):
    labels = np.zeros((40, 64, 64), np.uint8)
    side = round((volume_ml_iph * 1000) ** (1 / 3))
    labels[5:5 + side, 5:5 + side, 5:5 + side] = 1
    if with_ivh:
        labels[30:35, 40:50, 40:50] = 4
    vol = volume_from_array(np.zeros(labels.shape, np.float32), spacing_mm=(1.0, 1.0, 1.0))

    class Lookup:
        def region_of(self, points):
            return "LeftCerebellum"

        def compartment_of(self, points):
            return "infratentorial"

    return measure_labels(labels, vol, NAMES, atlas=Lookup())


def test_ich_score_components():
    score = ich_score_finding(_measure(31.0, True), 82.0, reported=True)
    assert score.volume_ge_30_ml and score.ivh_present and score.infratentorial_origin and score.age_ge_80
    assert score.imaging_points == 4
    small = ich_score_finding(_measure(8.0, False), 40.0, reported=True)
    assert small.imaging_points == 1 and not small.volume_ge_30_ml and not small.age_ge_80
    unknown_age = ich_score_finding(_measure(8.0, False), None, reported=True)
    assert unknown_age.age_ge_80 is None
    assert ich_score_finding(None, 90.0, reported=False).imaging_points is None


def test_summary_answers_four_questions_and_lists_cautions():
    isch = IschaemiaFinding(assessed=True, reason="ok", aspects={"left": 7, "right": 10}, aspects_min=7,
                            affected_side="left", affected_regions={"left": ("M2", "IC", "LN"), "right": ()},
                            early_change=True, score_reliable=True, nwu_percent=6.2, onset_within_4_5h_likely=True,
                            nwu_cutoff_percent=11.5, large_mca_hypodensity=True)
    dense = DenseArteryFinding(assessed=True, present=True, side="left", segment="M1", reason="ok")
    s = stroke_summary(True, 12.0, isch, dense)
    assert s.blood.startswith("yes, 12.0 mL")
    assert "ASPECTS left 7, right 10" in s.early_ischaemic_change and "M2" in s.early_ischaemic_change
    assert "left M1" in s.dense_artery
    assert "6.2%" in s.tissue_age and "within 4.5 h" in s.tissue_age and "estimate" in s.tissue_age
    assert len(s.cautions) == 2
    none = stroke_summary(False, 0.0, IschaemiaFinding(assessed=False, reason="registration_failed"),
                          DenseArteryFinding(assessed=False, present=None, side=None, segment=None, reason="x"))
    assert none.blood == "no haemorrhage found" and "not assessed" in none.early_ischaemic_change
    assert none.cautions == ()
