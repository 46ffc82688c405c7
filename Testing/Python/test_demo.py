"""`hlip demo` end to end in a child process: phantom DICOM study -> analysis -> report, maps, overview."""
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_hlip_demo_runs_the_whole_chain(tmp_path):
    done = subprocess.run([sys.executable, "-m", "HLIPCore.cli.main", "demo", "--out", str(tmp_path / "demo")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    from HLIPCore.catalog import load_catalog
    if not any(e.id == "hlip-demo" for e in load_catalog()):
        assert "RANDOM weights" in done.stdout  # the stand-in never passes for a trained model
    else:  # the bundled model, on the fixed demo glioma (seed never trained on), with the method users get
        assert "RANDOM" not in done.stdout
        assert "5-way answer: Glioma - correct" in done.stdout, done.stdout
    assert "5-way answer:" in done.stdout and "(truth: glioma)" in done.stdout
    result = tmp_path / "demo" / "result"
    report = json.loads((result / "report.json").read_text())
    assert 2 <= len(report["scans"]) <= 5 and report["skipped"]  # the localizer/junk series are reported
    from HLIPCore.data import load_study
    scans = {s.description: s for s in load_study(tmp_path / "demo" / "study" / "dicom").scans}
    for entry in report["maps"]:
        scan = scans[report["scans"][entry["scan_index"]]["description"]]
        image = nib.load(result / entry["file"])
        assert image.shape == tuple(reversed(scan.shape))
        np.testing.assert_allclose(image.affine, scan.affine, atol=1e-4)
    assert (result / "overview.png").stat().st_size > 10_000


def test_bundled_demo_model_matches_its_catalog_entry():
    """The catalog's checksum is that of the shipped weights, and the folder stays within the size budget."""
    import hashlib
    from HLIPCore.catalog import load_catalog
    entry = next((e for e in load_catalog() if e.id == "hlip-demo"), None)
    if entry is None:
        pytest.skip("no demo model bundled")
    folder = entry.local_path()
    assert folder is not None and (folder / "README.md").is_file()  # the model card
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == entry.sha256
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 30 * 2 ** 20


def test_demo_says_where_the_map_peak_is(tmp_path):
    """'yes' in the lesion, 'in the oedema', else the distance in mm on the scan's own voxel spacing."""
    from HLIPCore.cli.cmd_demo import pointing_game
    mask = np.zeros((6, 10, 12), np.uint8)           # [k, j, i], as the phantom masks
    mask[2:4, 4:6, 2:4] = 1                          # lesion core at i 2-3
    mask[2:4, 4:6, 4:6] = 2                          # oedema at i 4-5
    affine = np.diag([2.0, 1.0, 5.0, 1.0])           # i 2 mm, j 1 mm, k 5 mm
    (tmp_path / "maps").mkdir()
    report = {"top": {"disease": "Glioma"},
              "maps": [{"task": "disease", "class": "Glioma", "scan_index": 0, "file": "maps/a.nii.gz"},
                       {"task": "disease", "class": "Stroke", "scan_index": 0, "file": "maps/b.nii.gz"}]}
    nib.save(nib.Nifti1Image(np.ones((12, 10, 6), np.float32), affine), tmp_path / "maps" / "b.nii.gz")
    for i, expected in ((3, "yes"), (5, "no (in the oedema around it)"), (9, "no (12.0 mm from it)")):
        data = np.zeros((12, 10, 6), np.float32)     # [i, j, k]
        data[i, 4, 2] = 1.0
        nib.save(nib.Nifti1Image(data, affine), tmp_path / "maps" / "a.nii.gz")
        assert pointing_game(report, tmp_path, [mask]) == expected
    assert pointing_game(report, tmp_path, [None]) == "no (no lesion mask for that scan)"
