"""Plot helpers: figures are made, saved as PNG, and show what they claim."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from ictus.imaging.phantom import PhantomSpec, phantom_with_truth  # noqa: E402
from ictus.pipelines.research.plots import choose_slices, plot_bland_altman, plot_midline, plot_montage, plot_roc  # noqa: E402

SMALL = dict(matrix=96, pixel_spacing_mm=2.4, slice_thickness_mm=5.0)


@pytest.fixture(scope="module")
def shifted_case():
    return phantom_with_truth(PhantomSpec(haemorrhage="IPH", haemorrhage_volume_ml=30.0, midline_shift_mm=6.0, **SMALL))


@pytest.fixture(scope="module")
def shifted(shifted_case):
    return shifted_case[0]


def test_montage_overlays_the_lesion(shifted, shifted_case, tmp_path: Path) -> None:
    labels = shifted_case[1].labels
    fig = plot_montage(shifted, labels, n_slices=6)
    zs = np.flatnonzero(labels.any(axis=(1, 2)))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles and all(zs[0] <= int(t.split()[-1]) <= zs[-1] for t in titles)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["IPH"]
    out = plot_montage(shifted, labels, path=tmp_path / "m.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_montage_rejects_labels_on_another_grid(shifted) -> None:
    with pytest.raises(ValueError, match="grid"):
        plot_montage(shifted, np.zeros((2, 2, 2), np.uint8))


def test_choose_slices_without_lesion_spans_the_volume() -> None:
    zs = choose_slices(None, 40, 5)
    assert zs[0] == 4 and zs[-1] == 35 and len(zs) == 5


def test_midline_plot_draws_ideal_and_shifted_lines(shifted, tmp_path: Path) -> None:
    from ictus.imaging.brain import segment_brain
    from ictus.imaging.midline import measure_midline_shift

    midline = measure_midline_shift(shifted, segment_brain(shifted))
    result = SimpleNamespace(volume=shifted, midline=midline)
    fig = plot_midline(result)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2  # ideal midline and the septum line
    ideal, septum = (np.mean(line.get_xdata()) for line in lines)
    spacing_x = shifted.spacing_mm[0]
    assert abs(septum - ideal) * spacing_x == pytest.approx(abs(midline.shift_mm), abs=0.01)
    assert abs(midline.shift_mm) > 3.0
    assert plot_midline(result, path=tmp_path / "mid.png").is_file()


def test_roc_and_bland_altman_from_rows(tmp_path: Path) -> None:
    rows = [{"reported": True, "ref_ICH": r, "score_ICH": s, "ICH_volume_ref_ml": v, "ICH_volume_pred_ml": v + d}
            for r, s, v, d in [(True, 0.9, 20, 1), (True, 0.4, 10, -2), (False, 0.3, 0, 0.5), (False, 0.1, 0, 0)]]
    fig = plot_roc(rows)
    assert "AUC 1.00" in fig.axes[0].get_legend().get_texts()[0].get_text()
    fig = plot_bland_altman(rows)
    assert "bias -0.12 mL" in fig.axes[0].get_title()
    assert plot_roc(rows, tmp_path / "r.png").is_file()


def test_plots_and_evaluation_do_not_import_each_other() -> None:
    """The Bland-Altman statistic lives in research.stats, so plots need not import evaluate."""
    import subprocess
    import sys

    code = ("import sys, ictus.pipelines.research.plots as p, ictus.pipelines.research.stats as s; "
            "print('ictus.pipelines.research.evaluate' in sys.modules, p.bland_altman is s.bland_altman)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]
