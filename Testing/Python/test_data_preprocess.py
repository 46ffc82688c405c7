"""Preprocessing: equal to the HLIP reference's steps, and exactly invertible back to the original voxels."""
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage

from HLIPCore.data import PreprocessConfig, Scan, Study, load_study, preprocess_scan, preprocess_study
from data_fixtures import AXIAL, CORONAL, SAGITTAL, affine_from, blob_volume, rotation, write_series

MEAN, STD = 0.449, 0.226


def _reference_mri(nifti_path, num_slices, transpose_through_plane=False):
    """The reference's MRI path written out from its description: SimpleITK DICOMOrientImageFilter to RPI,
    [through-plane axis first], 0.5/99.5 percentile clip, min-max, pad to square, bilinear 256, nearest-exact depth,
    crop 16:240, normalise."""
    img = sitk.DICOMOrientImageFilter()
    img.SetDesiredCoordinateOrientation("RPI")
    oriented = img.Execute(sitk.ReadImage(str(nifti_path)))
    arr = sitk.GetArrayFromImage(oriented).astype(np.float32)
    if transpose_through_plane:
        sp = np.array(oriented.GetSpacing())[::-1]
        arr = {0: arr, 1: arr.transpose(1, 0, 2), 2: arr.transpose(2, 0, 1)}[int(np.argmax(sp))]
    lo, hi = np.percentile(arr, 0.5), np.percentile(arr, 99.5)
    arr = np.clip(arr, lo, hi)
    arr = (arr - arr.min()) / (arr.max() - arr.min() + 1e-8)
    x = torch.from_numpy(arr)[None]
    h, w = x.shape[2:]
    size = max(h, w)
    left, top = (size - w) // 2, (size - h) // 2
    x = F.pad(x, (left, size - w - left, top, size - h - top))
    x = F.interpolate(x, size=(256, 256), mode="bilinear")
    x = F.interpolate(x[None], size=(num_slices, 256, 256), mode="nearest-exact")[0]
    return (x[:, :, 16:240, 16:240] - MEAN) / STD


@pytest.mark.parametrize("view,through_plane", [("axial", False), ("sagittal", True), ("coronal", True)])
def test_mri_matches_reference_pipeline(tmp_path, view, through_plane):
    dirs = {"axial": AXIAL, "sagittal": SAGITTAL, "coronal": CORONAL}[view]
    aff = affine_from(*dirs, (0.9, 0.9, 3.0), (10.0, -20.0, 30.0))
    rng = np.random.default_rng(0)
    vol_ijk = rng.gamma(2.0, 100.0, size=(40, 30, 12)).astype(np.float32)  # [i, j, k] as nibabel stores it
    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(vol_ijk, aff), path)
    scan = load_study(path).scans[0]
    cfg = PreprocessConfig(mode="mri", num_slices=20, through_plane_first=through_plane)
    ours = preprocess_scan(scan, cfg).tensor
    ref = _reference_mri(path, 20, transpose_through_plane=through_plane)
    assert ours.shape == ref.shape == (1, 20, 224, 224)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)


def test_ct_matches_reference_pipeline():
    """CT-RATE path: trilinear to 3x1x1 mm with int(n * spacing / target), window (HU+1150)/1500, centre pad/crop."""
    rng = np.random.default_rng(1)
    hu = rng.uniform(-1200, 800, size=(50, 90, 70)).astype(np.float32)  # (K, J, I), already RPI: no reorientation
    aff = np.array([[0.8, 0, 0, 0], [0, -0.8, 0, 0], [0, 0, -1.5, 0], [0, 0, 0, 1]])
    scan = Scan(hu, aff, modality="CT")
    cfg = PreprocessConfig(mode="auto", img_size=(24, 64, 48))
    ours = preprocess_scan(scan, cfg)
    size = (int(50 * 1.5 / 3), int(90 * 0.8 / 1), int(70 * 0.8 / 1))
    x = F.interpolate(torch.from_numpy(hu)[None, None], size=size, mode="trilinear")[0]
    x = ((x + 1150) / 1500).clip(0, 1)
    d, h, w = x.shape[1:]
    pads = [max(t - n, 0) for t, n in zip((24, 64, 48), (d, h, w))]
    x = F.pad(x[None], (pads[2] // 2, pads[2] - pads[2] // 2, pads[1] // 2, pads[1] - pads[1] // 2,
                        pads[0] // 2, pads[0] - pads[0] // 2))[0]
    d, h, w = x.shape[1:]
    x = x[:, (d - 24) // 2:(d - 24) // 2 + 24, (h - 64) // 2:(h - 64) // 2 + 64, (w - 48) // 2:(w - 48) // 2 + 48]
    assert ours.mode == "ct"
    torch.testing.assert_close(ours.tensor, (x - MEAN) / STD, atol=1e-5, rtol=0)


def _near(a: np.ndarray, b: np.ndarray, tol: int = 1) -> bool:
    """Every voxel of a is within `tol` voxels of b and vice versa."""
    grow = ndimage.generate_binary_structure(3, 3)
    return bool(np.all(ndimage.binary_dilation(b, grow, tol)[a]) and np.all(ndimage.binary_dilation(a, grow, tol)[b]))


ROUNDTRIP = {
    "axial-dicom": affine_from(*AXIAL, (0.9, 0.9, 3.0), (100.0, 90.0, -20.0)),
    "sagittal-dicom": affine_from(*SAGITTAL, (0.9, 0.9, 3.0), (-20.0, 90.0, 80.0)),
    "coronal-dicom": affine_from(*CORONAL, (0.9, 0.9, 3.0), (100.0, 10.0, 80.0)),
    "oblique-dicom": affine_from(rotation((1, 0, 1), 30) @ np.array(AXIAL[0], float),
                                 rotation((1, 0, 1), 30) @ np.array(AXIAL[1], float), (0.9, 0.9, 3.0), (70, 60, 0)),
    "ras-nifti": affine_from((1, 0, 0), (0, 1, 0), (0.9, 0.9, 3.0), (-90.0, -80.0, -20.0)),
}


@pytest.mark.parametrize("mode", ["mri", "ct", "mri_spacing"])
@pytest.mark.parametrize("name", sorted(ROUNDTRIP))
def test_blob_maps_back_to_the_same_voxels(tmp_path, name, mode):
    """A blob in original voxel space, preprocessed, found on the model grid and mapped back, lands on itself."""
    shape, centre, radius = (24, 60, 50), (9, 33, 20), (2, 5, 4)
    mr = mode != "ct"
    vol = blob_volume(shape, centre, radius, value=2000.0 if mr else 300.0, background=100.0 if mr else -900.0)
    aff = ROUNDTRIP[name]
    if name.endswith("dicom"):
        write_series(tmp_path, vol, aff, modality="MR" if mr else "CT")
    else:
        nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), aff), tmp_path / "v.nii.gz")
    scan = load_study(tmp_path).scans[0]
    np.testing.assert_allclose(scan.affine, aff, atol=1e-4)
    if mode == "mri_spacing":
        cfg = PreprocessConfig(mode="mri", img_size=(32, 128, 128), mri_spacing=(2.5, 0.7, 0.7))
    else:
        cfg = PreprocessConfig(mode=mode, img_size=(48, 224, 224), ct_spacing=(1.0, 0.5, 0.5))
    prepared = preprocess_scan(scan, cfg)
    grid = prepared.tensor[0]
    threshold = (grid.max() + grid.min()) / 2
    on_grid = (grid > threshold).float()
    assert 0 < on_grid.sum() < on_grid.numel() / 10
    back = prepared.record.to_original(on_grid) > 0.5
    assert back.shape == scan.shape
    assert _near(back, scan.array > (scan.array.max() + scan.array.min()) / 2)


@pytest.mark.parametrize("view", ["axial", "sagittal", "coronal"])
def test_mri_spacing_puts_every_acquisition_plane_on_one_millimetre_grid(view):
    """With `mri_spacing` a point of the head lands on the same model voxel whatever plane the series was
    acquired in: the grid is the RPI frame at fixed millimetres, centred on the scan's field of view."""
    dirs = {"axial": AXIAL, "sagittal": SAGITTAL, "coronal": CORONAL}[view]
    spacing = {"axial": (0.8, 0.8, 4.0), "sagittal": (0.9, 0.9, 5.0), "coronal": (1.0, 1.0, 3.0)}[view]
    shape = {"axial": (30, 200, 200), "sagittal": (28, 180, 180), "coronal": (50, 160, 160)}[view]
    aff = affine_from(*dirs, spacing, (0.0, 0.0, 0.0))
    centre_ijk = (np.array(shape[::-1]) - 1) / 2
    aff[:3, 3] -= aff[:3, :3] @ centre_ijk                                  # the field of view centred on RAS 0
    target = np.array([30.0, -20.0, 15.0])                                    # RAS mm: right, posterior, superior
    i, j, k = np.round(np.linalg.inv(aff) @ np.append(target, 1))[:3].astype(int)
    vol = np.full(shape, 100.0, np.float32)
    r = int(round(20 / spacing[0]))                                             # a 40 mm box: more than the 0.5 %
    vol[k - 3:k + 4, j - r:j + r + 1, i - r:i + r + 1] = 2000.0                # of voxels the percentile clip cuts
    cfg = PreprocessConfig(mode="mri", img_size=(32, 128, 128), mri_spacing=(5.0, 1.6, 1.6))
    prepared = preprocess_scan(Scan(vol, aff, "MR"), cfg)
    assert [s.name for s in prepared.record.steps] == ["permute_flip", "resize", "percentile_clip_minmax",
                                                       "center_pad_crop", "normalize"]  # no through-plane step
    grid = prepared.tensor[0].numpy()
    centroid = np.argwhere(grid > (grid.max() + grid.min()) / 2).mean(axis=0)  # (d, h, w)
    ras = prepared.record.grid_affine @ np.array([centroid[2], centroid[1], centroid[0], 1.0])
    box_centre = (aff @ np.array([i, j, k, 1.0]))[:3]                         # the target, on the scan's voxels
    # within a model voxel: 1.6 mm in-plane, half of the 5 mm slices along S-I (z)
    assert np.all(np.abs(ras[:3] - box_centre) <= (1.6, 1.6, 2.6)), (ras[:3], box_centre)
    np.testing.assert_allclose(np.linalg.norm(prepared.record.grid_affine[:3, :3], axis=0), (1.6, 1.6, 5.0),
                               atol=0.1 * min(spacing))                        # (w, h, d) mm: the fixed grid


def test_mri_spacing_is_checked():
    with pytest.raises(ValueError, match="mri_spacing"):
        PreprocessConfig(mode="mri", mri_spacing=(5.0, 0.0, 1.6))


def test_to_original_is_zero_outside_the_cropped_field_of_view():
    scan = Scan(np.ones((10, 300, 300), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), "MR")
    prepared = preprocess_scan(scan, PreprocessConfig(mode="mri"))
    back = prepared.record.to_original(torch.ones(48, 224, 224))
    # 300 -> 256 keeps 224/256 of the field of view: the centre is covered, the borders are not
    assert back[:, 150, 150].min() == 1.0 and back[:, 5, 150].max() == 0.0 and back[:, 150, 5].max() == 0.0
    assert 0.7 < back.mean() < 0.8  # (224/256)^2 = 0.766


@pytest.mark.parametrize("grid", [224, 128, 64])
def test_every_grid_keeps_seven_eighths_of_the_field_of_view(grid):
    """A small model grid sees the same head as the reference's 224 (a fixed resize to 256 would give a 128 grid
    only the central half, with most lesions outside it)."""
    scan = Scan(np.ones((10, 300, 300), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), "MR")
    cfg = PreprocessConfig(mode="mri", img_size=(16, grid, grid))
    back = preprocess_scan(scan, cfg).record.to_original(torch.ones(16, grid, grid))
    assert abs(float(back.mean()) - (7 / 8) ** 2) < 0.02
    assert PreprocessConfig(img_size=(16, grid, grid), resize_hw=300).resize_hw == 300
    with pytest.raises(ValueError, match="smaller than the crop"):
        PreprocessConfig(img_size=(16, grid, grid), resize_hw=grid - 1)


def test_num_slices_sets_the_tensor_depth_and_maps_back():
    scan = Scan(np.random.default_rng(0).random((30, 40, 40), dtype=np.float32), np.eye(4), "MR")
    cfg = PreprocessConfig(mode="mri", img_size=(48, 224, 224), num_slices=144)
    prepared = preprocess_scan(scan, cfg)
    assert prepared.tensor.shape == (1, 144, 224, 224) and cfg.tensor_shape == (144, 224, 224)
    assert prepared.record.to_original(np.ones((144, 224, 224))).shape == (30, 40, 40)
    with pytest.raises(ValueError):
        prepared.record.to_original(np.ones((48, 224, 224)))


def test_every_step_is_recorded_with_its_values():
    arr = np.arange(20 * 30 * 40, dtype=np.float32).reshape(20, 30, 40)
    prepared = preprocess_scan(Scan(arr, np.diag([-1.0, -1.0, 2.0, 1.0]), "MR"), PreprocessConfig())
    names = [s.name for s in prepared.record.steps]
    assert names == ["permute_flip", "percentile_clip_minmax", "pad_to_square", "resize", "resize",
                     "center_pad_crop", "normalize"]
    clip = prepared.record.steps[1].params
    np.testing.assert_allclose(clip["values"], np.percentile(arr, [0.5, 99.5]), rtol=1e-6)
    assert prepared.record.steps[0].params["reason"] == "LPS -> RPI"


def test_grid_affine_places_grid_voxels_on_the_original_positions():
    aff = affine_from(*SAGITTAL, (0.9, 0.8, 3.0), (5.0, 6.0, 7.0))
    scan = Scan(np.zeros((10, 50, 60), np.float32), aff, "MR")
    record = preprocess_scan(scan, PreprocessConfig()).record
    g = np.array([7, 100, 120, 1.0])                       # (d, h, w)
    kji = record.grid_to_original @ g                      # original (k, j, i)
    ras_a = aff @ np.array([kji[2], kji[1], kji[0], 1.0])
    ras_b = record.grid_affine @ np.array([g[2], g[1], g[0], 1.0])
    np.testing.assert_allclose(ras_a, ras_b, atol=1e-6)


def test_study_tensor_stacks_scans_of_different_shapes():
    rng = np.random.default_rng(0)
    study = Study(scans=[Scan(rng.random((12, 40, 50), dtype=np.float32), np.eye(4), "MR"),
                         Scan(rng.random((30, 64, 64), dtype=np.float32) * 1000 - 1000, np.diag([0.7, 0.7, 2, 1]), "CT")])
    prepared = preprocess_study(study, PreprocessConfig(mode="auto"))
    assert prepared.tensor.shape == (2, 1, 48, 224, 224)
    assert [r.original_shape for r in prepared.records] == [(12, 40, 50), (30, 64, 64)]


@pytest.mark.parametrize("kind", ["uniform", "few_values", "mostly_zero"])
def test_fast_percentiles_equal_numpy(kind):
    from HLIPCore.data.transforms import exact_percentiles
    rng = np.random.default_rng(3)
    n = 400_000  # above the size where the bracketing path is used
    data = {"uniform": rng.random(n, dtype=np.float32),
            "few_values": rng.integers(0, 4, n).astype(np.float32),
            "mostly_zero": np.where(rng.random(n) < 0.8, 0, rng.gamma(2, 100, n)).astype(np.float32)}[kind]
    assert exact_percentiles(data, (0.5, 99.5)) == [float(v) for v in np.percentile(data, (0.5, 99.5))]


def test_model_preprocess_config_is_the_models_own_grid_and_names_its_source():
    from HLIPCore.data import model_preprocess_config
    from HLIPCore.errors import ConfigError
    model_cfg = {"vision_cfg": {"img_size": [32, 128, 128]}}
    cfg = model_preprocess_config({"mode": "mri", "mri_spacing": [5, 1.6, 1.6]}, model_cfg, num_slices=40)
    assert cfg.img_size == (32, 128, 128) and cfg.mri_spacing == (5.0, 1.6, 1.6) and cfg.tensor_shape[0] == 40
    with pytest.raises(ConfigError, match=r"^training config: 'preprocess': .*mri_spacing"):
        model_preprocess_config({"mri_spacing": [5, 0]}, model_cfg, source="training config: 'preprocess'")


def test_a_config_read_back_from_json_is_the_same_config_and_finds_the_same_cache(tmp_path):
    """An exported model's config.json holds lists where the defaults are tuples; fine-tuning it on the data its
    training prepared must reuse that study cache, not prepare every study again."""
    import json
    from HLIPCore.data import model_preprocess_config
    from HLIPCore.training.dataset import ManifestEntry, StudyCache
    model_cfg = {"vision_cfg": {"img_size": [32, 128, 128]}}
    named = model_preprocess_config({"mode": "mri", "mri_spacing": (5.0, 1.6, 1.6)}, model_cfg)
    exported = json.loads(json.dumps(vars(named)))          # what final/config.json holds: lists, ints
    exported["ct_window"] = [-1150, 350]
    read_back = model_preprocess_config(exported, model_cfg)
    assert read_back == named and repr(read_back) == repr(named)
    study = tmp_path / "s.nii.gz"
    study.write_bytes(b"x")
    entry = ManifestEntry(study=[study], report="r")
    assert StudyCache(tmp_path, read_back).key(entry) == StudyCache(tmp_path, named).key(entry)
    with pytest.raises(ValueError, match="ct_window"):
        PreprocessConfig(ct_window=(1.0, 2.0, 3.0))
