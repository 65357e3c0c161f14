"""Key images: a few axial slices with coloured lesion overlays, the midline and a burned-in legend.

:func:`render_key_images` is pure (arrays in, RGB arrays out): it picks the
slices through the largest bleed (or lesion) and the midline measurement,
windows them (brain window), blends one colour per class with its outline,
draws the ideal midline (dashed) and, on the midline image, the shifted
midline and an arrow with the shift, and burns in a banner ("triage output,
not for diagnosis") and a legend from the message catalogue.
:func:`build_sc_datasets` wraps them as DICOM Secondary Capture (highdicom)
in the source study, marked as derived triage output. Images are shown in
radiological convention (patient left on the image right, anterior up).

When the template anatomy is registered, two more images show the ASPECTS
levels (:func:`render_aspects_images`): the axial slice of the analysis grid
with the most voxels of the ganglionic, then of the supraganglionic regions,
in a stroke window, every region outlined and labelled with its code, the
affected ones filled, the score burned in ("ASPECTS L 7 / R 10") and the
hyperdense artery marked (projected from its own level when it is not on the
slice). Their ``slice_index`` counts slices of the anatomy's analysis grid.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from scipy import ndimage

from ictus.imaging.errors import OutputError
from ictus.pipelines.writers import common
from ictus.pipelines.writers import stroke as stroke_out

log = logging.getLogger(__name__)

SERIES_NUMBER = 9903
SERIES_DESCRIPTION = "ICTUS key images"
WINDOW_HU = (0.0, 80.0)  # brain window (level 40, width 80)
MIN_WIDTH_PX = 512
BLOOD_CLASSES = ("IPH", "EAH", "IVH")  # default of choose_slices; rendering passes the card's "blood" classes
_ALPHA = 0.4
_BANNER_RGB = (170, 0, 0)
_IDEAL_RGB = (0, 230, 255)
_SHIFT_RGB = (255, 255, 0)
STROKE_WINDOW_HU = (15.0, 55.0)  # stroke window (level 35, width 40): early ischaemic change shows best
_REGION_RGB = (0, 200, 255)
_ASPECTS_ALPHA = 0.45
#: ASPECTS region codes of each level (ictus.imaging.stroke_atlas GANGLIONIC_CODES / SUPRAGANGLIONIC_CODES).
ASPECTS_LEVELS = (("ganglionic", ("C", "LN", "InCa", "IC", "M1", "M2", "M3")),
                  ("supraganglionic", ("M4", "M5", "M6")))


@dataclass(frozen=True)
class KeyImage:
    """One rendered key image: RGB uint8 [rows, cols, 3] and what it shows."""

    rgb: np.ndarray
    kind: str  # "lesion", "midline" or "slice"
    slice_index: int  # 0-based, on the analysed volume in LPS order (inferior to superior)
    n_slices: int
    caption: str


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = common.font_path()
    if path is None:
        return ImageFont.load_default()
    return ImageFont.truetype(path, size)


def _bold_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = common.bold_font_path()
    if path is None:
        return ImageFont.load_default()
    return ImageFont.truetype(path, size)


def _to_lps(image: sitk.Image) -> sitk.Image:
    return sitk.DICOMOrient(image, "LPS")


def _largest_component_slices(mask: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """The largest 3-D connected component of ``mask`` and its area per slice."""
    areas = np.zeros(mask.shape[0], dtype=np.int64)
    if not mask.any():
        return None, areas
    box = tuple(slice(int(idx[0]), int(idx[-1]) + 1) for idx in
                (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))))
    lab, _ = ndimage.label(mask[box])  # only inside the lesions' bounding box: fast on big grids
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    comp = np.zeros(mask.shape, dtype=bool)
    comp[box] = lab == int(np.argmax(sizes))
    return comp, comp.sum(axis=(1, 2))


def choose_slices(labels_lps: np.ndarray, class_values: dict[str, int], midline_k: int | None,
                  *, max_lesion_slices: int = 3,
                  blood_classes: Sequence[str] = BLOOD_CLASSES) -> list[tuple[str, int]]:
    """Key slices: through the largest bleed (or lesion) and at the midline measurement.

    Returns (kind, k) pairs in superior order; the midline slice is dropped
    when it coincides with a lesion slice (that image then shows the midline too).
    """
    blood = np.isin(labels_lps, [v for n, v in class_values.items() if n in blood_classes])
    if not blood.any():
        blood = labels_lps > 0
    chosen: list[tuple[str, int]] = []
    comp, areas = _largest_component_slices(blood)
    if comp is not None:
        ks = np.flatnonzero(areas)
        k_max = int(np.argmax(areas))
        picks = [k_max]
        if max_lesion_slices > 1 and ks.size >= 3:
            lo, hi = int(ks[0]), int(ks[-1])
            picks += [int(round((lo + k_max) / 2)), int(round((k_max + hi) / 2))]
        for k in dict.fromkeys(picks[:max_lesion_slices]):
            chosen.append(("lesion", k))
    if midline_k is not None and all(k != midline_k for _, k in chosen):
        chosen.append(("midline", midline_k))
    if not chosen:
        chosen.append(("slice", labels_lps.shape[0] // 2))
    return sorted(chosen, key=lambda item: item[1])


def _plane_columns(image_lps: sitk.Image, plane: Any, k: int, rows: np.ndarray, offset_mm: float) -> np.ndarray:
    """Column index (continuous) where the plane (shifted by ``offset_mm`` to patient left) crosses each row."""
    direction = np.array(image_lps.GetDirection()).reshape(3, 3)
    spacing = np.array(image_lps.GetSpacing())
    origin = np.array(image_lps.GetOrigin())

    def lps(i: np.ndarray) -> np.ndarray:
        ijk = np.column_stack([i, rows, np.full(rows.size, k)]).astype(float)
        return origin + (ijk * spacing) @ direction.T

    d0 = plane.signed_distance_mm(lps(np.zeros(rows.size)))
    d1 = plane.signed_distance_mm(lps(np.ones(rows.size)))
    slope = d1 - d0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(slope) > 1e-9, (offset_mm - d0) / slope, np.nan)


def _midline_slice(image_lps: sitk.Image, midline: Any) -> int | None:
    """The slice where the midline was measured (from the result's details, else the plane's centre)."""
    if midline is None or getattr(midline, "ideal_plane", None) is None:
        return None
    details = getattr(midline, "details", None) or {}
    n = image_lps.GetSize()[2]
    if details.get("slice_index_lps") is not None:
        return int(np.clip(int(details["slice_index_lps"]), 0, n - 1))
    z_mm = float(details.get("septum_z_mm", midline.ideal_plane.zc_mm))
    cx, cy = (image_lps.GetSize()[0] - 1) / 2.0, (image_lps.GetSize()[1] - 1) / 2.0
    zs = [image_lps.TransformContinuousIndexToPhysicalPoint((cx, cy, float(k)))[2] for k in range(n)]
    return int(np.argmin(np.abs(np.asarray(zs) - z_mm)))


def _head_box(hu: np.ndarray, spacing_xy_mm: tuple[float, float], *, margin_mm: float = 10.0,
              threshold_hu: float = -300.0) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of everything denser than air on any slice, plus a margin (whole grid if none)."""
    ny, nx = hu.shape[1:]
    dense = np.asarray(hu) > threshold_hu
    ys = np.flatnonzero(dense.any(axis=(0, 2)))
    xs = np.flatnonzero(dense.any(axis=(0, 1)))
    if ys.size == 0 or xs.size == 0:
        return 0, ny, 0, nx
    my, mx = int(np.ceil(margin_mm / spacing_xy_mm[1])), int(np.ceil(margin_mm / spacing_xy_mm[0]))
    return max(0, ys[0] - my), min(ny, ys[-1] + 1 + my), max(0, xs[0] - mx), min(nx, xs[-1] + 1 + mx)


def _signed_shift_mm(result: Any) -> float | None:
    midline = getattr(result, "midline", None)
    if midline is not None and getattr(midline, "shift_mm", None) is not None:
        return float(midline.shift_mm)
    value = result.findings.midline_shift_mm
    if value is None:
        return None
    sign = -1.0 if result.findings.midline_shift_direction == "right" else 1.0
    return sign * abs(float(value))


def _dashed_line(draw: ImageDraw.ImageDraw, pts: list[tuple[float, float]], fill: tuple[int, int, int],
                 width: int, dash: int = 6) -> None:
    for n, (a, b) in enumerate(zip(pts[:-1], pts[1:])):
        if (n // dash) % 2 == 0:
            draw.line([a, b], fill=fill, width=width)


def _arrow(draw: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float],
           fill: tuple[int, int, int], width: int) -> None:
    draw.line([start, end], fill=fill, width=width)
    v = np.subtract(end, start).astype(float)
    length = float(np.hypot(*v))
    if length < 1e-6:
        return
    v /= length
    head = min(10.0, max(4.0, length * 0.5))
    normal = np.array([-v[1], v[0]])
    tip = np.asarray(end, dtype=float)
    left = tip - head * v + 0.5 * head * normal
    right = tip - head * v - 0.5 * head * normal
    draw.polygon([tuple(tip), tuple(left), tuple(right)], fill=fill)


def render_key_images(result: Any, lang: str = "en", *, max_lesion_slices: int = 3) -> list[KeyImage]:
    """Render the key images of a triage result (see the module docstring)."""
    messages = common.load_messages(lang)
    volume = result.volume
    hu_img = _to_lps(volume.image)
    hu = sitk.GetArrayViewFromImage(hu_img)
    classes = common.lesion_classes(result) if common.card_of(result, required=False) is not None else ()
    class_values = {c.name: c.value for c in classes}
    if result.segmentation is not None:
        lab_img = sitk.GetImageFromArray(np.ascontiguousarray(result.segmentation.labels, dtype=np.uint8))
        lab_img.CopyInformation(volume.image)
        labels = sitk.GetArrayFromImage(_to_lps(lab_img))
    else:
        labels = np.zeros(hu.shape, dtype=np.uint8)
    midline = getattr(result, "midline", None)
    plane = getattr(midline, "ideal_plane", None) if midline is not None else None
    midline_k = _midline_slice(hu_img, midline)
    shift_mm = _signed_shift_mm(result)
    slices = choose_slices(labels, class_values, midline_k, max_lesion_slices=max_lesion_slices,
                           blood_classes=[c.name for c in classes if c.role == "blood"])
    present = [c for c in classes if (labels == c.value).any()]

    sx, sy, _ = hu_img.GetSpacing()
    y0, y1, x0, x1 = _head_box(hu, (sx, sy))
    ny, nx = y1 - y0, x1 - x0
    width = max(MIN_WIDTH_PX, nx)
    scale_x = width / nx
    scale_y = scale_x * sy / sx
    height = int(round(ny * scale_y))
    lo, hi = WINDOW_HU
    out: list[KeyImage] = []

    def to_px(rows: np.ndarray, cols: np.ndarray) -> list[tuple[float, float]]:
        """Absolute (row, column) indices to canvas pixels of the cropped, scaled image."""
        return [((float(c) - x0 + 0.5) * scale_x, (float(r) - y0 + 0.5) * scale_y) for r, c in zip(rows, cols)]

    for kind, k in slices:
        hu_k = np.asarray(hu[k, y0:y1, x0:x1], dtype=np.float32)
        gray = np.clip((hu_k - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
        base = Image.fromarray(gray).resize((width, height), Image.Resampling.BILINEAR).convert("RGB")
        lab = np.asarray(Image.fromarray(np.ascontiguousarray(labels[k, y0:y1, x0:x1])).resize((width, height),
                                                                                            Image.Resampling.NEAREST))
        rgb = np.asarray(base, dtype=np.float32).copy()
        for index, cls in enumerate(classes):
            mask = lab == cls.value
            if not mask.any():
                continue
            colour = np.array(common.class_colour(cls.name, index), dtype=np.float32)
            rgb[mask] = (1 - _ALPHA) * rgb[mask] + _ALPHA * colour
            edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
            rgb[edge] = colour
        img = Image.fromarray(rgb.astype(np.uint8))
        draw = ImageDraw.Draw(img)
        line_w = max(1, width // 256)
        if plane is not None:
            head_rows = np.flatnonzero((hu_k > -300.0).any(axis=1)) + y0
            rows = np.arange(head_rows[0], head_rows[-1] + 1) if head_rows.size else np.arange(y0, y1)
            cols = _plane_columns(hu_img, plane, k, rows, 0.0)
            ok = np.isfinite(cols)
            _dashed_line(draw, to_px(rows[ok], cols[ok]), _IDEAL_RGB, line_w, dash=max(2, ny // 40))
            if kind == "midline" or (midline_k is not None and k == midline_k):
                if shift_mm is not None and abs(shift_mm) > 0:
                    mid = np.arange(y0 + int(ny * 0.3), y0 + int(ny * 0.7))
                    shifted = _plane_columns(hu_img, plane, k, mid, shift_mm)
                    ok = np.isfinite(shifted)
                    draw.line(to_px(mid[ok], shifted[ok]), fill=_SHIFT_RGB, width=line_w + 1)
                    r0 = np.array([y0 + ny // 2])
                    c_ideal = _plane_columns(hu_img, plane, k, r0, 0.0)
                    c_shift = _plane_columns(hu_img, plane, k, r0, shift_mm)
                    if np.isfinite(c_ideal[0]) and np.isfinite(c_shift[0]):
                        (start,) = to_px(r0, c_ideal)
                        (end,) = to_px(r0, c_shift)
                        _arrow(draw, start, end, _SHIFT_RGB, line_w + 1)
        caption_key = {"lesion": "key_image_lesion", "midline": "key_image_midline"}.get(kind, "key_image_slice")
        caption = messages[caption_key].format(slice=k + 1, slices=hu.shape[0])
        drawn_shift = shift_mm if (kind == "midline" or (midline_k is not None and k == midline_k)) else None
        img = _decorate(img, messages, caption, present, classes, drawn_shift, result, plane is not None)
        out.append(KeyImage(np.asarray(img, dtype=np.uint8), kind, int(k), int(hu.shape[0]), caption))
    if stroke_out.registered(result):
        out.extend(render_aspects_images(result, lang))
    return out


def aspects_level_slices(aspects_zyx: np.ndarray) -> list[tuple[str, int]]:
    """(level, k): the slice with the most voxels of each level's regions (both sides); levels absent are left out."""
    out = []
    for level, region_codes in ASPECTS_LEVELS:
        values = [stroke_out.aspects_label(c, side) for c in region_codes for side in stroke_out.SIDES]
        counts = np.isin(aspects_zyx, values).sum(axis=(1, 2))
        if counts.max() > 0:
            out.append((level, int(np.argmax(counts))))
    return out


def render_aspects_images(result: Any, lang: str = "en") -> list[KeyImage]:
    """The ganglionic and supraganglionic ASPECTS images (see the module docstring); [] unless registered."""
    if not stroke_out.registered(result):
        return []
    messages = common.load_messages(lang)
    anatomy = result.anatomy
    grid = anatomy.grid
    hu = sitk.GetArrayViewFromImage(grid)
    labels = np.asarray(anatomy.aspects)
    isch = result.findings.ischaemia
    assessed = isch is not None and isch.assessed
    affected_regions = isch.affected_regions if assessed else {}
    affected_values = {stroke_out.aspects_label(c, side) for side in stroke_out.SIDES
                       for c in affected_regions.get(side) or ()}
    artery = None
    dense = getattr(result, "dense_artery", None)
    dense_record = result.findings.dense_artery
    if dense is not None and getattr(dense, "present", None) and getattr(dense, "mask", None) is not None:
        artery = np.asarray(dense.mask, dtype=bool)
        artery = artery if artery.any() else None
    if assessed and isch.aspects:
        score = messages["aspects_burned"].format(left=isch.aspects.get("left", "-"),
                                                  right=isch.aspects.get("right", "-"))
    else:
        score = messages["aspects_not_assessed_short"]

    sx, sy, _ = grid.GetSpacing()
    y0, y1, x0, x1 = _head_box(hu, (sx, sy))
    ny, nx = y1 - y0, x1 - x0
    width = max(MIN_WIDTH_PX, nx)
    scale_x = width / nx
    height = int(round(ny * scale_x * sy / sx))
    lo, hi = STROKE_WINDOW_HU
    size = max(11, width // 50)
    font = _bold_font(size)
    out: list[KeyImage] = []
    for level, k in aspects_level_slices(labels):
        gray = np.clip((np.asarray(hu[k, y0:y1, x0:x1], dtype=np.float32) - lo) / (hi - lo) * 255.0, 0, 255)
        base = Image.fromarray(gray.astype(np.uint8)).resize((width, height), Image.Resampling.BILINEAR).convert("RGB")
        lab = np.asarray(Image.fromarray(np.ascontiguousarray(labels[k, y0:y1, x0:x1])).resize(
            (width, height), Image.Resampling.NEAREST))
        rgb = np.asarray(base, dtype=np.float32).copy()
        present = [int(v) for v in np.unique(lab) if v != 0]
        fill = np.array(stroke_out.ISCHAEMIA_RGB, dtype=np.float32)
        for value in present:
            if value in affected_values:
                region = lab == value
                rgb[region] = (1 - _ASPECTS_ALPHA) * rgb[region] + _ASPECTS_ALPHA * fill
        edges = np.zeros(lab.shape, dtype=bool)
        for value in present:
            region = lab == value
            edges |= region & ~ndimage.binary_erosion(region, iterations=1)
        rgb[edges] = np.array(_REGION_RGB, dtype=np.float32)
        projected = False
        art_px = None
        if artery is not None:
            art_k = artery[k]
            if not art_k.any():
                art_k, projected = artery.any(axis=0), True
            art_px = np.asarray(Image.fromarray(art_k[y0:y1, x0:x1].astype(np.uint8) * 255).resize(
                (width, height), Image.Resampling.NEAREST)) > 0
            colour = np.array(stroke_out.DENSE_ARTERY_RGB, dtype=np.float32)
            art_edge = art_px & ~ndimage.binary_erosion(art_px, iterations=2)
            rgb[art_px if not projected else art_edge] = colour
        img = Image.fromarray(rgb.astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for value in present:
            rows, cols = np.nonzero(lab == value)
            code, _ = stroke_out.aspects_region(value)
            text_w = draw.textlength(code, font=font)
            cx, cy = float(np.mean(cols)) - text_w / 2, float(np.mean(rows)) - size / 2
            draw.text((cx, cy), code, font=font, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
        if art_px is not None and art_px.any():
            rows, cols = np.nonzero(art_px)
            r = max(12.0, 0.6 * float(max(np.ptp(rows), np.ptp(cols))))
            cy, cx = float(np.mean(rows)), float(np.mean(cols))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=stroke_out.DENSE_ARTERY_RGB,
                         width=max(2, width // 256))
        big = _bold_font(max(14, width // 28))
        draw.text((8, 6), score, font=big, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
        for text, x in ((messages["side_letter_right"], 8), (messages["side_letter_left"], width - 8 - size)):
            draw.text((x, height / 2), text, font=big, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
        caption = messages[f"key_image_aspects_{level}"].format(slice=k + 1, slices=hu.shape[0])
        lines: list[tuple[tuple[int, int, int] | None, str]] = [(None, caption), (None, score),
                                                               (_REGION_RGB, messages["legend_aspects_region"])]
        if affected_values:
            lines.append((stroke_out.ISCHAEMIA_RGB, messages["legend_aspects_affected"]))
        if artery is not None:
            side = (dense_record.side if dense_record is not None else None) or getattr(dense, "side", None)
            segment = (dense_record.segment if dense_record is not None else None) or ""
            text = messages["legend_dense_artery"].format(
                side=messages.get(f"hemisphere_{side}", str(side or "")), segment=segment)
            if projected:
                text += " " + messages["legend_projected"]
            lines.append((stroke_out.DENSE_ARTERY_RGB, text))
        framed = _frame(img, messages, lines)
        out.append(KeyImage(np.asarray(framed, dtype=np.uint8), f"aspects_{level}", int(k), int(hu.shape[0]), caption))
    return out


def _decorate(img: Image.Image, messages: Any, caption: str, present: Sequence[common.LesionClass],
              classes: Sequence[common.LesionClass], shift_mm: float | None, result: Any,
              has_midline: bool) -> Image.Image:
    """Add the banner on top and the legend below the image."""
    legend: list[tuple[tuple[int, int, int] | None, str]] = []
    for cls in present:
        index = [c.value for c in classes].index(cls.value)
        legend.append((common.class_colour(cls.name, index), messages.get(f"class_{cls.name}", cls.name)))
    if not present:
        legend.append((None, messages["no_lesion"]))
    if has_midline:
        legend.append((_IDEAL_RGB, messages["ideal_midline"]))
        if shift_mm is not None:
            direction = result.findings.midline_shift_direction or ("left" if shift_mm > 0 else "right")
            text = (f"{messages['midline_shift']}: {abs(shift_mm):.1f} {messages['unit_mm']}, "
                    f"{messages.get('direction_' + str(direction), str(direction))}")
            legend.append((_SHIFT_RGB, text))
    return _frame(img, messages, [(None, caption)] + legend)


def _frame(img: Image.Image, messages: Any, lines: Sequence[tuple[tuple[int, int, int] | None, str]]) -> Image.Image:
    """The image with the red "not for diagnosis" banner on top and legend ``lines`` below."""
    width, height = img.size
    size = max(12, width // 40)
    font, bold = _font(size), _bold_font(size)
    line_h = int(size * 1.5)
    banner_h = line_h + 8
    bottom_h = line_h * len(lines) + 10
    canvas = Image.new("RGB", (width, banner_h + height + bottom_h), (0, 0, 0))
    canvas.paste(img, (0, banner_h))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, width, banner_h - 1], fill=_BANNER_RGB)
    banner = messages["banner"]
    tw = draw.textlength(banner, font=bold)
    draw.text(((width - tw) / 2, 4), banner, font=bold, fill=(255, 255, 255))
    y = banner_h + height + 5
    for colour, text in lines:
        x = 8
        if colour is not None:
            draw.rectangle([x, y + 3, x + size, y + 3 + size], fill=colour)
            x += size + 8
        draw.text((x, y), text, font=font, fill=(255, 255, 255))
        y += line_h
    return canvas


def build_sc_datasets(images: Sequence[KeyImage], ref_dataset: Dataset) -> list[hd.sc.SCImage]:
    """DICOM Secondary Capture (RGB) of each key image, in the study of ``ref_dataset``."""
    series_uid = hd.UID()
    out: list[hd.sc.SCImage] = []
    for number, key in enumerate(images, start=1):
        try:
            sc = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=ref_dataset,
                pixel_array=np.ascontiguousarray(key.rgb, dtype=np.uint8),
                photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
                bits_allocated=8,
                coordinate_system=hd.CoordinateSystemNames.PATIENT,
                series_instance_uid=series_uid,
                series_number=SERIES_NUMBER,
                sop_instance_uid=hd.UID(),
                instance_number=number,
                manufacturer=common.MANUFACTURER,
                patient_orientation=("L", "P"),
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                series_description=SERIES_DESCRIPTION,
                manufacturer_model_name=common.MODEL_NAME,
                software_versions=common.ictus_version(),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise OutputError(f"key image could not be built ({exc}); report this with the study") from exc
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.BurnedInAnnotation = "YES"
        sc.BodyPartExamined = "HEAD"  # an unpaired part: no Laterality (dciodvfy checks this condition)
        sc.DerivationDescription = (
            "Ictus triage output: ASPECTS regions of the registered template, not for diagnosis"
            if key.kind.startswith("aspects") else
            "Ictus triage output: segmentation overlay and midline, not for diagnosis")
        sc.ImageComments = f"ictus key image: {key.kind}, slice {key.slice_index + 1} of {key.n_slices}"
        out.append(sc)
    return out
