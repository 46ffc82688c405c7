"""`load_study`: a folder (searched recursively), a DICOMDIR, a NIfTI/NRRD file or a list of paths -> Study.

Per-series problems become `Study.skipped` entries and `HLIPCore.data` log warnings; `InputError` is raised only
when nothing usable is found. Messages name the file or series and the problem, never the patient.
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Sequence, Union

from ..errors import InputError
from .dicom import dicomdir_files, read_dicom
from .study import LoadOptions, SkippedSeries, Study
from .volumes import is_volume_file, read_volumes

log = logging.getLogger("HLIPCore.data")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
# files that are certainly not images: not worth opening, and not worth listing one by one
IGNORED_SUFFIXES = (".txt", ".json", ".xml", ".csv", ".md", ".html", ".pdf", ".jpg", ".png", ".zip", ".py", ".ini")

Source = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def _walk(folder: str) -> List[str]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(os.path.join(root, n) for n in sorted(names) if not n.startswith("."))
    return files


def _expand(source: Source) -> List[str]:
    if isinstance(source, (str, os.PathLike)):
        items = [os.fspath(source)]
    else:
        items = [os.fspath(p) for p in source]
    if not items:
        raise InputError("no input: the list of files is empty")
    files = []
    for item in items:
        if os.path.isdir(item):
            files.extend(_walk(item))
        elif os.path.isfile(item):
            if os.path.basename(item).upper() == "DICOMDIR":
                try:
                    files.extend(dicomdir_files(item))
                    continue
                except Exception as exc:  # a broken index: read the folder it sits in instead
                    log.warning("%s: DICOMDIR cannot be used (%s); reading its folder", item, type(exc).__name__)
                    files.extend(_walk(os.path.dirname(item) or "."))
                    continue
            files.append(item)
        else:
            raise InputError(f"{item}: no such file or folder")
    return list(dict.fromkeys(files))  # drop duplicates, keep order


def load_study(source: Source, options: Optional[LoadOptions] = None) -> Study:
    """Loads every usable 3D scan of a study.

    source: a folder (recursive: DICOM files of any number of series, NIfTI/NRRD files, junk), a DICOMDIR file,
        one NIfTI/NRRD/DICOM file, or a list of such paths.
    Returns a Study whose scans are ordered by DICOM series number (then UID), then NIfTI/NRRD files by name.
    Each Scan's array is (K, J, I) float32 and its affine maps (i, j, k, 1) to RAS mm (Slicer's IJKToRAS).
    Raises InputError (one line) if the source is missing or holds no usable 3D scan.
    """
    opts = options or LoadOptions()
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"{len(source)} paths"
    files = _expand(source)
    if not files:
        raise InputError(f"{name}: empty folder (no files)")
    volume_files = [f for f in files if is_volume_file(f)]
    other = [f for f in files if not is_volume_file(f) and not f.lower().endswith(IGNORED_SUFFIXES)]
    ignored = [f for f in files if f.lower().endswith(IGNORED_SUFFIXES)]

    scans, skipped, not_dicom = read_dicom(other, opts) if other else ([], [], [])
    vol_scans, vol_skipped = read_volumes(volume_files, opts.min_slices, opts.volume_modality)
    scans += vol_scans
    skipped += vol_skipped

    # non-DICOM files: those that claim to be DICOM by name are reported one by one, the rest in one line
    for f in not_dicom:
        if f.lower().endswith(DICOM_SUFFIXES):
            skipped.append(SkippedSeries(f, "not a DICOM file (no DICOM header; random or truncated bytes?)"))
    rest = [f for f in not_dicom if not f.lower().endswith(DICOM_SUFFIXES)] + ignored
    if rest:
        examples = ", ".join(os.path.basename(f) for f in rest[:3]) + (", ..." if len(rest) > 3 else "")
        skipped.append(SkippedSeries(f"{len(rest)} other file(s)", f"not DICOM/NIfTI/NRRD images ({examples})"))
    for s in skipped:
        # a study that goes on without a series says so; with nothing usable the error names the reason (a warning
        # too would say it twice); localizers and stray files are expected
        expected = not scans or s.reason.startswith("localizer/scout") or _stray_files(s)
        (log.debug if expected else log.warning)("skipped %s: %s", s.source, s.reason)

    if not scans:
        raise InputError(_nothing_usable(name, files, skipped))
    return Study(scans=scans, skipped=skipped)


def _stray_files(s: SkippedSeries) -> bool:
    """The one entry that sums up the files that are no image at all."""
    return s.source.endswith("other file(s)")


def _nothing_usable(name: str, files: List[str], skipped: List[SkippedSeries]) -> str:
    """One line for the InputError: the first concrete reason, and how many others."""
    reasons = [s for s in skipped if not _stray_files(s)] or skipped
    if not reasons:
        return f"{name}: no image series found in {len(files)} file(s)"
    more = f" (and {len(reasons) - 1} more skipped)" if len(reasons) > 1 else ""
    return f"{name}: no usable 3D scan; {reasons[0].source}: {reasons[0].reason}{more}"
