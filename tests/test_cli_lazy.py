"""`ictus --help` imports no command module (pydicom, numpy, SimpleITK stay unloaded), and the
help it lists is each command's own."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import click

from ictus.pipelines import cli
from tests.conftest import ROOT


def test_listed_help_is_each_commands_own():
    for name, text in cli.COMMAND_HELP.items():
        command = importlib.import_module(f"ictus.pipelines.commands.{name}").command
        assert command.name == name
        assert click.Command(name, help=text).get_short_help_str(limit=300) == command.get_short_help_str(limit=300), name


def test_help_loads_no_heavy_module():
    code = ("import json, sys; from ictus.pipelines.cli import main; rc = main(['--help']); "
            "print(json.dumps([rc, sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pydicom', 'numpy', 'SimpleITK', 'onnxruntime') or m.startswith(('ictus.imaging', 'ictus.models')))]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    *help_lines, last = proc.stdout.strip().splitlines()
    rc, heavy = json.loads(last)
    assert rc == 0
    assert heavy == ["ictus.imaging", "ictus.imaging.errors"], heavy
    assert all(f"  {name}" in "\n".join(help_lines) for name in cli.COMMAND_MODULES)


def test_a_command_runs_after_lazy_loading(cli_runner):
    code, stdout, stderr = cli_runner("models", "list")
    assert code == 0, stderr
    assert "blast-ct" in stdout
    code, _, stderr = cli_runner("nosuch")
    assert code == 2 and "No such command" in stderr


def test_installed_code_lives_under_one_namespace(tmp_path):
    """From a folder with its own ``models`` package, Ictus still imports its own code,
    and no top-level ``imaging``, ``models`` or ``pipelines`` of Ictus is importable."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("MINE = True\n")
    code = ("import importlib.util, sys; sys.path.remove(''); import ictus.models.registry, ictus.pipelines.cli; "
            "print([importlib.util.find_spec(n) is None for n in ('imaging', 'models', 'pipelines')])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[True, True, True]"
    mine = subprocess.run([sys.executable, "-c", "import models, ictus.models.registry; print(models.MINE)"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert mine.returncode == 0 and mine.stdout.strip() == "True", mine.stderr


def test_source_folders_are_not_top_level_packages():
    """Even from the repository root, where the source folders sit on sys.path,
    ``import models`` fails and says what to import instead."""
    for name in ("imaging", "models", "pipelines"):
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode != 0
        assert f"import ictus.{name}" in proc.stderr


def test_volume_command_loads_only_the_ingest(tmp_path):
    """``ictus volume`` imports the reader, series rules and builder, not the models, findings,
    writers or scipy (the triage pipeline's imports cost it more than the conversion itself)."""
    from tests.conftest import shared_dicom

    folder = shared_dicom("ge-head-tilt-variable-spacing")
    out = tmp_path / "ge.nii"
    code = ("import json, sys; from ictus.pipelines.cli import main; "
            f"rc = main(['volume', {str(folder)!r}, '-o', {str(out)!r}]); "
            "print(json.dumps([rc, sorted(m for m in sys.modules if m.split('.')[0] in "
            "('scipy', 'onnxruntime', 'openvino', 'torch', 'highdicom', 'reportlab') "
            "or m.startswith(('ictus.models', 'ictus.pipelines.triage', 'ictus.pipelines.findings', "
            "'ictus.pipelines.writers')))]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rc, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rc == 0 and out.exists()
    assert heavy == [], heavy
