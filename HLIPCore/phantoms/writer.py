"""Phantom studies on disk: DICOM series written the way scanners write them, NIfTI volumes, masks and reports.

Layout of one study folder:
    dicom/S0002_t1_se_tra/IM0001.dcm ...    one file per slice, LPS geometry, one folder per series
    nifti/02_T1_axial.nii.gz ...            each image series on its own grid (RAS affine)
    masks/02_T1_axial_mask.nii.gz ...       ground truth on each series' grid; masks/world_mask.nii.gz in MNI space
    report.txt
Everything is a pure function of the phantom: UIDs are hashed from the study id and seed, dates from the seed,
and gzip headers carry no time stamp, so the same seed gives byte-identical files.
"""
from __future__ import annotations

import datetime
import re
import shutil
from pathlib import Path
from typing import Dict, Iterable, List

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .study import PhantomSeries, PhantomStudy

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
MANUFACTURER = {"siemens": "SIEMENS", "ge": "GE MEDICAL SYSTEMS", "philips": "Philips Medical Systems"}
# (repetition time, echo time, inversion time) ms: plausible values so headers look like the real thing
TIMING = {"T1": (550.0, 10.0, None), "T1c": (550.0, 10.0, None), "T2": (4500.0, 100.0, None),
          "FLAIR": (9000.0, 120.0, 2500.0), "DWI": (5200.0, 85.0, None), "localizer": (8.6, 4.0, None)}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()[:40] or "series"


class _Uids:
    """Deterministic UIDs: a hash of the study's identity and what the UID names."""

    def __init__(self, study: PhantomStudy):
        self.base = f"hlip-phantom/{study.study_id}/{study.seed}"

    def __call__(self, *parts) -> str:
        return generate_uid(entropy_srcs=[self.base, *map(str, parts)])


def _study_dataset(study: PhantomStudy, uids: _Uids) -> Dict:
    """Attributes every file of the study shares. Nothing identifies a person: the patient is obviously synthetic."""
    date = (datetime.date(2000, 1, 1) + datetime.timedelta(days=study.seed % 7300)).strftime("%Y%m%d")
    return {
        "PatientName": study.patient_name, "PatientID": study.patient_name.replace("^", "-"),
        "PatientBirthDate": "", "PatientSex": "O", "PatientIdentityRemoved": "YES",
        "StudyInstanceUID": uids("study"), "FrameOfReferenceUID": uids("frame"), "StudyID": "1",
        "StudyDate": date, "StudyTime": "120000", "SeriesDate": date, "AccessionNumber": "",
        "ReferringPhysicianName": "", "StudyDescription": "MRI BRAIN (SYNTHETIC PHANTOM)",
        "Manufacturer": MANUFACTURER[study.vendor], "ManufacturerModelName": "HLIP phantom generator",
        "InstitutionName": "SYNTHETIC", "BodyPartExamined": "HEAD", "PatientPosition": "HFS",
        "MagneticFieldStrength": "3" if study.seed % 2 else "1.5",
    }


def _new_file(path: Path, sop_class: str, sop_uid: str, shared: Dict) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    for key, value in shared.items():
        setattr(ds, key, value)
    return ds


def _file_name(vendor: str, series_number: int, k: int) -> str:
    if vendor == "ge":
        return f"IM-{series_number:04d}-{k + 1:04d}.dcm"
    if vendor == "philips":
        return f"IM_{k + 1:04d}"   # Philips exports often have no extension
    return f"IM{k + 1:04d}.dcm"


def _ds(value: float) -> str:
    """A DS value (at most 16 characters) with enough digits for 1e-6 mm geometry."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _write_stack(folder: Path, study: PhantomStudy, series: PhantomSeries, uids: _Uids, shared: Dict,
                 array: np.ndarray, affine: np.ndarray, image_type: List[str], first_instance: int = 1,
                 part: int = 0) -> List[str]:
    """Writes a (K, J, I) stack as single-frame MR images; returns the file names."""
    lps = LPS @ affine
    row, col = lps[:3, 0], lps[:3, 1]
    si, sj = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    normal = np.cross(row / si, col / sj)
    stored = np.round(array / series.slope)
    stored = stored.astype(np.uint16 if series.unsigned else np.int16)
    tr, te, ti = TIMING.get(series.sequence, TIMING["localizer"])
    lo, hi = np.percentile(array, [1, 99.5]) if array.size else (0, 1)
    ds = _new_file(folder / "x", MR_STORAGE, "", shared)
    ds.Modality, ds.SeriesDescription, ds.ProtocolName = "MR", series.description, series.description
    ds.SeriesInstanceUID, ds.SeriesNumber = uids("series", series.series_number), series.series_number
    ds.ImageType = image_type
    ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([row / si, col / sj])]
    ds.PixelSpacing = [_ds(sj), _ds(si)]
    ds.SliceThickness = _ds(series.geometry.slice_thickness if series.geometry else np.linalg.norm(lps[:3, 2]))
    ds.SpacingBetweenSlices = _ds(float(np.linalg.norm(lps[:3, 2])))
    ds.RepetitionTime, ds.EchoTime, ds.EchoNumbers = _ds(tr), _ds(te), 1
    if ti:
        ds.InversionTime = _ds(ti)
    if series.sequence == "DWI":
        ds.DiffusionBValue = 1000.0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(series.slope), "0", "US"
    ds.WindowCenter, ds.WindowWidth = _ds((lo + hi) / 2), _ds(max(hi - lo, 1.0))
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = int(array.shape[1]), int(array.shape[2])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0 if series.unsigned else 1
    names = []
    count = array.shape[0]
    backwards = series.series_number % 2 == 1   # scanners number slices either way: readers must sort by position
    for k in range(count):
        n = first_instance + (count - 1 - k if backwards else k)
        name = _file_name(study.vendor, series.series_number, part * 1000 + n - 1)
        uid = uids("image", series.series_number, part, k)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = n
        position = lps @ np.array([0.0, 0.0, k, 1.0])
        ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
        ds.SliceLocation = _ds(float(position[:3] @ normal))
        ds.PixelData = stored[k].tobytes()
        ds.save_as(folder / name, enforce_file_format=True)
        names.append(name)
    return names


def _write_junk(folder: Path, study: PhantomStudy, series: PhantomSeries, uids: _Uids, shared: Dict) -> None:
    if series.array is None:  # a vendor's protocol object: a DICOM file without pixels
        ds = _new_file(folder, SIEMENS_CSA_NON_IMAGE, uids("junk"), shared)
        ds.Modality, ds.SeriesDescription = "MR", series.description
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = uids("series", series.series_number), \
            series.series_number, 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER", "CSAPARALLEL"]
        ds.ImageComments = "synthetic protocol report object (no image)"
        ds.save_as(folder / "IM0001.dcm", enforce_file_format=True)
        return
    ds = _new_file(folder, SECONDARY_CAPTURE, uids("junk"), shared)  # a screen save: one 2D picture, no geometry
    ds.Modality, ds.SeriesDescription, ds.ConversionType = "OT", series.description, "WSD"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = uids("series", series.series_number), \
        series.series_number, 1
    ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    pixels = np.clip(series.array[0], 0, 32767).astype(np.int16)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = pixels.tobytes()
    ds.save_as(folder / "IM0001.dcm", enforce_file_format=True)


def write_dicom(study: PhantomStudy, folder: Path) -> List[str]:
    """Every series of the study as DICOM files under `folder`; returns the series folders."""
    uids = _Uids(study)
    shared = _study_dataset(study, uids)
    written = []
    for series in study.series:
        sub = folder / f"S{series.series_number:04d}_{slug(series.description)}"
        sub.mkdir(parents=True, exist_ok=True)
        if series.kind == "image":
            image_type = ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"] if series.sequence == "DWI" \
                else ["ORIGINAL", "PRIMARY", "M", "ND"]
            _write_stack(sub, study, series, uids, shared, series.array, series.affine, image_type)
        elif series.kind == "localizer":
            instance = 1
            for part, (array, affine) in enumerate(series.parts):
                _write_stack(sub, study, series, uids, shared, array, affine, ["ORIGINAL", "PRIMARY", "LOCALIZER"],
                             first_instance=instance, part=part)
                instance += array.shape[0]
        else:
            _write_junk(sub, study, series, uids, shared)
        written.append(str(sub))
    return written


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, slope: float = 1.0,
                dtype=np.int16) -> None:
    """(K, J, I) array -> NIfTI [i, j, k] with the RAS affine; integer storage with the series' rescale slope."""
    import nibabel as nib
    stored = np.round(array / slope).astype(dtype)
    img = nib.Nifti1Image(np.ascontiguousarray(stored.transpose(2, 1, 0)), affine)
    img.header.set_slope_inter(slope, 0.0)
    img.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    nib.save(img, str(path))


def write_study(study: PhantomStudy, out_dir, formats: Iterable[str] = ("dicom", "nifti")) -> Dict:
    """Writes the study under `out_dir` (replacing what an earlier run left there). Returns the paths written:
    {"dicom": folder or None, "nifti": [...], "masks": [...], "world_mask": path, "report": path}."""
    formats = set(formats)
    unknown = formats - {"dicom", "nifti"}
    if unknown or not formats:
        raise ValueError(f"formats must be 'dicom' and/or 'nifti', not {sorted(unknown) or 'nothing'}")
    out = Path(out_dir)
    if out.exists():
        for name in ("dicom", "nifti", "masks"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    paths: Dict = {"dicom": None, "nifti": [], "masks": []}
    if "dicom" in formats:
        write_dicom(study, out / "dicom")
        paths["dicom"] = str(out / "dicom")
    (out / "masks").mkdir(exist_ok=True)
    if "nifti" in formats:
        (out / "nifti").mkdir(exist_ok=True)
    for n, series in enumerate(study.images, start=1):
        stem = f"{n:02d}_{series.sequence}_{series.geometry.plane}"
        if "nifti" in formats:
            path = out / "nifti" / f"{stem}.nii.gz"
            _save_nifti(series.array, series.affine, path, series.slope, np.uint16 if series.unsigned else np.int16)
            paths["nifti"].append(str(path))
        mask_path = out / "masks" / f"{stem}_mask.nii.gz"
        _save_nifti(series.mask, series.affine, mask_path, dtype=np.uint8)
        paths["masks"].append(str(mask_path))
    world = out / "masks" / "world_mask.nii.gz"
    _save_nifti(study.world_mask, study.world_affine, world, dtype=np.uint8)
    paths["world_mask"] = str(world)
    (out / "report.txt").write_text(study.report + "\n")
    paths["report"] = str(out / "report.txt")
    return paths
