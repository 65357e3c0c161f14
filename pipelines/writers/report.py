"""The human report: ``report.html`` (self-contained) and ``report.pdf`` (reportlab, no browser).

Both show the summary (priority, haemorrhage yes/no, volumes, midline shift),
the stroke section (the four stroke answers, ASPECTS per side and per region with
the affected regions highlighted, net water uptake as an estimate with its source,
the hyperdense artery, ICH-score components, cautions, template registration),
the findings table, the key images, the QC flags, the provenance and the
"triage aid, not a diagnostic device" statement, in the language of the
message catalogue (``pipelines/writers/locales/<lang>.json``). The HTML inlines its
CSS and the key images (base64 PNG), so it opens anywhere without network.
The PDF embeds DejaVu Sans (Cyrillic); it is skipped with a warning when
reportlab or the font is missing.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from PIL import Image

from ictus.pipelines.findings.priority import Priority
from ictus.pipelines.findings.record import Findings
from ictus.pipelines.writers import common
from ictus.pipelines.writers.keyimages import KeyImage

if TYPE_CHECKING:
    from ictus.pipelines.triage import TriageResult

log = logging.getLogger(__name__)

PRIORITY_COLOURS: Mapping[Priority, str] = {
    Priority.CRITICAL: "#b00020",
    Priority.URGENT: "#d35400",
    Priority.ROUTINE: "#2e7d32",
    Priority.INDETERMINATE: "#555555",
}
SUBTYPES = ("IPH", "EAH", "IVH")

_CSS = """
body{font-family:"DejaVu Sans",Arial,sans-serif;margin:24px;color:#111;max-width:1100px}
h1{font-size:22px;margin:0 0 4px 0}h2{font-size:17px;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:22px}
.disclaimer{border:2px solid #b00020;background:#fff3f3;padding:8px 12px;margin:10px 0;font-weight:bold}
.badge{display:inline-block;color:#fff;padding:3px 10px;border-radius:4px;font-weight:bold}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #bbb;padding:4px 10px;text-align:left}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:520px}figure img{width:100%;border:1px solid #444}
figcaption{font-size:13px;color:#333}tr.affected td{background:#fff1b8;font-weight:bold}.small{font-size:12px;color:#444}code{font-size:12px;word-break:break-all}
"""


@dataclass(frozen=True)
class ReportRow:
    """One row of the findings table."""

    label: str
    present: str
    value: str


def _priority_label(messages: Mapping[str, str], priority: str) -> str:
    return messages.get(f"priority_{priority}", priority)


def _qc_label(messages: Mapping[str, str], flag: str) -> str:
    key = "qcflag_" + str(flag).split(":", 1)[0].strip()
    return messages.get(key, str(flag))


def _direction_label(messages: Mapping[str, str], direction: Any) -> str:
    if direction is None:
        return ""
    return messages.get(f"direction_{direction}", str(direction))


def summary_lines(findings: Findings, messages: Mapping[str, str]) -> list[tuple[str, str]]:
    """(label, value) pairs of the summary block."""
    ich = findings.ich
    present = ich.present
    ich_text = messages["ich_present"] if present else messages["ich_absent"] if present is not None else messages["ich_unknown"]
    shift = findings.midline_shift_mm
    if shift is None:
        shift_text = messages["not_measured"]
    else:
        shift_text = f"{abs(float(shift)):.1f} {messages['unit_mm']}"
        direction = _direction_label(messages, findings.midline_shift_direction)
        if direction:
            shift_text += f", {direction}"
    return [
        (messages["priority"], _priority_label(messages, str(findings.priority))),
        (messages["findings"], ich_text),
        (messages["total_blood_volume"], f"{common.fmt_number(ich.total_volume_ml)} {messages['unit_ml']}"),
        (messages["midline_shift"], shift_text),
    ]


def findings_rows(findings: Findings, messages: Mapping[str, str]) -> list[ReportRow]:
    """The findings table: one row per subtype, oedema, total blood, probability, midline."""
    ich = findings.ich
    rows: list[ReportRow] = []
    for name in tuple(ich.subtypes) or SUBTYPES:  # the card's blood classes (via the findings)
        sub = ich.subtypes.get(name)
        present = sub.present if sub is not None else None
        rows.append(ReportRow(
            messages.get(f"class_{name}", name),
            "" if present is None else messages["yes"] if present else messages["no"],
            common.fmt_number(sub.volume_ml if sub is not None else None),
        ))
    rows.append(ReportRow(messages["class_oedema"], "", common.fmt_number(findings.oedema.volume_ml)))
    rows.append(ReportRow(
        messages["total_blood_volume"],
        "" if ich.present is None else messages["yes"] if ich.present else messages["no"],
        common.fmt_number(ich.total_volume_ml),
    ))
    return rows


def measure_rows(findings: Findings, m: Mapping[str, str]) -> list[tuple[str, str]]:
    """(label, value) rows under the table: probability, agreement, ABC/2, midline shift and direction."""
    ich = findings.ich
    rows: list[tuple[str, str]] = []
    if ich.probability is not None:
        rows.append((m["probability"], f"{float(ich.probability):.2f}"))
    if ich.confidence is not None:
        rows.append((m["model_agreement"], f"{float(ich.confidence):.2f}"))
    if ich.abc2 is not None and ich.abc2.volume_ml is not None:
        rows.append((m["abc2"], f"{float(ich.abc2.volume_ml):.1f} {m['unit_ml']}"))
    shift = findings.midline_shift_mm
    rows.append((m["midline_shift"], m["not_measured"] if shift is None else f"{abs(float(shift)):.1f} {m['unit_mm']}"))
    if shift is not None:
        rows.append((m["direction"], _direction_label(m, findings.midline_shift_direction) or m["not_measured"]))
    return rows


def lesion_rows(findings: Findings, m: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """(class, volume mL, hemisphere, region) of every reported lesion, largest first."""
    classes = {**findings.ich.subtypes, "oedema": findings.oedema}
    rows = []
    for name, sub in classes.items():
        for lesion in sub.lesions:
            hemisphere = str(lesion.hemisphere)
            rows.append((float(lesion.volume_ml or 0.0), (
                m.get(f"class_{name}", name),
                common.fmt_number(lesion.volume_ml),
                m.get(f"hemisphere_{hemisphere}", hemisphere),
                str(lesion.region or ""),
            )))
    return [row for _, row in sorted(rows, key=lambda item: -item[0])]


def qc_rows(findings: Findings, m: Mapping[str, str]) -> list[tuple[str, str]]:
    """(translated label, flag name and detail) of every QC flag."""
    details = {d.name: d for d in findings.qc.details}
    rows = []
    for flag in findings.qc.flags:
        d = details.get(flag)
        extra = "; ".join(str(v) for v in ((d.severity, d.detail) if d is not None else ()) if v)
        rows.append((_qc_label(m, flag), f"{flag} ({extra})" if extra else str(flag)))
    return rows


# -- stroke section ------------------------------------------------------------------------------

ASPECTS_CODES = ("C", "LN", "InCa", "IC", "M1", "M2", "M3", "M4", "M5", "M6")
_KNOWN_CAUTIONS = {"haemorrhage present": "caution_haemorrhage", "hypodensity over one third": "caution_large_mca"}


def _side(m: Mapping[str, str], side: Any) -> str:
    return m.get(f"hemisphere_{side}", str(side or ""))


def _yes_no(m: Mapping[str, str], value: Any) -> str:
    return "\u2014" if value is None else m["yes"] if value else m["no"]


def _early_and_age(findings: Findings, m: Mapping[str, str]) -> tuple[str, str]:
    """The localised answers on early ischaemic change and tissue age."""
    summary, isch = findings.stroke_summary, findings.ischaemia
    if isch is None:
        return ((summary.early_ischaemic_change if summary else "") or m["not_assessed"],
                (summary.tissue_age if summary else "") or m["not_assessed"])
    if not isch.assessed:
        return m["not_assessed_reason"].format(reason=isch.reason or ""), m["not_assessed"]
    scores = isch.aspects or {}
    regions = "; ".join(f"{_side(m, side)}: {', '.join(codes)}"
                        for side, codes in isch.affected_regions.items() if codes)
    if isch.early_change:
        early = m["stroke_early_yes"].format(left=scores.get("left"), right=scores.get("right"), regions=regions)
        if isch.score_reliable is False:
            early += f"; {m['stroke_unreliable']}"
    else:
        early = m["stroke_early_no"].format(left=scores.get("left"), right=scores.get("right"))
    if isch.chronic_lesions:
        early += "; " + m["stroke_old_infarcts"].format(n=len(isch.chronic_lesions))
    if isch.nwu_percent is None:
        return early, m["stroke_age_none"]
    onset = m["onset_within"] if isch.onset_within_4_5h_likely else m["onset_older"]
    return early, m["stroke_age_nwu"].format(nwu=common.fmt_number(isch.nwu_percent), onset=onset,
                                             cutoff=isch.nwu_cutoff_percent)


def stroke_answers(findings: Findings, m: Mapping[str, str]) -> list[tuple[str, str]]:
    """The four stroke questions with localised answers, built from the structured blocks
    (the same logic as ``findings.stroke_summary``, whose English text is the fallback)."""
    summary, ich, dense = findings.stroke_summary, findings.ich, findings.dense_artery
    if ich.present is None:
        blood = m["not_assessed"]
    elif ich.present:
        blood = m["stroke_blood_yes"].format(volume=common.fmt_number(ich.total_volume_ml))
    else:
        blood = m["stroke_blood_no"]
    early, age = _early_and_age(findings, m)
    if dense is None:
        artery = (summary.dense_artery if summary else "") or m["not_assessed"]
    elif not dense.assessed:
        artery = m["not_assessed_reason"].format(reason=dense.reason or "")
    elif dense.present:
        artery = m["stroke_artery_yes"].format(side=_side(m, dense.side), segment=dense.segment or "")
    else:
        artery = m["stroke_artery_no"]
    return [(m["stroke_q_blood"], blood), (m["stroke_q_early"], early), (m["stroke_q_artery"], artery),
            (m["stroke_q_age"], age)]


def caution_lines(findings: Findings, m: Mapping[str, str]) -> list[str]:
    """The thrombolysis cautions, translated where known (verbatim otherwise)."""
    out = []
    for caution in findings.stroke_summary.cautions if findings.stroke_summary else ():
        key = next((k for prefix, k in _KNOWN_CAUTIONS.items() if str(caution).startswith(prefix)), None)
        out.append(m[key] if key else str(caution))
    return out


def aspects_score_rows(findings: Findings, m: Mapping[str, str]) -> list[tuple[str, str]]:
    """ASPECTS per side, affected side, NWU and onset estimate (or "not assessed" with the reason)."""
    isch = findings.ischaemia
    if isch is None or not isch.assessed:
        reason = isch.reason if isch is not None else ""
        return [(m["stroke_section"], m["stroke_not_assessed"].format(reason=reason or m["not_assessed"]))]
    scores = isch.aspects or {}
    rows = [(m["aspects_left"], f"{scores.get('left')} / 10"), (m["aspects_right"], f"{scores.get('right')} / 10"),
            (m["affected_side"], _side(m, isch.affected_side) if isch.affected_side else "\u2014")]
    if isch.nwu_percent is not None:
        onset = m["onset_within"] if isch.onset_within_4_5h_likely else m["onset_older"]
        rows.append((m["nwu_title"], f"{common.fmt_number(isch.nwu_percent)} %"))
        rows.append((m["onset_estimate"], f"{onset} ({isch.nwu_cutoff_percent} %)"))
        rows.append((m["nwu_source"], str(isch.nwu_source or "\u2014")))
    if isch.score_reliable is False and isch.reliability_note:
        rows.append((m["stroke_unreliable"], m["score_unreliable_note"].format(note=isch.reliability_note)))
    if isch.chronic_lesions:
        rows.append((m["chronic_lesions"], "; ".join(
            f"{_side(m, c.side)} {common.fmt_number(c.volume_ml)} {m['unit_ml']}" for c in isch.chronic_lesions)))
    return rows


def aspects_region_rows(findings: Findings, m: Mapping[str, str]) -> list[tuple[bool, list[str]]]:
    """(affected, cells) per ASPECTS region: code and name, side, mean/mirror/difference HU, ratio, NWU, affected."""
    isch = findings.ischaemia
    rows = list(isch.regions) if isch is not None and isch.assessed else []
    order = {code: n for n, code in enumerate(ASPECTS_CODES)}
    rows.sort(key=lambda r: (0 if r.side == "left" else 1, order.get(r.code, 99)))
    return [(bool(r.affected), [
        f"{r.code} \u2013 {m.get('region_' + str(r.code), str(r.name or ''))}",
        _side(m, r.side), common.fmt_number(r.mean_hu), common.fmt_number(r.mirror_mean_hu),
        common.fmt_number(r.difference_hu), common.fmt_number(r.ratio, 3),
        common.fmt_number(r.nwu_percent), _yes_no(m, r.affected),
    ]) for r in rows]


ASPECTS_HEADER_KEYS = ("col_region", "col_side", "col_mean_hu", "col_mirror_hu", "col_difference_hu", "col_ratio",
                       "col_nwu", "col_affected")
VESSEL_HEADER_KEYS = ("col_segment", "col_side", "col_peak_hu", "col_mean_hu", "col_contra_hu", "col_ratio",
                      "col_length_mm", "col_dense")


def vessel_rows(findings: Findings, m: Mapping[str, str]) -> list[tuple[bool, list[str]]]:
    """(dense, cells) per searched arterial segment."""
    dense = findings.dense_artery
    if dense is None or not dense.assessed:
        return []
    return [(bool(v.dense), [
        str(v.name), _side(m, v.side), common.fmt_number(v.peak_hu),
        common.fmt_number(v.mean_hu), common.fmt_number(v.contralateral_mean_hu),
        common.fmt_number(v.ratio, 2), common.fmt_number(v.length_mm), _yes_no(m, v.dense),
    ]) for v in dense.segments]


def ich_score_rows(findings: Findings, m: Mapping[str, str]) -> list[tuple[str, str]]:
    """The ICH-score components and points, with the note and the source."""
    score = findings.ich_score
    if score is None:
        return []
    rows = [(m[key], _yes_no(m, value)) for key, value in (
        ("ich_volume_ge_30", score.volume_ge_30_ml), ("ich_ivh", score.ivh_present),
        ("ich_infratentorial", score.infratentorial_origin), ("ich_age_ge_80", score.age_ge_80))]
    points = score.imaging_points
    rows.append((m["ich_points"], str(points) if points is not None else m["not_assessed"]))
    note = m["ich_note"] if points is not None else (
        m["ich_not_applicable"] if score.volume_ge_30_ml is False else m["not_assessed"])
    rows.append(("", note))
    if score.source:
        rows.append((m["nwu_source"], str(score.source)))
    return rows


def registration_rows(findings: Findings, m: Mapping[str, str]) -> list[tuple[str, str]]:
    """Template registration: status, Dice against its minimum, method."""
    anatomy = findings.anatomy
    if anatomy is None:
        return [(m["registration_status"], m["registration_not_run"])]
    statuses: dict[bool | None, str] = {True: m["registered_yes"], False: m["registered_no"]}
    status = statuses.get(anatomy.registered, m["registration_not_run"])
    rows = [(m["registration_status"], status)]
    if anatomy.quality_dice is not None:
        rows.append((m["registration_quality"], f"{common.fmt_number(anatomy.quality_dice, 2)} "
                     f"({m['registration_minimum'].format(min=common.fmt_number(anatomy.min_quality_dice, 2))})"))
    rows.append((m["registration_method"], str(anatomy.method or "\u2014")))
    return rows


def _stroke_html(f: Findings, m: Mapping[str, str]) -> list[str]:
    e = html.escape
    parts = [f"<h2>{e(m['stroke_section'])}</h2><table>",
             f"<tr><th>{e(m['col_question'])}</th><th>{e(m['col_answer'])}</th></tr>"]
    parts += [f"<tr><td>{e(q)}</td><td>{e(a)}</td></tr>" for q, a in stroke_answers(f, m)]
    parts.append("</table><table>")
    parts += [f"<tr><th>{e(a)}</th><td>{e(b)}</td></tr>" for a, b in aspects_score_rows(f, m)]
    parts.append("</table>")
    regions = aspects_region_rows(f, m)
    if regions:
        parts.append(f"<h3>{e(m['aspects_table'])}</h3><table><tr>"
                     + "".join(f"<th>{e(m[k])}</th>" for k in ASPECTS_HEADER_KEYS) + "</tr>")
        for affected, cells in regions:
            cls = ' class="affected"' if affected else ""
            parts.append(f"<tr{cls}>" + "".join(
                f'<td{" class=num" if 2 <= i <= 6 else ""}>{e(c)}</td>' for i, c in enumerate(cells)) + "</tr>")
        parts.append("</table>")
        parts.append(f'<p class="small">{e(m["nwu_note"])}</p>')
    parts.append(f"<h3>{e(m['dense_artery_title'])}</h3>")
    parts.append(f"<p>{e(stroke_answers(f, m)[2][1])}</p>")
    vessels = vessel_rows(f, m)
    if vessels:
        parts.append("<table><tr>" + "".join(f"<th>{e(m[k])}</th>" for k in VESSEL_HEADER_KEYS) + "</tr>")
        for dense, cells in vessels:
            cls = ' class="affected"' if dense else ""
            parts.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    ich_rows = ich_score_rows(f, m)
    if ich_rows:
        parts.append(f"<h3>{e(m['ich_score_title'])}</h3><table>")
        parts += [f"<tr><th>{e(a)}</th><td>{e(b)}</td></tr>" for a, b in ich_rows]
        parts.append("</table>")
    parts.append(f"<h3>{e(m['cautions_title'])}</h3>")
    cautions = caution_lines(f, m)
    parts.append("<ul>" + "".join(f"<li><b>{e(c)}</b></li>" for c in cautions) + "</ul>" if cautions
                 else f"<p>{e(m['no_cautions'])}</p>")
    parts.append(f"<h3>{e(m['registration_title'])}</h3><table>")
    parts += [f"<tr><th>{e(a)}</th><td>{e(b)}</td></tr>" for a, b in registration_rows(f, m)]
    parts.append("</table>")
    return parts


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG encoding of an RGB uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def jpeg_bytes(rgb: np.ndarray, quality: int = 92) -> bytes:
    """JPEG encoding of an RGB image (for the PDF, which embeds JPEG without re-encoding)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _timestamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def render_html(result: TriageResult, images: Sequence[KeyImage], lang: str = "en",
                pngs: Sequence[bytes] | None = None) -> str:
    """The self-contained HTML report of ``result`` in ``lang``."""
    m = common.load_messages(lang)
    f = result.findings
    e = html.escape
    parts: list[str] = [
        "<!DOCTYPE html>",
        f'<html lang="{e(m["html_lang"])}"><head><meta charset="utf-8">',
        f"<title>{e(m['report_title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(m['report_title'])}</h1>",
        f'<div class="small">{e(m["generated"])}: {e(_timestamp())}</div>',
        f'<div class="disclaimer">{e(m["disclaimer"])}</div>',
        f"<h2>{e(m['summary'])}</h2><table>",
    ]
    for label, value in summary_lines(f, m):
        if label == m["priority"]:
            colour = PRIORITY_COLOURS.get(f.priority, "#555")
            value_html = f'<span class="badge" style="background:{colour}">{e(value)}</span>'
        else:
            value_html = e(value)
        parts.append(f"<tr><th>{e(label)}</th><td>{value_html}</td></tr>")
    parts.append("</table>")

    parts.append(f"<h2>{e(m['findings'])}</h2><table>")
    parts.append(f"<tr><th>{e(m['col_finding'])}</th><th>{e(m['col_present'])}</th><th>{e(m['col_volume_ml'])}</th></tr>")
    for row in findings_rows(f, m):
        parts.append(f'<tr><td>{e(row.label)}</td><td>{e(row.present)}</td><td class="num">{e(row.value)}</td></tr>')
    parts.append("</table><table>")
    for label, value in measure_rows(f, m):
        parts.append(f'<tr><th>{e(label)}</th><td class="num">{e(value)}</td></tr>')
    parts.append("</table>")
    if not f.findings_reported:
        parts.append(f"<p><b>{e(m['not_reported'])}</b></p>")
    lesions = lesion_rows(f, m)
    if lesions:
        parts.append(f"<h2>{e(m['lesions'])}</h2><table>")
        parts.append("".join(f"<th>{e(m[k])}</th>" for k in ("col_finding", "col_volume_ml", "col_hemisphere", "col_region")))
        for cls, vol, hemi, region in lesions:
            parts.append(f'<tr><td>{e(cls)}</td><td class="num">{e(vol)}</td><td>{e(hemi)}</td><td>{e(region)}</td></tr>')
        parts.append("</table>")

    parts += _stroke_html(f, m)

    parts.append(f"<h2>{e(m['key_images'])}</h2>")
    if images:
        parts.append('<div class="figs">')
        encoded = pngs if pngs is not None else [png_bytes(k.rgb) for k in images]
        for key, data in zip(images, encoded):
            b64 = base64.b64encode(data).decode("ascii")
            parts.append(
                f'<figure><img alt="{e(key.caption)}" src="data:image/png;base64,{b64}">'
                f"<figcaption>{e(key.caption)}</figcaption></figure>"
            )
        parts.append("</div>")
    else:
        parts.append(f"<p>{e(m['no_key_images'])}</p>")

    parts.append(f"<h2>{e(m['qc'])}</h2>")
    flags = qc_rows(f, m)
    if flags:
        parts.append("<ul>" + "".join(f"<li>{e(label)} <code>{e(code)}</code></li>" for label, code in flags) + "</ul>")
    else:
        parts.append(f"<p>{e(m['qc_none'])}</p>")
    reasons = [str(r) for r in f.priority_reasons]
    if reasons:
        parts.append(f'<p class="small">{e(m["priority_reasons"])}: <code>{e("; ".join(reasons))}</code></p>')

    parts.append(f"<h2>{e(m['provenance'])}</h2><table>")
    for label, value in provenance_rows(result, m):
        parts.append(f"<tr><th>{e(label)}</th><td><code>{e(value)}</code></td></tr>")
    parts.append("</table>")
    timings = f.timings_s
    if timings:
        parts.append(f"<h2>{e(m['timings'])}</h2><table>")
        for stage, seconds in timings.items():
            parts.append(f'<tr><td>{e(str(stage))}</td><td class="num">{common.fmt_number(seconds, 2)} {e(m["seconds"])}</td></tr>')
        parts.append("</table>")
    parts.append(f'<div class="disclaimer">{e(m["disclaimer"])}</div></body></html>')
    return "\n".join(parts)


def provenance_rows(result: TriageResult, m: Mapping[str, str]) -> list[tuple[str, str]]:
    """(label, value) pairs: UIDs, Ictus version, models with versions and sha256."""
    f = result.findings
    rows = [
        (m["study_uid"], str(f.study_instance_uid or result.volume.study_instance_uid)),
        (m["series_uid"], str(f.series_instance_uid or result.volume.series_instance_uid)),
        (m["ictus_version"], str(f.provenance.ictus_version or common.ictus_version())),
    ]
    for model in f.models:
        rows.append((m["model"], f"{model.id} {model.version}".strip()))
        if model.sha256:
            rows.append((m["sha256"], model.sha256))
        elif model.members:
            rows.append((m["sha256"], "; ".join(f"{mm.name}: {mm.sha256}" for mm in model.members)))
    if not f.models and result.card is not None:
        rows.append((m["model"], f"{result.card.id} {result.card.version}"))
    return rows


def _stroke_pdf(f: Findings, m: Mapping[str, str], para: Any, h2: Any, grid: Any, mm: float, colors: Any,
                Table: Any, TableStyle: Any) -> list[Any]:
    """The stroke section as reportlab flowables (affected rows highlighted)."""
    story: list[Any] = [para(m["stroke_section"], h2)]
    story.append(Table([[para(m["col_question"]), para(m["col_answer"])]]
                       + [[para(q), para(a)] for q, a in stroke_answers(f, m)],
                       colWidths=[70 * mm, 100 * mm], style=grid))
    story.append(Table([[para(a), para(b)] for a, b in aspects_score_rows(f, m)], colWidths=[70 * mm, 100 * mm],
                       style=grid))
    highlight = colors.HexColor("#fff1b8")
    regions = aspects_region_rows(f, m)
    if regions:
        story.append(para(m["aspects_table"], h2))
        data = [[para(m[k]) for k in ASPECTS_HEADER_KEYS]] + [[para(c) for c in cells] for _, cells in regions]
        style = TableStyle(list(grid.getCommands()) + [
            ("BACKGROUND", (0, n), (-1, n), highlight) for n, (affected, _) in enumerate(regions, start=1) if affected])
        story.append(Table(data, colWidths=[44 * mm, 16 * mm, 17 * mm, 19 * mm, 19 * mm, 17 * mm, 16 * mm, 20 * mm],
                           style=style, repeatRows=1))
        story.append(para(m["nwu_note"]))
    story.append(para(m["dense_artery_title"], h2))
    story.append(para(stroke_answers(f, m)[2][1]))
    vessels = vessel_rows(f, m)
    if vessels:
        data = [[para(m[k]) for k in VESSEL_HEADER_KEYS]] + [[para(c) for c in cells] for _, cells in vessels]
        style = TableStyle(list(grid.getCommands()) + [
            ("BACKGROUND", (0, n), (-1, n), highlight) for n, (dense, _) in enumerate(vessels, start=1) if dense])
        story.append(Table(data, colWidths=[22 * mm, 18 * mm, 20 * mm, 20 * mm, 26 * mm, 18 * mm, 22 * mm, 24 * mm],
                           style=style))
    ich_rows = ich_score_rows(f, m)
    if ich_rows:
        story.append(para(m["ich_score_title"], h2))
        story.append(Table([[para(a), para(b)] for a, b in ich_rows], colWidths=[70 * mm, 100 * mm], style=grid))
    story.append(para(m["cautions_title"], h2))
    cautions = caution_lines(f, m)
    for caution in cautions:
        story.append(para(f"\u2022 {caution}"))
    if not cautions:
        story.append(para(m["no_cautions"]))
    story.append(para(m["registration_title"], h2))
    story.append(Table([[para(a), para(b)] for a, b in registration_rows(f, m)], colWidths=[70 * mm, 100 * mm],
                       style=grid))
    return story


def render_pdf(result: TriageResult, images: Sequence[KeyImage], path: str | os.PathLike, lang: str = "en") -> bool:
    """Write ``report.pdf`` (reportlab, DejaVu Sans). Returns False when it cannot be made here."""
    try:
        from reportlab.lib import colors
        from reportlab.lib.pagesizes import A4
        from reportlab.lib.styles import ParagraphStyle
        from reportlab.lib.units import mm
        from reportlab.pdfbase import pdfmetrics
        from reportlab.pdfbase.ttfonts import TTFont
        from reportlab.platypus import Image as RLImage
        from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
    except ImportError:
        log.warning("reportlab is not installed; report.pdf skipped (pip install reportlab)")
        return False
    regular, bold = common.font_path(), common.bold_font_path()
    if regular is None:
        log.warning("no DejaVu Sans font; report.pdf skipped (install fonts-dejavu-core)")
        return False
    if "IctusSans" not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont("IctusSans", regular))
        pdfmetrics.registerFont(TTFont("IctusSans-Bold", bold or regular))
    from reportlab import rl_config

    rl_config.useA85 = 0  # binary streams: reportlab's pure-Python ASCII85 of the images is slow
    m = common.load_messages(lang)
    f = result.findings
    e = html.escape
    base = ParagraphStyle("base", fontName="IctusSans", fontSize=9.5, leading=12.5)
    h1 = ParagraphStyle("h1", parent=base, fontName="IctusSans-Bold", fontSize=16, leading=20, spaceAfter=4)
    h2 = ParagraphStyle("h2", parent=base, fontName="IctusSans-Bold", fontSize=12, leading=15, spaceBefore=8, spaceAfter=4,
                        keepWithNext=1)
    warn = ParagraphStyle("warn", parent=base, fontName="IctusSans-Bold", textColor=colors.HexColor("#b00020"),
                          borderColor=colors.HexColor("#b00020"), borderWidth=1, borderPadding=5, spaceBefore=4,
                          spaceAfter=8)
    grid = TableStyle([
        ("FONTNAME", (0, 0), (-1, -1), "IctusSans"),
        ("FONTSIZE", (0, 0), (-1, -1), 9),
        ("GRID", (0, 0), (-1, -1), 0.5, colors.grey),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ])

    def para(text: str, style: Any = base) -> Any:
        return Paragraph(e(text), style)

    story: list[Any] = [para(m["report_title"], h1), para(f"{m['generated']}: {_timestamp()}"),
                        para(m["disclaimer"], warn), para(m["summary"], h2)]
    story.append(Table([[para(a), para(b)] for a, b in summary_lines(f, m)], colWidths=[70 * mm, 100 * mm], style=grid))
    story.append(para(m["findings"], h2))
    table = [[para(m["col_finding"]), para(m["col_present"]), para(m["col_volume_ml"])]]
    table += [[para(r.label), para(r.present), para(r.value)] for r in findings_rows(f, m)]
    for label, value in measure_rows(f, m):
        table.append([para(label), para(""), para(value)])
    story.append(Table(table, colWidths=[100 * mm, 30 * mm, 40 * mm], style=grid))
    if not f.findings_reported:
        story.append(para(m["not_reported"], warn))
    lesions = lesion_rows(f, m)
    if lesions:
        story.append(para(m["lesions"], h2))
        header = [para(m[k]) for k in ("col_finding", "col_volume_ml", "col_hemisphere", "col_region")]
        story.append(Table([header] + [[para(c) for c in row] for row in lesions],
                           colWidths=[60 * mm, 25 * mm, 35 * mm, 50 * mm], style=grid))
    story += _stroke_pdf(f, m, para, h2, grid, mm, colors, Table, TableStyle)
    story.append(para(m["key_images"], h2))
    encoded = [jpeg_bytes(k.rgb) for k in images]
    if images:
        cells = []
        for key, data in zip(images, encoded):
            h, w = key.rgb.shape[:2]
            width = 80 * mm
            cells.append([RLImage(io.BytesIO(data), width=width, height=width * h / w), para(key.caption)])
        rows: list[list[Any]] = [cells[i:i + 2] for i in range(0, len(cells), 2)]
        if len(rows[-1]) == 1:
            rows[-1].append("")
        story.append(Table(rows, colWidths=[85 * mm, 85 * mm],
                           style=TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")])))
    else:
        story.append(para(m["no_key_images"]))
    story.append(para(m["qc"], h2))
    flags = qc_rows(f, m)
    for label, code in flags:
        story.append(para(f"\u2022 {label} ({code})"))
    if not flags:
        story.append(para(m["qc_none"]))
    story.append(para(m["provenance"], h2))
    story.append(Table([[para(a), para(b)] for a, b in provenance_rows(result, m)],
                       colWidths=[45 * mm, 125 * mm], style=grid))
    story.append(Spacer(1, 4 * mm))
    story.append(para(m["disclaimer"], warn))
    doc = SimpleDocTemplate(str(path), pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=15 * mm,
                            bottomMargin=15 * mm, title=m["report_title"], author="Ictus")
    doc.build(story)
    return True
