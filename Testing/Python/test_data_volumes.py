"""NIfTI and NRRD files: array order, affine convention, bad files; checked against SimpleITK's reader."""
import gzip
import logging

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from HLIPCore.data import LoadOptions, load_study
from HLIPCore.errors import InputError


def _sitk_ijk_to_ras(img) -> np.ndarray:
    """IJK->RAS from SimpleITK's LPS origin/spacing/direction: an independent reading of the same file."""
    d = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
    a = np.eye(4)
    a[:3, :3], a[:3, 3] = d, img.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ a


def test_nifti_array_is_kji_and_affine_is_kept(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(20, 16, 8)).astype(np.float32)  # [i, j, k]
    aff = np.array([[0, 0, -3.0, 50], [0.9, 0, 0, -20], [0, -0.9, 0, 10], [0, 0, 0, 1]])
    path = tmp_path / "flair.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), path)
    (scan,) = load_study(path).scans
    np.testing.assert_array_equal(scan.array, data.transpose(2, 1, 0))
    np.testing.assert_allclose(scan.affine, aff)
    assert scan.description == "flair" and scan.orientation == "".join(nib.aff2axcodes(aff))
    img = sitk.ReadImage(str(path))
    np.testing.assert_allclose(scan.affine, _sitk_ijk_to_ras(img), atol=1e-5)
    np.testing.assert_array_equal(scan.array, sitk.GetArrayFromImage(img))  # Slicer/SimpleITK (k, j, i) order


@pytest.mark.parametrize("space", ["left-posterior-superior", "right-anterior-superior"])
def test_nrrd_geometry_in_either_space(tmp_path, space):
    rng = np.random.default_rng(1)
    data = rng.normal(size=(12, 10, 6)).astype(np.float32)
    header = {"space": space, "space directions": np.array([[0.8, 0.1, 0], [0, 0.9, 0], [0, 0, 2.5]]),
              "space origin": np.array([-10.0, 20.0, 5.0]), "kinds": ["domain"] * 3}
    path = tmp_path / "vol.nrrd"
    nrrd.write(str(path), data, header)
    (scan,) = load_study(path).scans
    np.testing.assert_array_equal(scan.array, data.transpose(2, 1, 0))
    if space.startswith("left"):
        np.testing.assert_allclose(scan.affine, _sitk_ijk_to_ras(sitk.ReadImage(str(path))), atol=1e-6)
        assert np.allclose(scan.affine[:3, 3], [10.0, -20.0, 5.0])
    else:
        assert np.allclose(scan.affine[:3, 3], [-10.0, 20.0, 5.0]) and np.isclose(scan.affine[0, 0], 0.8)


def test_four_d_nifti_uses_first_volume_with_a_warning(tmp_path):
    data = np.zeros((8, 8, 5, 3), np.float32)
    data[..., 1] = 7
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "dwi.nii")
    (scan,) = load_study(tmp_path / "dwi.nii").scans
    assert scan.shape == (5, 8, 8) and scan.array.max() == 0 and "first 3D volume" in scan.warnings[0]


def test_nan_and_inf_become_zero_with_a_warning(tmp_path, caplog):
    data = np.ones((8, 8, 6), np.float32)
    data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    (scan,) = load_study(tmp_path / "nan.nii.gz").scans
    assert np.isfinite(scan.array).all() and scan.array[0, 0, 0] == 0
    assert any("2 NaN/infinite" in w for w in scan.warnings)


def test_modality_guess_and_override(tmp_path):
    ct = np.full((10, 10, 5), -1000.0, np.float32)
    nib.save(nib.Nifti1Image(ct, np.eye(4)), tmp_path / "ct.nii.gz")
    assert load_study(tmp_path / "ct.nii.gz").scans[0].modality == "CT"
    assert load_study(tmp_path / "ct.nii.gz", LoadOptions(volume_modality="MR")).scans[0].modality == "MR"


@pytest.mark.parametrize("problem", ["truncated", "two_d", "all_nan"])
def test_bad_volume_files_give_one_line_errors(tmp_path, problem):
    path = tmp_path / f"{problem}.nii.gz"
    if problem == "truncated":
        nib.save(nib.Nifti1Image(np.ones((32, 32, 16), np.float32), np.eye(4)), path)
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif problem == "two_d":
        nib.save(nib.Nifti1Image(np.ones((32, 32), np.float32), np.eye(4)), path)
    else:
        nib.save(nib.Nifti1Image(np.full((8, 8, 8), np.nan, np.float32), np.eye(4)), path)
    with pytest.raises(InputError) as err:
        load_study(path)
    msg = str(err.value)
    assert "\n" not in msg and path.name in msg
    assert {"truncated": "unreadable NIfTI", "two_d": "2D", "all_nan": "NaN"}[problem] in msg


def test_bad_file_next_to_good_ones_is_skipped(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((16, 16, 8), np.float32), np.eye(4)), tmp_path / "good.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(gzip.compress(b"\x00" * 100))
    study = load_study([tmp_path / "good.nii.gz", tmp_path / "broken.nii.gz"])
    assert [s.description for s in study.scans] == ["good"]
    assert "broken.nii.gz" in study.skipped[0].source
