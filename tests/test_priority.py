"""Priority rules (ictus.pipelines.findings.priority): the default policy, ordering, and the rules file itself."""
from __future__ import annotations

import copy
import json

import pytest

from ictus.imaging.errors import InvalidInputError
from ictus.pipelines.findings.priority import DEFAULT_RULES_PATH, PRIORITIES, evaluate_priority, load_rules, validate_rules


def _doc(*, ich=None, volume=None, ivh=False, shift=None, verdict="ok", flags=()):
    return {
        "ich": {
            "present": ich,
            "total_volume_ml": volume,
            "subtypes": {"IPH": {"present": ich, "volume_ml": volume}, "EAH": {"present": False, "volume_ml": 0.0},
                         "IVH": {"present": ivh, "volume_ml": 1.0 if ivh else 0.0}},
        },
        "midline_shift_mm": shift,
        "qc": {"flags": list(flags), "verdict": verdict,
               "details": [{"name": f, "severity": "indeterminate"} for f in flags if verdict == "indeterminate"]},
    }


@pytest.mark.parametrize(
    "doc, expected",
    [
        (_doc(ich=False, volume=0.0, shift=0.0), "routine"),
        (_doc(ich=True, volume=3.0, shift=1.0), "critical"),
        (_doc(ich=True, volume=29.9, shift=4.9), "critical"),
        (_doc(ich=True, volume=30.0, shift=0.0), "critical"),
        (_doc(ich=False, volume=0.0, shift=5.0), "critical"),
        (_doc(ich=True, volume=2.0, ivh=True), "critical"),
        (_doc(ich=None, volume=None, verdict="indeterminate", flags=("no_brain_found",)), "indeterminate"),
        (_doc(ich=True, volume=80.0, verdict="indeterminate", flags=("contrast_suspected",)), "indeterminate"),
        (_doc(ich=False, volume=0.0, shift=None, verdict="warning", flags=("thick_slices",)), "routine"),
    ],
)
def test_default_rules(doc, expected):
    priority, reasons = evaluate_priority(doc)
    assert priority == expected
    assert (reasons == ()) == (expected == "routine")


def test_reasons_list_every_condition_that_holds():
    priority, reasons = evaluate_priority(_doc(ich=True, volume=45.0, ivh=True, shift=7.2))
    assert priority == "critical" and len(reasons) == 4
    assert "45.0 mL" in reasons[0] and "7.2 mm" in reasons[1] and "intraventricular" in reasons[2]
    assert "45.0 mL" in reasons[3]
    _, reasons = evaluate_priority(_doc(verdict="indeterminate", flags=("no_brain_found",)))
    assert "no_brain_found" in reasons[0]


def test_null_values_never_trigger():
    assert evaluate_priority({"ich": {"present": None}, "midline_shift_mm": None, "qc": {}})[0] == "routine"
    assert evaluate_priority({})[0] == "routine"


def test_custom_rules_change_thresholds_and_order():
    rules = copy.deepcopy(load_rules())
    for rule in rules["rules"]:
        for cond in rule["any"]:
            if cond["field"] == "ich.total_volume_ml":
                cond["value"] = 10.0
    assert evaluate_priority(_doc(ich=True, volume=12.0), rules)[0] == "critical"
    rules["rules"].append({"priority": "urgent", "all": [
        {"field": "qc.flags", "op": "contains", "value": "thick_slices"},
        {"field": "midline_shift_mm", "op": ">", "value": 2},
    ]})
    assert evaluate_priority(_doc(ich=False, volume=0.0, shift=3.0, flags=("thick_slices",)), rules)[0] == "urgent"
    assert evaluate_priority(_doc(ich=False, volume=0.0, shift=1.0, flags=("thick_slices",)), rules)[0] == "routine"
    rules["default"] = "urgent"
    assert evaluate_priority(_doc(ich=False, volume=0.0), rules)[0] == "urgent"


def test_packaged_file_is_documented_and_valid():
    raw = json.loads(DEFAULT_RULES_PATH.read_text())
    assert raw["schema"] == "ictus-priority-rules/1" and len(raw["description"]) > 200
    validate_rules(raw)
    assert [r["priority"] for r in raw["rules"]] == ["indeterminate", "critical", "indeterminate", "urgent"]
    assert raw["default"] == "routine" and set(PRIORITIES) == {"critical", "urgent", "routine", "indeterminate"}


@pytest.mark.parametrize(
    "rules",
    [
        {},
        {"rules": [{"priority": "high", "any": [{"field": "ich.present", "value": True}]}]},
        {"rules": [{"priority": "urgent", "any": []}]},
        {"rules": [{"priority": "urgent", "any": [{"field": "ich.present", "op": "~", "value": True}]}]},
        {"rules": [{"priority": "urgent", "any": [{"value": True}]}]},
        {"default": "later", "rules": []},
    ],
)
def test_bad_rules_are_refused(rules):
    with pytest.raises(InvalidInputError):
        validate_rules(rules)


def test_bad_rules_files(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_rules(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InvalidInputError, match="not readable JSON"):
        load_rules(broken)


def test_one_priority_enum_orders_the_levels():
    from ictus.pipelines.findings.priority import Priority

    assert PRIORITIES == tuple(p.value for p in Priority) == ("critical", "urgent", "routine", "indeterminate")
    assert Priority.CRITICAL.at_least("urgent") and Priority.URGENT.at_least(Priority.URGENT)
    assert not Priority.ROUTINE.at_least("urgent") and not Priority.INDETERMINATE.at_least("urgent")
    assert str(Priority.CRITICAL) == "critical" and Priority.CRITICAL.rank < Priority.ROUTINE.rank


def test_findings_object_is_accepted():
    from ictus.imaging.volume import volume_from_array
    from ictus.pipelines.findings.build import build_findings
    import numpy as np

    vol = volume_from_array(np.zeros((2, 2, 2)))
    f = build_findings(vol, None)
    assert evaluate_priority(f) == (f.priority, f.priority_reasons)


def _stroke(doc, *, aspects=(10, 10), dense=False, registered=True, large=False):
    doc = copy.deepcopy(doc)
    early = min(aspects) < 10
    doc["anatomy"] = {"registered": registered, "quality_dice": 0.9 if registered else 0.5}
    doc["ischaemia"] = ({"assessed": True, "reason": "ok", "aspects": {"left": aspects[0], "right": aspects[1]},
                         "aspects_min": min(aspects), "early_change": early, "large_mca_hypodensity": large}
                        if registered else {"assessed": False, "reason": "registration_failed: template overlap 0.50"})
    doc["dense_artery"] = {"assessed": registered, "present": dense if registered else None}
    return doc


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, "routine"),
        ({"aspects": (9, 10)}, "urgent"),
        ({"aspects": (10, 8)}, "urgent"),
        ({"aspects": (7, 10)}, "critical"),
        ({"dense": True}, "critical"),
        ({"large": True}, "urgent"),
        ({"registered": False}, "indeterminate"),
    ],
)
def test_stroke_rules(kwargs, expected):
    priority, reasons = evaluate_priority(_stroke(_doc(ich=False, volume=0.0, shift=0.0), **kwargs))
    assert priority == expected
    if expected == "indeterminate":
        assert "registration_failed" in reasons[0]
    if kwargs.get("aspects") and expected != "routine":
        assert "ASPECTS" in reasons[0]


def test_a_bleed_outranks_a_failed_registration():
    doc = _stroke(_doc(ich=True, volume=4.0, shift=0.0), registered=False)
    assert evaluate_priority(doc)[0] == "critical"
