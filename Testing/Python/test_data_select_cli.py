"""Scan selection rules and `hlip inspect` output, including bad input without tracebacks."""
import os
import subprocess
import sys

import numpy as np

from HLIPCore.cli.main import main
from HLIPCore.data import ScanSelection, Scan, Study, select_scans
from data_fixtures import AXIAL, affine_from, dicomdir_tests_folder, write_series

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _study():
    def scan(mod, desc, k=10):
        return Scan(np.zeros((k, 4, 4), np.float32), np.eye(4), mod, desc, series_uid=desc)
    return Study(scans=[scan("MR", "T1 AX"), scan("MR", "DWI b1000"), scan("CT", "HEAD"), scan("MR", "T2", k=2)])


def test_selection_rules_and_reasons():
    out = select_scans(_study(), ScanSelection(include_modalities=["mr"], exclude_description="dwi", min_slices=5))
    assert [s.description for s in out.scans] == ["T1 AX"]
    reasons = " | ".join(s.reason for s in out.skipped)
    assert "modality CT" in reasons and "'dwi'" in reasons and "fewer than 5" in reasons


def test_at_most_max_scans_in_a_deterministic_order():
    big = Study(scans=[Scan(np.zeros((3, 2, 2), np.float32), np.eye(4), "MR", f"s{n}") for n in range(45)])
    first = select_scans(big)
    assert len(first.scans) == 40 and [s.description for s in first.scans] == [f"s{n}" for n in range(40)]
    assert len(first.skipped) == 5
    seeded = [s.description for s in select_scans(big, ScanSelection(max_scans=10, shuffle_seed=3)).scans]
    assert seeded == [s.description for s in select_scans(big, ScanSelection(max_scans=10, shuffle_seed=3)).scans]
    assert seeded != [f"s{n}" for n in range(10)]


def test_inspect_lists_scans_and_skipped(tmp_path, capsys):
    write_series(tmp_path, np.zeros((6, 12, 14), np.float32), affine_from(*AXIAL, (0.5, 0.5, 2.0), (0, 0, 0)),
                 description="T2 FLAIR", drop=[2])
    (tmp_path / "junk.dcm").write_bytes(b"garbage" * 20)
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "T2 FLAIR" in out and "6x12x14" in out and "LPS" in out and "0.5 x 0.5 x 2" in out
    assert "missing slice" in out and "junk.dcm" in out and "not a DICOM file" in out


def test_inspect_real_study(capsys):
    assert main(["inspect", dicomdir_tests_folder()]) == 0
    out = capsys.readouterr().out
    assert "SmartScore" in out and "Routine Brain" in out and "skipped" in out


def test_inspect_bad_input_is_one_line_without_traceback(tmp_path):
    (tmp_path / "x.dcm").write_bytes(os.urandom(256))
    proc = subprocess.run([sys.executable, "-m", "HLIPCore.cli.main", "inspect", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "x.dcm" in lines[0] and "not a DICOM file" in lines[0]
