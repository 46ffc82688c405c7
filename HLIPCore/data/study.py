"""A study as loaded for HLIP: its image scans, and what was skipped and why.

Conventions (the same as 3D Slicer):
- `Scan.array` is shaped (K, J, I) = (slices, rows, columns), like `slicer.util.arrayFromVolume`.
- `Scan.affine` is a 4x4 float64 matrix mapping (i, j, k, 1) voxel indices (column, row, slice) to RAS millimetres,
  like Slicer's IJKToRAS. DICOM's LPS patient coordinates are converted (x and y negated).
Nothing identifying the patient is kept: no name, ID, birth date or accession number.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np


@dataclass
class SkippedSeries:
    """A series or file that was not used, with a one-line reason."""
    source: str
    reason: str
    series_uid: str = ""  # for callers that match skipped scans back to their inputs; never printed or reported

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


@dataclass(repr=False)
class Scan:
    """One 3D image volume. `array` is float32 (K, J, I); `affine` maps (i, j, k, 1) to RAS mm (Slicer's IJKToRAS)."""
    array: np.ndarray
    affine: np.ndarray
    modality: str = "OT"
    description: str = ""
    series_uid: str = ""
    source: Union[str, List[str]] = ""
    warnings: List[str] = field(default_factory=list)

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(K, J, I) = (slices, rows, columns), the shape of `array`."""
        return tuple(int(n) for n in self.array.shape)

    @property
    def spacing(self) -> Tuple[float, float, float]:
        """Voxel size in mm in (i, j, k) order: column spacing, row spacing, slice spacing."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def orientation(self) -> str:
        """Axis codes of (i, j, k), the direction each index increases towards, e.g. 'LPS' for axial DICOM."""
        import nibabel.orientations as nio
        return "".join(nio.aff2axcodes(self.affine))

    @property
    def num_files(self) -> int:
        return len(self.source) if isinstance(self.source, (list, tuple)) else 1

    def __repr__(self) -> str:  # deliberately nothing but technical fields: no patient identifiers, no paths
        sp = ", ".join(f"{v:.3g}" for v in self.spacing)
        return (f"Scan(modality={self.modality!r}, description={self.description!r}, shape={self.shape}, "
                f"spacing=({sp}), orientation={self.orientation!r}, warnings={len(self.warnings)})")


@dataclass(repr=False)
class Study:
    """The usable scans of a study and the series that were skipped."""
    scans: List[Scan] = field(default_factory=list)
    skipped: List[SkippedSeries] = field(default_factory=list)

    @property
    def modality(self) -> str:
        """The most frequent modality among the scans ('' when there are none); ties go to the first scan's."""
        if not self.scans:
            return ""
        counts = collections.Counter(s.modality for s in self.scans)
        best = max(counts.values())
        return next(s.modality for s in self.scans if counts[s.modality] == best)

    def __len__(self) -> int:
        return len(self.scans)

    def __iter__(self):
        return iter(self.scans)

    def __repr__(self) -> str:
        return f"Study(modality={self.modality!r}, scans={self.scans!r}, skipped={len(self.skipped)})"


def describe_sources(paths: Sequence[str]) -> str:
    """A short name for a group of files: the folder and the first file name, with a count."""
    import os
    if not paths:
        return "?"
    if len(paths) == 1:
        return str(paths[0])
    return f"{os.path.dirname(paths[0]) or '.'} ({len(paths)} files)"


@dataclass
class LoadOptions:
    """How `load_study` treats imperfect series.

    on_irregular: what to do with a series whose slices are unevenly spaced or have a gap (missing slices):
        'resample' (default) interpolates linearly onto a regular grid at the median spacing and warns;
        'skip' skips the series; 'keep' keeps the slices as they are (the affine then uses the median spacing).
    max_missing_slices: a gap that would need more interpolated slices than this skips the series even in 'resample'.
    min_slices: series with fewer images are 2D (radiographs, localizers, single slices) and skipped.
    spacing_tolerance_mm / spacing_tolerance_rel: slice spacing differences below abs + rel * median are regular.
    workers: threads that read DICOM files (1 = serial).
    volume_modality: modality given to NIfTI/NRRD scans, which do not store one; None guesses from the
        intensities (air below -500 means CT Hounsfield units, otherwise MR).
    """
    on_irregular: str = "resample"
    max_missing_slices: int = 4
    min_slices: int = 3
    spacing_tolerance_mm: float = 0.01
    spacing_tolerance_rel: float = 0.01
    workers: int = 2
    volume_modality: Optional[str] = None

    def __post_init__(self):
        if self.on_irregular not in ("resample", "skip", "keep"):
            raise ValueError(f"on_irregular must be 'resample', 'skip' or 'keep', not {self.on_irregular!r}")


class SeriesProblem(Exception):
    """Internal: a series (or file) cannot be used; the message becomes a SkippedSeries reason."""


def check_volume(array: np.ndarray, min_slices: int) -> List[str]:
    """Checks a (K, J, I) float32 array in place: 2D or empty raises SeriesProblem; NaN/inf become 0 with a warning."""
    if array.ndim != 3 or min(array.shape) < 1:
        raise SeriesProblem(f"not a 3D volume (shape {tuple(array.shape)})")
    if min(array.shape) < min_slices:  # one slice, or one row/column: a 2D image stored as 3D
        raise SeriesProblem(f"only {min(array.shape)} slice(s) (shape {tuple(array.shape)}): a 2D image, not a volume")
    warnings = []
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        if bad == array.size:
            raise SeriesProblem("every voxel is NaN or infinite")
        array[~finite] = 0.0
        warnings.append(f"{bad} NaN/infinite voxel(s) set to 0")
    return warnings
