"""Test helpers for the study-reading tests: DICOM series written with pydicom, with known geometry.

Geometry is given as a RAS affine (i, j, k, 1) -> mm, the convention of HLIPCore.data.Scan; the writer converts it
to DICOM's LPS ImagePositionPatient / ImageOrientationPatient / PixelSpacing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-123456"


def affine_from(row_dir, col_dir, spacing, origin) -> np.ndarray:
    """RAS affine whose i axis runs along row_dir, j along col_dir (normal = row x col), spacing (si, sj, sk)."""
    r = np.asarray(row_dir, float) / np.linalg.norm(row_dir)
    c = np.asarray(col_dir, float) / np.linalg.norm(col_dir)
    n = np.cross(r, c)
    a = np.eye(4)
    a[:3, 0], a[:3, 1], a[:3, 2] = r * spacing[0], c * spacing[1], n * spacing[2]
    a[:3, 3] = origin
    return a


def rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


# RAS directions of (i, j): axial as scanners store it (i towards L, j towards P), sagittal, coronal
AXIAL = ((-1, 0, 0), (0, -1, 0))
SAGITTAL = ((0, -1, 0), (0, 0, -1))
CORONAL = ((-1, 0, 0), (0, 0, -1))


def write_series(folder, array: np.ndarray, affine: np.ndarray, modality: str = "MR", description: str = "T1 AX",
                 series_number: int = 1, slope: float = 1.0, intercept: float = 0.0, drop: Iterable[int] = (),
                 series_uid: Optional[str] = None, study_uid: Optional[str] = None, extra: Optional[Dict] = None,
                 per_slice: Optional[Dict[int, Dict]] = None, reverse_instances: bool = True) -> str:
    """Writes (K, J, I) `array` as single-frame files (stored value = (array - intercept) / slope as int16).

    Slices listed in `drop` are not written (a missing slice). Instance numbers run backwards by default so the
    reader cannot rely on them. `extra` sets attributes on every file, `per_slice[k]` on slice k only.
    Returns the series UID.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or "1.2.826.0.1.3680043.8.498.1"
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    r, c = lps[:3, 0], lps[:3, 1]
    si, sj = np.linalg.norm(r), np.linalg.norm(c)
    stored = np.round((array - intercept) / slope).astype(np.int16)
    k_count = array.shape[0]
    for k in range(k_count):
        if k in set(drop):
            continue
        meta = FileMetaDataset()
        sop_class = CT_STORAGE if modality == "CT" else MR_STORAGE
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{series_number:03d}_{k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber = PATIENT_NAME, PATIENT_ID, "19700101", "ACC987"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = study_uid + ".1"
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber = modality, description, series_number
        ds.InstanceNumber = (k_count - k) if reverse_instances else (k + 1)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        pos = lps @ np.array([0, 0, k, 1.0])
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos[:3]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([r / si, c / sj])]
        ds.PixelSpacing = [f"{sj:.6f}", f"{si:.6f}"]
        ds.SliceThickness = f"{np.linalg.norm(lps[:3, 2]):.6f}"
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = array.shape[1], array.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        for key, value in ((per_slice or {}).get(k) or {}).items():
            setattr(ds, key, value)
        ds.PixelData = stored[k].tobytes()
        ds.save_as(ds.filename, enforce_file_format=True)
    return series_uid


def blob_volume(shape, centre, radius, value=1000.0, background=100.0, seed=0) -> np.ndarray:
    """(K, J, I) volume: mild noise around `background` and a solid box of half-size `radius` at `centre`."""
    rng = np.random.default_rng(seed)
    a = background + rng.normal(0, 5, size=shape).astype(np.float32)
    sl = tuple(slice(c - r, c + r + 1) for c, r in zip(centre, radius))
    a[sl] = value
    return a.astype(np.float32)


def dicomdir_tests_folder() -> str:
    """pydicom's own test study: 2 patients with CT, MR and CR series, localizers, a DICOMDIR and a README."""
    return os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files", "dicomdirtests")
