"""``ictus phantom OUT_DIR``: write a synthetic head-CT DICOM study with its ground truth.

Writes ``OUT_DIR/series-002-axial/CT0001.dcm...`` (plus a lateral scout with
``--with-scout``), ``OUT_DIR/ground_truth.json`` and
``OUT_DIR/ground_truth_labels.nii.gz`` (BLAST-CT labels: 1 IPH, 2 EAH,
3 oedema, 4 IVH). Exit codes: 0 ok, 2 usage, 4 an impossible phantom (e.g. a
haemorrhage that does not fit), 5 the stroke atlas is missing, 6 the folder cannot be
written or is not empty.

With ``--stroke`` the phantom is the CT template's anatomy (:mod:`ictus.imaging.phantom.stroke`)
under a random or given pose, with optional early ischaemic change in ASPECTS regions, a
hyperdense artery, raised haematocrit, a calcified arterial wall and an old infarct; it
writes the series and ``ground_truth.json`` (no label image).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ictus.imaging.phantom import COMPRESSIONS, EAH_LOCATIONS, IPH_LOCATIONS, PhantomSpec, write_phantom


def _triple(value: str | None, option: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise click.BadParameter("give three comma-separated numbers in mm, e.g. -25,0,10", param_hint=option)
    return parts  # type: ignore[return-value]


def _blocks(value: str | None) -> tuple[tuple[float, int], ...] | None:
    if value is None:
        return None
    try:
        blocks = tuple((float(t), int(n)) for t, n in (part.lower().split("x") for part in value.split(",")))
    except ValueError:
        raise click.BadParameter("give thickness x count pairs, e.g. 4x10,7x12", param_hint="--slice-blocks") from None
    return blocks


@click.command("phantom")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--haemorrhage", type=click.Choice(["IPH", "EAH", "IVH"]), default=None,
              help="Haemorrhage type: IPH (intraparenchymal), EAH (extra-axial crescent), IVH (intraventricular).")
@click.option("--haemorrhage-volume-ml", type=float, default=30.0, show_default=True, help="Haemorrhage volume in mL.")
@click.option("--haemorrhage-side", type=click.Choice(["left", "right", "both"]), default=None,
              help="Patient side of the haemorrhage (default: right; IVH: both, which only IVH accepts).")
@click.option("--haemorrhage-location", type=click.Choice(sorted(set(IPH_LOCATIONS + EAH_LOCATIONS))), default=None,
              help="Named place: IPH basal-ganglia (default), thalamus, lobar-frontal, lobar-parietal; "
                   "EAH convexity (default), frontal, temporal, occipital.")
@click.option("--haemorrhage-centre-mm", default=None, metavar="X,Y,Z",
              help="IPH centre (EAH: thickest direction) in LPS mm; overrides side and location.")
@click.option("--haemorrhage-hu", type=float, default=65.0, show_default=True, help="Haemorrhage density in HU.")
@click.option("--oedema-rim-mm", type=float, default=0.0, show_default=True,
              help="Perihaematomal oedema rim around an IPH (label 3).")
@click.option("--midline-shift-mm", type=float, default=0.0, show_default=True, help="Midline shift in mm.")
@click.option("--midline-shift-direction", type=click.Choice(["left", "right"]), default=None,
              help="Towards which patient side the midline moves (default: away from the haemorrhage, else left).")
@click.option("--slice-thickness-mm", type=float, default=5.0, show_default=True)
@click.option("--slice-spacing-mm", type=float, default=None, help="Distance between slices (default: the thickness).")
@click.option("--slice-blocks", default=None, metavar="TxN,...",
              help="Variable spacing: blocks of N contiguous slices T mm thick, inferior first (e.g. 4x10,7x12).")
@click.option("--gap-after-slice", type=int, default=None, help="Add a gap of --gap-mm after this slice (1-based, inferior first).")
@click.option("--gap-mm", type=float, default=0.0, show_default=True, help="Extra table travel of the gap.")
@click.option("--pixel-spacing-mm", type=float, default=0.45, show_default=True)
@click.option("--matrix", type=int, default=512, show_default=True, help="Rows and columns.")
@click.option("--slices", "n_slices", type=int, default=None, help="Number of slices (default: cover --z-coverage-mm).")
@click.option("--z-coverage-mm", type=float, default=170.0, show_default=True)
@click.option("--tilt-deg", "--gantry-tilt-deg", "tilt_deg", type=float, default=0.0, show_default=True, help="Gantry tilt (GE style, about patient x).")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="none", show_default=True)
@click.option("--contrast", is_flag=True, help="Contrast-enhanced: dense arteries and sinuses, ContrastBolusAgent set.")
@click.option("--age-years", type=float, default=60.0, show_default=True, help="Patient age (head size, atrophy, PatientAge).")
@click.option("--noise-hu", type=float, default=5.0, show_default=True,
              help="Noise standard deviation in HU (--stroke default: 4 HU at 5 mm, x sqrt(5 mm / thickness)).")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed (UIDs derive from all options).")
@click.option("--with-scout", is_flag=True, help="Also write a lateral localizer series.")
@click.option("--head-yaw-deg", type=float, default=0.0, show_default=True, help="Head rotation about z (LPS, right-handed).")
@click.option("--head-roll-deg", type=float, default=0.0, show_default=True, help="Head rotation about y.")
@click.option("--head-pitch-deg", type=float, default=0.0, show_default=True, help="Head rotation about x.")
@click.option("--head-offset-mm", default=None, metavar="X,Y,Z", help="Head centre in LPS mm (default 0,0,0, the FOV centre).")
@click.option("--detailed-anatomy", is_flag=True, help="Add cortical sulci, brainstem, fourth ventricle and a headrest.")
@click.option("--metal-artefact", is_flag=True, help="Add an aneurysm clip and its streak artefact.")
@click.option("--multiframe", is_flag=True, help="Write the series as one Legacy Converted Enhanced CT object.")
@click.option("--unsigned-pixels", is_flag=True,
              help="Store uint16 with RescaleIntercept -1024 (default: int16, intercept 0).")
@click.option("--stroke", is_flag=True,
              help="Render the CT template's anatomy (needs the stroke atlas) with the ischaemic-stroke options below.")
@click.option("--atlas-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="[--stroke] The stroke-atlas folder (template/, aspects/); default: the installed asset.")
@click.option("--lobar-atlas-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="[--stroke] BLAST-CT localisation_files (ventricles for ex vacuo widening); default: installed, "
                   "else none.")
@click.option("--ischaemia-regions", default=None, metavar="CODES",
              help="[--stroke] ASPECTS regions with early ischaemic change, e.g. M2,IC,LN.")
@click.option("--ischaemia-side", type=click.Choice(["left", "right"]), default="left", show_default=True)
@click.option("--ischaemia-drop-hu", type=float, default=6.0, show_default=True,
              help="[--stroke] Density drop of the ischaemic brain tissue.")
@click.option("--dense-artery", "dense_artery", type=click.Choice(["left", "right"]), default=None,
              help="[--stroke] Side of a hyperdense MCA (from the M1 origin along M1 then M2).")
@click.option("--dense-artery-hu", type=float, default=55.0, show_default=True)
@click.option("--dense-artery-length-mm", type=float, default=15.0, show_default=True)
@click.option("--artery-hu", type=float, default=40.0, show_default=True, help="[--stroke] Normal arterial blood.")
@click.option("--haematocrit-hu", type=float, default=None,
              help="[--stroke] Raise every artery to this density (high haematocrit; not a dense artery sign).")
@click.option("--calcified-wall", is_flag=True, help="[--stroke] Calcified wall segments on one M1 (not a dense artery sign).")
@click.option("--calcified-wall-side", type=click.Choice(["left", "right"]), default="left", show_default=True)
@click.option("--old-infarct", "old_infarct", default=None, metavar="CODES",
              help="[--stroke] ASPECTS regions of an old (chronic) infarct: CSF density with volume loss.")
@click.option("--old-infarct-side", type=click.Choice(["left", "right"]), default="right", show_default=True)
@click.option("--pose-seed", type=int, default=0, show_default=True,
              help="[--stroke] Seed of the random pose (parts not given by --rotation-deg/--translation-mm/--scale).")
@click.option("--rotation-deg", default=None, metavar="PITCH,ROLL,YAW", help="[--stroke] Head rotation about x, y, z.")
@click.option("--translation-mm", default=None, metavar="X,Y,Z", help="[--stroke] Brain centre in LPS mm.")
@click.option("--scale", "scale", default=None, metavar="SX,SY,SZ", help="[--stroke] Head scale per axis (0.92-1.08).")
@click.option("--sex", type=click.Choice(["M", "F", "O"]), default="O", show_default=True, help="[--stroke] PatientSex.")
@click.option("--force", is_flag=True, help="Replace a non-empty OUT_DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print the ground truth as JSON.")
@click.pass_context
def command(ctx: click.Context, out_dir: Path, haemorrhage: str | None, haemorrhage_volume_ml: float, haemorrhage_side: str | None,
            haemorrhage_location: str | None, haemorrhage_centre_mm: str | None, haemorrhage_hu: float,
            oedema_rim_mm: float, midline_shift_mm: float, midline_shift_direction: str | None,
            slice_thickness_mm: float, slice_spacing_mm: float | None, slice_blocks: str | None,
            gap_after_slice: int | None, gap_mm: float, pixel_spacing_mm: float, matrix: int,
            n_slices: int | None, z_coverage_mm: float, tilt_deg: float, compression: str, contrast: bool,
            age_years: float, noise_hu: float, seed: int, with_scout: bool, head_yaw_deg: float, head_roll_deg: float,
            head_pitch_deg: float, head_offset_mm: str | None, detailed_anatomy: bool, metal_artefact: bool,
            multiframe: bool, unsigned_pixels: bool,
            force: bool,
            as_json: bool, stroke: bool, **stroke_options: Any) -> None:
    """Write a synthetic head-CT DICOM study with known ground truth into OUT_DIR.

    Outputs: OUT_DIR/series-002-axial/ (the CT series), OUT_DIR/series-001-scout/
    (with --with-scout), OUT_DIR/ground_truth.json and
    OUT_DIR/ground_truth_labels.nii.gz (0 background, 1 IPH, 2 EAH, 3 oedema,
    4 IVH). Exit codes: 0 ok, 2 usage, 4 impossible phantom (e.g. a haemorrhage
    that does not fit), 5 stroke atlas missing, 6 OUT_DIR not empty (use --force) or
    not writable.

    With --stroke: the CT template's anatomy under a pose, with the [--stroke] options;
    writes the series and ground_truth.json.
    """
    given = {name for name in ctx.params if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}
    if stroke:
        _stroke_command(ctx, given, out_dir=out_dir, slice_thickness_mm=slice_thickness_mm,
                        pixel_spacing_mm=pixel_spacing_mm, matrix=matrix, z_coverage_mm=z_coverage_mm,
                        tilt_deg=tilt_deg, age_years=age_years, noise_hu=noise_hu, seed=seed, force=force,
                        as_json=as_json, **stroke_options)
        return
    misplaced = sorted(given & set(_STROKE_ONLY))
    if misplaced:
        raise click.UsageError(f"{_flag(misplaced[0])} needs --stroke")
    side = haemorrhage_side
    if side == "both" and haemorrhage != "IVH":
        raise click.BadParameter("'both' is only for --haemorrhage IVH", param_hint="--haemorrhage-side")
    spec = PhantomSpec(
        haemorrhage=haemorrhage,
        haemorrhage_volume_ml=haemorrhage_volume_ml,
        haemorrhage_side=side,
        haemorrhage_location=haemorrhage_location,
        haemorrhage_centre_lps_mm=_triple(haemorrhage_centre_mm, "--haemorrhage-centre-mm"),
        haemorrhage_hu=haemorrhage_hu,
        oedema_rim_mm=oedema_rim_mm,
        midline_shift_mm=midline_shift_mm,
        midline_shift_direction=midline_shift_direction,
        slice_thickness_mm=slice_thickness_mm,
        slice_spacing_mm=slice_spacing_mm,
        slice_blocks=_blocks(slice_blocks),
        gap_after_slice=gap_after_slice,
        gap_mm=gap_mm,
        pixel_spacing_mm=pixel_spacing_mm,
        matrix=matrix,
        n_slices=n_slices,
        z_coverage_mm=z_coverage_mm,
        gantry_tilt_deg=tilt_deg,
        compression=compression,
        contrast=contrast,
        patient_age_years=age_years,
        noise_hu=noise_hu,
        seed=seed,
        with_scout=with_scout,
        unsigned_pixels=unsigned_pixels,
        head_yaw_deg=head_yaw_deg,
        head_roll_deg=head_roll_deg,
        head_pitch_deg=head_pitch_deg,
        head_offset_mm=_triple(head_offset_mm, "--head-offset-mm") or (0.0, 0.0, 0.0),
        detailed_anatomy=detailed_anatomy,
        metal_artefact=metal_artefact,
        multiframe=multiframe,
    )
    written = write_phantom(spec, out_dir, force=force)
    truth = written.truth
    if as_json:
        click.echo(json.dumps(truth, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
        return
    g = truth["geometry"]
    click.echo(f"phantom written to {written.out_dir}")
    thickness = f"{g['slice_thickness_mm']:g} mm" if g["regular"] else "variable"
    frames = f"1 multi-frame file, {g['n_slices']} frames" if spec.multiframe else f"{written.n_files} slices"
    click.echo(f"  series: {written.series_dir.name}/ ({frames}, {g['rows']}x{g['columns']}, "
               f"{g['pixel_spacing_mm'][0]:g} mm pixels, {thickness} slices, "
               f"tilt {g['gantry_tilt_deg']:g} deg, compression {spec.compression})")
    if spec.with_scout:
        click.echo("  scout:  series-001-scout/ (1 lateral localizer)")
    click.echo(f"  ground truth: {written.ground_truth_path.name}, labels: {written.labels_path.name} "
               f"({truth['labels_grid']['kind']} grid)")
    h = truth["haemorrhage"]
    if h is None:
        click.echo("  haemorrhage: none")
    else:
        click.echo(f"  haemorrhage: {h['type']} {h['hemisphere']}, nominal {h['nominal_volume_ml']:g} mL, "
                   f"on grid {h['on_grid_volume_ml']:.2f} mL, {h['hu']:g} HU, centroid (LPS mm) "
                   + ", ".join(f"{v:.1f}" for v in h["centroid_lps_mm"]))
        if h["scanned_fraction"] is not None and h["scanned_fraction"] < 0.99:
            click.echo(f"  warning: only {100 * h['scanned_fraction']:.0f}% of the haemorrhage lies inside the "
                       "scanned slices; widen --z-coverage-mm or --slices for the whole of it")
    oedema = truth["volumes_ml"]["oedema"]
    if oedema["on_grid_ml"]:
        click.echo(f"  oedema: nominal {oedema['nominal_ml']:.2f} mL, on grid {oedema['on_grid_ml']:.2f} mL")
    if truth["metal_artefact"]:
        m = truth["metal_artefact"]
        click.echo(f"  metal artefact: {m['object']}, streaks on slices "
                   + ", ".join(str(k + 1) for k in m["slices_affected"]))
    shift = truth["midline_shift_mm"]
    click.echo(f"  midline shift: {shift:g} mm" + (f" towards patient {truth['midline_shift_direction']}" if shift else ""))
    click.echo(f"  brain {truth['brain_volume_ml']:.0f} mL, intracranial {truth['intracranial_volume_ml']:.0f} mL, "
               f"lateral ventricles {truth['lateral_ventricles_volume_ml']:.1f} mL, "
               f"contrast {'yes' if spec.contrast else 'no'}")


# -- ictus phantom --stroke ---------------------------------------------------------------
_STROKE_ONLY = ("atlas_dir", "lobar_atlas_dir", "ischaemia_regions", "ischaemia_side", "ischaemia_drop_hu",
                "dense_artery", "dense_artery_hu", "dense_artery_length_mm", "artery_hu", "haematocrit_hu",
                "calcified_wall", "calcified_wall_side", "old_infarct", "old_infarct_side", "pose_seed",
                "rotation_deg", "translation_mm", "scale", "sex")
_SHARED = ("out_dir", "slice_thickness_mm", "pixel_spacing_mm", "matrix", "z_coverage_mm", "tilt_deg", "age_years",
           "noise_hu", "seed", "force", "as_json", "stroke")


def _flag(name: str) -> str:
    return "--" + {"n_slices": "slices", "as_json": "json"}.get(name, name).replace("_", "-")


def _codes(value: str | None, option: str) -> tuple[str, ...]:
    from ictus.imaging.stroke_atlas import ASPECTS_CODES

    if not value:
        return ()
    codes = tuple(part.strip() for part in value.split(",") if part.strip())
    by_upper = {c.upper(): c for c in ASPECTS_CODES}
    unknown = [c for c in codes if c.upper() not in by_upper]
    if unknown:
        raise click.BadParameter(f"unknown ASPECTS region {unknown[0]!r}; use {','.join(ASPECTS_CODES)}",
                                 param_hint=option)
    return tuple(by_upper[c.upper()] for c in codes)


def _asset_dir(given: Path | None, card: str, required: bool) -> Path | None:
    """The given folder, else the installed asset (``ictus models pull CARD``), else None / an error."""
    if given is not None:
        return given
    try:
        from ictus.models.assets import resolve_asset_dir  # type: ignore[import-not-found]

        return Path(resolve_asset_dir(card, None))
    except Exception as exc:  # not installed (ModelError), or no asset module yet
        if not required:
            return None
        from ictus.imaging.errors import ModelError

        reason = "no installed assets" if isinstance(exc, ImportError) else str(exc)
        raise ModelError(f"phantom: the {card} asset is not installed ({reason}); give --atlas-dir DIR "
                         f"or run `ictus models pull {card}`") from exc


def _stroke_command(ctx: click.Context, given: set[str], *, out_dir: Path, slice_thickness_mm: float,
                    pixel_spacing_mm: float, matrix: int, z_coverage_mm: float, tilt_deg: float, age_years: float,
                    noise_hu: float, seed: int, force: bool, as_json: bool, **o: Any) -> None:
    from ictus.imaging.errors import ModelError
    from ictus.imaging.stroke_atlas import STROKE_ATLAS_FILES, load_template_atlas, missing_files
    from ictus.imaging.phantom.stroke import StrokePhantomSpec, write_stroke_phantom

    geometric = sorted(n for n in given if n not in _SHARED and n not in _STROKE_ONLY)
    if geometric:
        raise click.UsageError(f"{_flag(geometric[0])} is an option of the geometric phantom, not of --stroke")
    defaults = StrokePhantomSpec()
    spec = StrokePhantomSpec(
        rotation_deg=_triple(o["rotation_deg"], "--rotation-deg"),
        translation_mm=_triple(o["translation_mm"], "--translation-mm"),
        scale=_triple(o["scale"], "--scale"),
        pose_seed=o["pose_seed"],
        gantry_tilt_deg=tilt_deg,
        slice_thickness_mm=slice_thickness_mm,
        pixel_spacing_mm=pixel_spacing_mm if "pixel_spacing_mm" in given else defaults.pixel_spacing_mm,
        matrix=matrix if "matrix" in given else defaults.matrix,
        z_coverage_mm=z_coverage_mm if "z_coverage_mm" in given else defaults.z_coverage_mm,
        noise_hu=noise_hu if "noise_hu" in given else None,
        seed=seed,
        patient_age_years=age_years if "age_years" in given else defaults.patient_age_years,
        patient_sex=o["sex"],
        ischaemia_regions=_codes(o["ischaemia_regions"], "--ischaemia-regions"),
        ischaemia_side=o["ischaemia_side"],
        ischaemia_drop_hu=o["ischaemia_drop_hu"],
        artery_hu=o["artery_hu"],
        haematocrit_hu=o["haematocrit_hu"],
        dense_artery_side=o["dense_artery"],
        dense_artery_hu=o["dense_artery_hu"],
        dense_artery_length_mm=o["dense_artery_length_mm"],
        calcified_wall=o["calcified_wall"],
        calcified_wall_side=o["calcified_wall_side"],
        old_infarct_regions=_codes(o["old_infarct"], "--old-infarct"),
        old_infarct_side=o["old_infarct_side"],
    ).validated()
    atlas_dir = _asset_dir(o["atlas_dir"], "stroke-atlas", required=True)
    missing = missing_files(atlas_dir, STROKE_ATLAS_FILES)
    if missing:
        raise ModelError(f"phantom: the stroke atlas in {atlas_dir} lacks {missing[0]}"
                         + (f" and {len(missing) - 1} more files" if len(missing) > 1 else "")
                         + "; give --atlas-dir DIR or run `ictus models pull stroke-atlas`")
    lobar_dir = _asset_dir(o["lobar_atlas_dir"], "blast-ct-atlas", required=False)
    if lobar_dir is not None and (lobar_dir / "localisation_files").is_dir():
        lobar_dir = lobar_dir / "localisation_files"
    atlas = load_template_atlas(str(atlas_dir), str(lobar_dir) if lobar_dir is not None else None)
    written = write_stroke_phantom(spec, atlas, out_dir, force=force)
    truth = written.truth
    if as_json:
        click.echo(json.dumps(truth, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
        return
    g, pose = truth["geometry"], truth["pose"]
    click.echo(f"stroke phantom written to {written.out_dir}")
    click.echo(f"  series: {written.series_dir.name}/ ({written.n_files} slices, {g['rows']}x{g['columns']}, "
               f"{g['pixel_spacing_mm'][0]:g} mm pixels, {g['slice_thickness_mm']:g} mm slices, "
               f"tilt {g['gantry_tilt_deg']:g} deg, noise {truth['noise_sigma_hu']:.1f} HU)")
    click.echo("  pose: rotation " + ",".join(f"{v:g}" for v in pose["rotation_deg"]) + " deg, translation "
               + ",".join(f"{v:g}" for v in pose["translation_mm"]) + " mm, scale "
               + ",".join(f"{v:g}" for v in pose["scale"]))
    affected = truth["affected_regions"]
    for side in ("left", "right"):
        regions = ",".join(affected[side]) or "none"
        click.echo(f"  {side}: ASPECTS {truth['expected_aspects'][side]} (acute: {regions})")
    dense = truth["dense_artery"]
    click.echo("  dense artery: " + (f"{dense['side']} {dense['hu']:g} HU over {dense['length_mm']:g} mm"
                                     if dense else "none")
               + f"; arteries {truth['arteries']['normal_hu']:g} HU"
               + (", calcified wall " + truth["arteries"]["calcified_wall"]["side"]
                  if truth["arteries"]["calcified_wall"] else ""))
    old = truth["old_infarct"]
    click.echo("  old infarct: " + (f"{old['side']} {','.join(old['regions'])}" if old else "none"))
    click.echo(f"  ground truth: {written.ground_truth_path.name}")
