"""``ictus phantom OUT_DIR``: write a synthetic head-CT DICOM study with its ground truth.

Writes ``OUT_DIR/series-002-axial/CT0001.dcm...`` (plus a lateral scout with
``--with-scout``), ``OUT_DIR/ground_truth.json`` and
``OUT_DIR/ground_truth_labels.nii.gz`` (BLAST-CT labels: 1 IPH, 2 EAH,
3 oedema, 4 IVH). Exit codes: 0 ok, 2 usage, 4 an impossible phantom (e.g. a
haemorrhage that does not fit), 6 the folder cannot be written or is not empty.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from imaging.phantom import COMPRESSIONS, EAH_LOCATIONS, IPH_LOCATIONS, PhantomSpec, write_phantom


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
@click.option("--tilt-deg", type=float, default=0.0, show_default=True, help="Gantry tilt (GE style, about patient x).")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="none", show_default=True)
@click.option("--contrast", is_flag=True, help="Contrast-enhanced: dense arteries and sinuses, ContrastBolusAgent set.")
@click.option("--age-years", type=float, default=60.0, show_default=True, help="Patient age (head size, atrophy, PatientAge).")
@click.option("--noise-hu", type=float, default=5.0, show_default=True, help="Noise standard deviation in HU.")
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
@click.option("--force", is_flag=True, help="Replace a non-empty OUT_DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print the ground truth as JSON.")
def command(out_dir: Path, haemorrhage: str | None, haemorrhage_volume_ml: float, haemorrhage_side: str | None,
            haemorrhage_location: str | None, haemorrhage_centre_mm: str | None, haemorrhage_hu: float,
            oedema_rim_mm: float, midline_shift_mm: float, midline_shift_direction: str | None,
            slice_thickness_mm: float, slice_spacing_mm: float | None, slice_blocks: str | None,
            gap_after_slice: int | None, gap_mm: float, pixel_spacing_mm: float, matrix: int,
            n_slices: int | None, z_coverage_mm: float, tilt_deg: float, compression: str, contrast: bool,
            age_years: float, noise_hu: float, seed: int, with_scout: bool, head_yaw_deg: float, head_roll_deg: float,
            head_pitch_deg: float, head_offset_mm: str | None, detailed_anatomy: bool, metal_artefact: bool,
            multiframe: bool, unsigned_pixels: bool,
            force: bool,
            as_json: bool) -> None:
    """Write a synthetic head-CT DICOM study with known ground truth into OUT_DIR.

    Outputs: OUT_DIR/series-002-axial/ (the CT series), OUT_DIR/series-001-scout/
    (with --with-scout), OUT_DIR/ground_truth.json and
    OUT_DIR/ground_truth_labels.nii.gz (0 background, 1 IPH, 2 EAH, 3 oedema,
    4 IVH). Exit codes: 0 ok, 2 usage, 4 impossible phantom (e.g. a haemorrhage
    that does not fit), 6 OUT_DIR not empty (use --force) or not writable.
    """
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
