"""NIfTI (.nii, .nii.gz) and NRRD (.nrrd, .nhdr) files -> Scans.

nibabel gives data indexed [i, j, k] with an affine to RAS: the array is transposed to (k, j, i) and the affine kept.
NRRD gives [i, j, k] (pynrrd's default Fortran order) with `space directions` (one column per axis) and
`space origin` in the file's `space` (LPS or RAS): LPS is converted to RAS. 4D files keep their first volume, with a
warning. The series UID of a file is a stable hash of its absolute path.
"""
from __future__ import annotations

import hashlib
import os
from typing import List, Tuple

import numpy as np

from .study import Scan, SeriesProblem, check_volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
LPS_SPACES = {"left-posterior-superior", "lps", "3d-left-handed"}
RAS_SPACES = {"right-anterior-superior", "ras", "3d-right-handed"}


def is_volume_file(path: str) -> bool:
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES + NRRD_SUFFIXES)


def _name(path: str) -> str:
    base = os.path.basename(path)
    for suffix in (".nii.gz",) + NIFTI_SUFFIXES + NRRD_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def _uid(path: str) -> str:
    return "file:" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:16]


def _first_volume(data: np.ndarray, warnings: List[str]) -> np.ndarray:
    """Drops trailing axes beyond 3 (time, echoes, vectors), keeping the first volume."""
    if data.ndim > 3:
        extra = data.shape[3:]
        if int(np.prod(extra)) > 1:
            warnings.append(f"{data.ndim}D image {tuple(data.shape)}: using the first 3D volume")
        data = data.reshape(data.shape[:3] + (-1,))[..., 0]
    while data.ndim < 3:  # 2D files become one slice; check_volume rejects them with a clear reason
        data = data[..., None]
    return data


def read_nifti(path: str, min_slices: int = 3) -> Scan:
    import nibabel as nib
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)  # applies scl_slope / scl_inter
    except Exception as exc:  # truncated gzip, bad header, ...
        raise SeriesProblem(f"unreadable NIfTI file ({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else 'corrupt'})") from None
    warnings: List[str] = []
    data = _first_volume(data, warnings)
    array = np.ascontiguousarray(data.transpose(2, 1, 0))
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise SeriesProblem("invalid affine (zero or non-finite voxel axes)")
    warnings += check_volume(array, min_slices)
    return Scan(array=array, affine=affine, modality=_guess_modality(array), description=_name(path),
                series_uid=_uid(path), source=str(path), warnings=warnings)


def read_nrrd(path: str, min_slices: int = 3) -> Scan:
    import nrrd
    try:
        data, header = nrrd.read(path)
    except Exception as exc:
        raise SeriesProblem(f"unreadable NRRD file ({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else 'corrupt'})") from None
    warnings: List[str] = []
    kinds = [str(k).lower() for k in header.get("kinds", [])]
    directions = header.get("space directions")
    if directions is None:
        raise SeriesProblem("no 'space directions': the image has no geometry")
    directions = np.asarray([d if d is not None and not np.isscalar(d) else [np.nan] * 3 for d in directions],
                            dtype=np.float64)
    spatial = [n for n, d in enumerate(directions) if np.all(np.isfinite(d))]
    if len(spatial) != 3:
        raise SeriesProblem(f"{len(spatial)} spatial axes (kinds {kinds}): not a 3D volume")
    # move non-spatial axes (vector components, time) last, then keep the first volume
    data = np.moveaxis(data, spatial, [0, 1, 2]).astype(np.float32, copy=False)
    data = _first_volume(data, warnings)
    space = str(header.get("space", "left-posterior-superior")).lower()
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = directions[spatial].T
    affine[:3, 3] = origin
    if space in LPS_SPACES:
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    elif space not in RAS_SPACES:
        raise SeriesProblem(f"unsupported space {space!r} (expected LPS or RAS)")
    array = np.ascontiguousarray(data.transpose(2, 1, 0))
    warnings += check_volume(array, min_slices)
    return Scan(array=array, affine=affine, modality=_guess_modality(array), description=_name(path),
                series_uid=_uid(path), source=str(path), warnings=warnings)


def _guess_modality(array: np.ndarray) -> str:
    """NIfTI/NRRD carry no modality: values reaching -1024..-900 (air in Hounsfield units) mean CT, else MR."""
    sample = array[:: max(1, array.shape[0] // 8)]
    return "CT" if float(np.percentile(sample, 1)) < -500 else "MR"


def read_volume(path: str, min_slices: int = 3) -> Scan:
    return read_nrrd(path, min_slices) if str(path).lower().endswith(NRRD_SUFFIXES) else read_nifti(path, min_slices)


def read_volumes(paths, min_slices: int = 3, modality=None) -> Tuple[list, list]:
    from .study import SkippedSeries
    scans, skipped = [], []
    for p in paths:
        try:
            scan = read_volume(p, min_slices)
            if modality:
                scan.modality = modality
            scans.append(scan)
        except SeriesProblem as exc:
            skipped.append(SkippedSeries(str(p), str(exc)))
    return scans, skipped
