"""Reading DICOM studies: geometry, grouping, gaps, junk, and real files from pydicom and pydicom-data."""
import glob
import logging
import os
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from HLIPCore.data import LoadOptions, load_study
from HLIPCore.errors import InputError
from data_fixtures import (AXIAL, CORONAL, PATIENT_ID, PATIENT_NAME, SAGITTAL, affine_from, dicomdir_tests_folder,
                           rotation, write_series)

RNG = np.random.default_rng(1)


def _volume(shape=(12, 20, 24)):
    return np.round(RNG.uniform(-500, 1500, size=shape)).astype(np.float32)


GEOMETRIES = {
    "axial": affine_from(*AXIAL, (0.8, 0.9, 2.5), (120.0, 110.0, -40.0)),
    "sagittal": affine_from(*SAGITTAL, (0.7, 0.7, 3.0), (-30.0, 100.0, 90.0)),
    "coronal": affine_from(*CORONAL, (0.9, 0.9, 4.0), (100.0, 20.0, 80.0)),
    "oblique": affine_from(rotation((1, 1, 0), 25) @ np.array(AXIAL[0], float),
                           rotation((1, 1, 0), 25) @ np.array(AXIAL[1], float), (1.0, 1.1, 2.0), (80.0, 60.0, 10.0)),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_series_geometry_and_values_match_what_was_written(tmp_path, name):
    vol, aff = _volume(), GEOMETRIES[name]
    write_series(tmp_path, vol, aff, modality="CT", slope=2.0, intercept=-1024.0, description=name)
    study = load_study(tmp_path)
    (scan,) = study.scans
    # files are named and numbered backwards: the order must come from positions along the normal
    np.testing.assert_allclose(scan.affine, aff, atol=1e-4)
    np.testing.assert_allclose(scan.array, vol, atol=1.0)  # stored as (v + 1024) / 2 rounded
    assert scan.array.dtype == np.float32 and scan.shape == vol.shape
    assert scan.modality == "CT" and scan.description == name
    np.testing.assert_allclose(scan.spacing, np.linalg.norm(aff[:3, :3], axis=0), rtol=1e-5)


def test_axial_dicom_is_lps_in_ras_convention(tmp_path):
    write_series(tmp_path, _volume(), GEOMETRIES["axial"])
    scan = load_study(tmp_path).scans[0]
    # first voxel at the written LPS position (-120, -110, -40) -> RAS (120, 110, -40)
    assert scan.orientation == "LPS"
    ds = pydicom.dcmread(sorted(glob.glob(str(tmp_path / "*.dcm")))[0])
    lps = np.array([float(v) for v in ds.ImagePositionPatient])
    assert np.allclose(scan.affine[:3, 3], [120, 110, -40]) and np.isclose(lps[0], -120)


def test_no_patient_identifiers_in_repr_or_logs(tmp_path, caplog):
    write_series(tmp_path / "a", _volume(), GEOMETRIES["axial"], drop=[5])
    write_series(tmp_path / "b", _volume((1, 8, 8)), GEOMETRIES["axial"], series_number=2)
    with caplog.at_level(logging.DEBUG, logger="HLIPCore.data"):
        study = load_study(tmp_path)
    text = repr(study) + repr(study.scans) + caplog.text + " ".join(map(str, study.skipped))
    assert study.scans[0].warnings and study.skipped  # there was something to log
    for secret in (PATIENT_NAME, "Doe", PATIENT_ID, "19700101", "ACC987"):
        assert secret not in text


def test_missing_slice_is_resampled_with_a_warning(tmp_path):
    vol = _volume((10, 16, 16))
    write_series(tmp_path, vol, GEOMETRIES["axial"], drop=[4])
    scan = load_study(tmp_path).scans[0]
    assert scan.shape == (10, 16, 16)
    assert any("missing slice" in w for w in scan.warnings)
    np.testing.assert_allclose(scan.array[4], (vol[3] + vol[5]) / 2, atol=1.0)  # linear interpolation
    np.testing.assert_allclose(scan.affine, GEOMETRIES["axial"], atol=1e-4)


def test_missing_slice_skips_the_series_when_asked(tmp_path):
    write_series(tmp_path / "gap", _volume((10, 16, 16)), GEOMETRIES["axial"], drop=[4], description="gappy")
    write_series(tmp_path / "ok", _volume((10, 16, 16)), GEOMETRIES["axial"], series_number=2, description="good")
    study = load_study(tmp_path, LoadOptions(on_irregular="skip"))
    assert [s.description for s in study.scans] == ["good"]
    (skip,) = study.skipped
    assert "gappy" in skip.source and "missing slice" in skip.reason


def test_multi_echo_series_is_split_per_echo(tmp_path):
    aff, uid = GEOMETRIES["axial"], "1.2.826.0.1.3680043.8.498.77"
    write_series(tmp_path / "e1", _volume((6, 12, 12)), aff, series_uid=uid, extra={"EchoNumbers": 1, "EchoTime": 10})
    write_series(tmp_path / "e2", _volume((6, 12, 12)) + 5000, aff, series_uid=uid,
                 extra={"EchoNumbers": 2, "EchoTime": 80})
    study = load_study(tmp_path)
    assert sorted(s.description for s in study.scans) == ["T1 AX [echo 1]", "T1 AX [echo 2]"]
    assert all(s.shape == (6, 12, 12) for s in study.scans)
    echo2 = next(s for s in study.scans if "echo 2" in s.description)
    assert echo2.array.min() > 3000  # the two echoes were not interleaved


def test_localizer_and_other_orientation_mixed_into_a_series(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.78"
    write_series(tmp_path / "main", _volume((8, 12, 12)), GEOMETRIES["axial"], series_uid=uid)
    write_series(tmp_path / "loc", _volume((1, 12, 12)), GEOMETRIES["sagittal"], series_uid=uid,
                 extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    write_series(tmp_path / "cor", _volume((4, 10, 10)), GEOMETRIES["coronal"], series_uid=uid)
    study = load_study(tmp_path)
    shapes = sorted(s.shape for s in study.scans)
    assert shapes == [(4, 10, 10), (8, 12, 12)]  # split by geometry, each stacked on its own
    assert any("localizer" in s.reason for s in study.skipped)


def test_junk_is_reported_and_good_series_still_load(tmp_path):
    write_series(tmp_path / "good", _volume((6, 12, 12)), GEOMETRIES["axial"], description="good")
    (tmp_path / "random.dcm").write_bytes(os.urandom(3000))
    (tmp_path / "notes.txt").write_text("not an image")
    good_file = sorted(glob.glob(str(tmp_path / "good" / "*.dcm")))[0]
    data = open(good_file, "rb").read()
    (tmp_path / "truncated.dcm").write_bytes(data[: len(data) // 2])
    sr = pydicom.dcmread(good_file)
    del sr.PixelData
    sr.Modality, sr.SeriesInstanceUID, sr.SeriesDescription = "SR", "1.2.3.4.5", "report"
    sr.save_as(tmp_path / "sr.dcm")
    study = load_study(tmp_path)
    assert [s.description for s in study.scans] == ["good"]
    reasons = {os.path.basename(s.source.split(" ")[0]): s.reason for s in study.skipped}
    assert "not a DICOM file" in reasons["random.dcm"]
    assert "truncated" in reasons["truncated.dcm"] or "unreadable" in reasons["truncated.dcm"]
    assert any("not an image series" in s.reason and "report" in s.source for s in study.skipped)
    assert any("notes.txt" in s.reason for s in study.skipped)


def test_a_truncated_slice_leaves_a_gap_that_is_filled(tmp_path):
    write_series(tmp_path, _volume((8, 12, 12)), GEOMETRIES["axial"])
    victim = sorted(glob.glob(str(tmp_path / "*.dcm")))[3]
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[:-100])
    study = load_study(tmp_path)
    assert study.scans[0].shape == (8, 12, 12)
    assert any(os.path.basename(victim) in s.source for s in study.skipped)


@pytest.mark.parametrize("make", ["empty", "junk_only", "two_d_only", "missing"])
def test_nothing_usable_gives_a_one_line_error_naming_the_input(tmp_path, make):
    target = tmp_path / "study"
    target.mkdir()
    if make == "junk_only":
        (target / "x.dcm").write_bytes(os.urandom(500))
    elif make == "two_d_only":
        shutil.copy(get_testdata_file("693_UNCI.dcm"), target / "ct.dcm")  # one real 512x512 CT slice
    elif make == "missing":
        target = tmp_path / "does-not-exist"
    with pytest.raises(InputError) as err:
        load_study(target)
    message = str(err.value)
    assert "\n" not in message and str(target) in message
    expected = {"empty": "empty", "junk_only": "not a DICOM", "two_d_only": "2D", "missing": "no such"}[make]
    assert expected in message


def test_pydicom_dicomdirtests_study(tmp_path):
    """pydicom's test study: CT/MR/CR series of 2 patients, localizers, a gap, a DICOMDIR and README files."""
    root = dicomdir_tests_folder()
    study = load_study(root)
    (scan,) = study.scans  # the only real volume: 5 axial CT slices, 2.5 mm apart
    assert scan.description == "SmartScore - Gated 0.5 sec" and scan.modality == "CT"
    assert scan.shape == (5, 16, 16) and np.isclose(scan.spacing[2], 2.5) and scan.orientation == "LPS"
    files = sorted(glob.glob(os.path.join(root, "98892001", "CT5N", "*")))
    datasets = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    expected = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets])
    np.testing.assert_array_equal(scan.array, expected)  # ascending z along the normal (0,0,1)
    reasons = " | ".join(f"{s.source}: {s.reason}" for s in study.skipped)
    assert "Routine Brain" in reasons and "slice gap" in reasons  # 4 slices, one 200 mm away from the rest
    assert "Cervical LAT" in reasons and "2D" in reasons
    assert "localizer" in reasons
    # the DICOMDIR index finds the same
    via_dicomdir = load_study(os.path.join(root, "DICOMDIR"))
    assert [s.description for s in via_dicomdir.scans] == [scan.description]


def test_real_512_ct_slices_stack_with_rescale(tmp_path):
    """pydicom-data's 512x512 CT, copied as 3 slices 5 mm apart: values are pixel_array * slope + intercept."""
    src = pydicom.dcmread(get_testdata_file("693_UNCI.dcm"))
    uid = pydicom.uid.generate_uid()
    for k in range(3):
        ds = pydicom.dcmread(get_testdata_file("693_UNCI.dcm"))
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, pydicom.uid.generate_uid()
        ds.ImagePositionPatient = [float(v) for v in src.ImagePositionPatient[:2]] + [float(src.ImagePositionPatient[2]) + 5 * k]
        ds.save_as(tmp_path / f"s{k}.dcm")
    (scan,) = load_study(tmp_path).scans
    expected = src.pixel_array * float(src.RescaleSlope) + float(src.RescaleIntercept)
    assert scan.shape == (3, 512, 512)
    np.testing.assert_array_equal(scan.array[1], expected)
    assert np.isclose(scan.spacing[2], 5.0)


def test_real_enhanced_multiframe_mr():
    """pydicom-data's enhanced MR (10 frames of 64x64, functional groups stripped): read with a clear warning."""
    path = get_testdata_file("emri_small.dcm")
    (scan,) = load_study(path).scans
    ds = pydicom.dcmread(path)
    assert scan.shape == (10, 64, 64) and scan.modality == "MR"
    np.testing.assert_array_equal(scan.array, ds.pixel_array.astype(np.float32))
    assert any("no patient position" in w for w in scan.warnings)
    assert np.isclose(scan.spacing[2], 1.2)  # SpacingBetweenSlices


def test_enhanced_multiframe_with_functional_groups(tmp_path):
    """A multi-frame file built from pydicom-data's enhanced MR with per-frame positions (descending order)."""
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def item(**kw):
        d = Dataset()
        for k, v in kw.items():
            setattr(d, k, v)
        return d
    shared = item(PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])]),
                  PixelMeasuresSequence=Sequence([item(PixelSpacing=[0.5, 0.5], SliceThickness=2)]),
                  PixelValueTransformationSequence=Sequence([item(RescaleSlope=1, RescaleIntercept=-100)]))
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [item(PlanePositionSequence=Sequence([item(ImagePositionPatient=[0, 0, 18 - 2 * f])])) for f in range(10)])
    ds.save_as(tmp_path / "mf.dcm")
    (scan,) = load_study(tmp_path).scans
    # frames were stored top-down: the reader sorts them bottom-up along the normal
    np.testing.assert_array_equal(scan.array, ds.pixel_array[::-1].astype(np.float32) - 100)
    np.testing.assert_allclose(scan.affine[:3, 3], [0, 0, 0])
    np.testing.assert_allclose(scan.spacing, (0.5, 0.5, 2.0))
    assert not scan.warnings


def test_a_skipped_series_is_said_once(tmp_path, caplog):
    """Nothing usable: the InputError names the reason and no warning repeats it (the CLI printed both). A study
    that goes on without a series warns about it, naming the series."""
    only_2d = tmp_path / "only_2d"
    only_2d.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), only_2d)
    with caplog.at_level(logging.WARNING, logger="HLIPCore.data"), pytest.raises(InputError, match="2D image"):
        load_study(only_2d)
    assert not caplog.records, caplog.text
    write_series(tmp_path / "volume", _volume(), GEOMETRIES["axial"], series_number=2)
    with caplog.at_level(logging.WARNING, logger="HLIPCore.data"):
        study = load_study(tmp_path)
    assert len(study.scans) == 1 and any("2D image" in r.getMessage() for r in caplog.records), caplog.text
