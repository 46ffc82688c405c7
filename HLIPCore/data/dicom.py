"""DICOM files -> Scans: group by series, split mixed geometry, sort along the slice normal, check spacing.

Every file is read once with pydicom. Single-frame images and each frame of an (enhanced or legacy) multi-frame
image become `_Slice` records; slices are grouped by SeriesInstanceUID, then split by geometry (orientation, size,
pixel spacing), localizer flag and echo, and - only where slice positions repeat - by acquisition, temporal position
or diffusion b-value. Each group is sorted along its normal (cross product of the row and column directions) and
stacked into a (K, J, I) float32 array after RescaleSlope/Intercept. The affine maps (i, j, k, 1) to RAS mm:
DICOM patient coordinates are LPS, so x and y are negated. Series that cannot be used become SkippedSeries.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from .study import LoadOptions, Scan, SeriesProblem, SkippedSeries, check_volume

log = logging.getLogger("HLIPCore.data")

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Objects that carry no image volume (structured reports, segmentations, RT objects, presentation states, ...).
NON_IMAGE_MODALITIES = {"SR", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "KO", "REG", "DOC", "FID"}
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # the DICOMDIR itself: an index, not an image
UNCOMPRESSED_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}


@dataclass
class _Slice:
    """One 2D image: a single-frame file, or one frame of a multi-frame file."""
    path: str
    frame: Optional[int]
    ds: "pydicom.Dataset"
    series_uid: str
    rows: int
    cols: int
    iop: Optional[np.ndarray]   # 6 direction cosines: row direction (i increases), column direction (j increases)
    ipp: Optional[np.ndarray]   # position of the centre of the first voxel, LPS mm
    pixel_spacing: Optional[Tuple[float, float]]  # (between rows, between columns) mm
    slope: float
    intercept: float
    instance: int
    echo: Tuple = ()
    variant: Tuple = ()       # acquisition / temporal / b-value: used only to separate repeated positions
    localizer: bool = False


def _raw(ds, keyword):
    """An element's value without pydicom's conversion when still raw: text VRs come back as str (backslash-
    separated for several values). Converting DS/IS values through pydicom costs more than reading the file."""
    tag = _TAGS.get(keyword) or _TAGS.setdefault(keyword, pydicom.datadict.tag_for_keyword(keyword))
    try:
        elem = ds.get_item(tag)
    except (KeyError, TypeError):
        return None
    if elem is None:
        return None
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        if elem.VR in (None, "DS", "IS", "CS", "UI", "LO", "SH", "DA", "TM") or elem.VR is None:
            text = value.decode("latin-1").strip(" \x00")
            return text if text else None
        return ds[tag].value  # binary VRs: let pydicom unpack them
    return value


_TAGS: Dict[str, int] = {}


def _us(ds, keyword, default=0) -> int:
    """An unsigned short (Rows, Columns, BitsAllocated, ...) read from its raw bytes when still raw."""
    tag = _TAGS.get(keyword) or _TAGS.setdefault(keyword, pydicom.datadict.tag_for_keyword(keyword))
    try:
        elem = ds.get_item(tag)
    except (KeyError, TypeError):
        return default
    if elem is None:
        return default
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        if len(value) != 2:
            return int(ds[tag].value)
        little = getattr(ds, "original_encoding", (None, True))[1] is not False
        return int.from_bytes(value, "little" if little else "big")
    return default if value is None else int(value)


def _normal(iop: np.ndarray) -> np.ndarray:
    r, c = iop[:3], iop[3:]
    return np.array([r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]])


def _strings(value) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split("\\")
    return [str(v) for v in value] if not isinstance(value, (bytes, bytearray)) else [value.decode("latin-1")]


def _num(value, default=None):
    if isinstance(value, str) and "\\" in value:
        value = value.split("\\")[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _vec(value, n):
    if isinstance(value, str):
        value = value.split("\\")
    try:
        v = np.array([float(x) for x in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return v if v.shape == (n,) and np.all(np.isfinite(v)) else None


def _from_groups(groups, seq_name, attr):
    """First value of `attr` inside `seq_name` of the per-frame then shared functional group items."""
    for item in groups:
        if item is None:
            continue
        seq = item.get(seq_name)
        if seq:
            value = seq[0].get(attr)
            if value is not None:
                return value
    return None


def _series_label(ds) -> str:
    desc = str(ds.get("SeriesDescription", "") or ds.get("ProtocolName", "") or "").strip()
    number = ds.get("SeriesNumber", None)
    label = f"series {number}" if number not in (None, "") else "series ?"
    return f"{label} '{desc}'" if desc else label


def _slices_of(path: str, ds) -> List[_Slice]:
    """All 2D images in one file (raises SeriesProblem for files that hold no usable grayscale image)."""
    rows, cols = _us(ds, "Rows"), _us(ds, "Columns")
    if _us(ds, "SamplesPerPixel", 1) != 1:
        raise SeriesProblem("colour image (not a CT/MR grayscale volume)")
    if rows < 1 or cols < 1:
        raise SeriesProblem("image has no rows/columns")
    image_type = [t.strip().upper() for t in _strings(_raw(ds, "ImageType"))]
    localizer = "LOCALIZER" in image_type
    uid = str(_raw(ds, "SeriesInstanceUID") or f"no-series-uid:{os.path.dirname(path)}")
    instance = int(_num(_raw(ds, "InstanceNumber"), 0) or 0)
    top_echo = (_num(_raw(ds, "EchoNumbers")), _num(_raw(ds, "EchoTime")))
    top_variant = (_num(_raw(ds, "AcquisitionNumber")), _num(_raw(ds, "TemporalPositionIdentifier")),
                   _num(_raw(ds, "TriggerTime")), _num(_raw(ds, "DiffusionBValue")))
    n_frames = int(_num(_raw(ds, "NumberOfFrames"), 1) or 1)
    multi = n_frames > 1 or "SharedFunctionalGroupsSequence" in ds
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0] if multi else None
    per_frame = (ds.get("PerFrameFunctionalGroupsSequence") or []) if multi else []
    top_iop, top_ipp = _vec(_raw(ds, "ImageOrientationPatient"), 6), _vec(_raw(ds, "ImagePositionPatient"), 3)
    top_ps = _vec(_raw(ds, "PixelSpacing"), 2)
    top_slope = _num(_raw(ds, "RescaleSlope"), 1.0)
    top_intercept = _num(_raw(ds, "RescaleIntercept"), 0.0)
    ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    if ts in UNCOMPRESSED_LE and "PixelData" in ds:
        expected = rows * cols * n_frames * _us(ds, "BitsAllocated", 16) // 8
        if len(ds.PixelData) < expected:
            raise SeriesProblem(f"pixel data truncated ({len(ds.PixelData)} of {expected} bytes)")
    slices = []
    for f in range(n_frames):
        groups = [per_frame[f] if f < len(per_frame) else None, shared]
        iop = _vec(_from_groups(groups, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        ipp = _vec(_from_groups(groups, "PlanePositionSequence", "ImagePositionPatient"), 3)
        ps = _vec(_from_groups(groups, "PixelMeasuresSequence", "PixelSpacing"), 2)
        slope = _num(_from_groups(groups, "PixelValueTransformationSequence", "RescaleSlope"), top_slope)
        intercept = _num(_from_groups(groups, "PixelValueTransformationSequence", "RescaleIntercept"), top_intercept)
        echo, variant = top_echo, top_variant
        if n_frames > 1:
            te = _num(_from_groups(groups, "MREchoSequence", "EffectiveEchoTime"))
            echo = (None, te) if te is not None else top_echo
            variant = (_from_groups(groups, "FrameContentSequence", "StackID"),
                       _num(_from_groups(groups, "FrameContentSequence", "TemporalPositionIndex")),
                       _num(_from_groups(groups, "MRDiffusionSequence", "DiffusionBValue")))
            if iop is None:
                iop = top_iop
            if ipp is None and top_ipp is not None and top_iop is not None and not per_frame:
                # legacy multi-frame: frames stacked along the normal from the top-level position
                step = _num(ds.get("SpacingBetweenSlices")) or _num(ds.get("SliceThickness"))
                if step:
                    ipp = top_ipp + f * step * _normal(top_iop)
            ps = ps if ps is not None else top_ps
        else:
            iop = iop if iop is not None else top_iop
            ipp = ipp if ipp is not None else top_ipp
            ps = ps if ps is not None else top_ps
        slices.append(_Slice(path, f if n_frames > 1 else None, ds, uid, rows, cols, iop, ipp,
                             tuple(ps) if ps is not None else None, slope, intercept,
                             instance * 100000 + f, echo, variant, localizer))
    return slices


def _is_image_class(sop_class: str, ds) -> bool:
    try:
        name = pydicom.uid.UID(sop_class).name
    except Exception:
        name = ""
    return "Image Storage" in name or "Rows" in ds


def read_headers(paths: Sequence[str], workers: int = 1):
    """Reads each file once. Returns (slices, skipped, not_dicom): not_dicom are files without a DICOM header."""
    def read(path):
        try:
            return path, pydicom.dcmread(path), None
        except InvalidDicomError:
            return path, None, "not a DICOM file"
        except Exception as exc:  # truncated or corrupt: pydicom raises many kinds
            return path, None, f"unreadable DICOM file ({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else 'corrupt'})"

    if workers > 1 and len(paths) > 8:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(read, paths))
    else:
        results = [read(p) for p in paths]

    slices, skipped, not_dicom = [], [], []
    no_image: "OrderedDict[str, list]" = OrderedDict()
    bad_files: "OrderedDict[tuple, list]" = OrderedDict()  # (series label, reason) -> files, reported once
    for path, ds, error in results:
        if ds is None:
            (not_dicom if error == "not a DICOM file" else skipped).append(
                path if error == "not a DICOM file" else SkippedSeries(path, error))
            continue
        sop_class = str(_raw(ds, "SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
        if sop_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
            continue  # the DICOMDIR index; the files it references are read on their own
        modality = str(_raw(ds, "Modality") or "").upper()
        has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
        if not has_pixels and modality not in NON_IMAGE_MODALITIES and _is_image_class(sop_class, ds):
            # pydicom stops quietly at a premature end of file: an image object without pixels was cut short
            bad_files.setdefault((_series_label(ds), "truncated file: image without pixel data"), []).append(path)
            continue
        if modality in NON_IMAGE_MODALITIES or "PixelData" not in ds and "FloatPixelData" not in ds \
                and "DoubleFloatPixelData" not in ds:
            what = modality or "object"
            key = f"{_series_label(ds)} ({what})"
            no_image.setdefault(key, []).append(path)
            continue
        try:
            slices.extend(_slices_of(path, ds))
        except SeriesProblem as exc:
            bad_files.setdefault((_series_label(ds), str(exc)), []).append(path)
    for (label, reason), files in bad_files.items():  # one line per series and problem, not one per file
        where = files[0] if len(files) == 1 else f"{os.path.dirname(files[0])} ({len(files)} files)"
        skipped.append(SkippedSeries(f"{where} ({label})", reason))
    for key, files in no_image.items():
        where = files[0] if len(files) == 1 else f"{os.path.dirname(files[0])} ({len(files)} files)"
        skipped.append(SkippedSeries(f"{where} {key}", "not an image series (no pixel data, or a SR/SEG/RT/PR object)"))
    return slices, skipped, not_dicom


# ----------------------------------------------------------------------------------------------------------------
# grouping

def _geometry_key(s: _Slice):
    iop = tuple(np.round(s.iop, 3)) if s.iop is not None else None
    ps = tuple(np.round(s.pixel_spacing, 3)) if s.pixel_spacing is not None else None
    return (iop, s.rows, s.cols, ps, s.localizer)


def _normal_distance(s: _Slice) -> Optional[float]:
    if s.iop is None or s.ipp is None:
        return None
    return float(np.dot(s.ipp, _normal(s.iop)))


def _has_repeats(group: List[_Slice]) -> bool:
    dist = [_normal_distance(s) for s in group]
    if any(d is None for d in dist):
        return False
    return len(set(np.round(dist, 2))) < len(dist)


def split_series(slices: List[_Slice]) -> List[Tuple[str, List[_Slice]]]:
    """Splits one series into groups of one geometry; returns (label suffix, slices) pairs, largest group first."""
    by_geometry: Dict = OrderedDict()
    for s in slices:
        by_geometry.setdefault(_geometry_key(s), []).append(s)
    parts = []
    for n_geom, group in enumerate(by_geometry.values()):
        geom_label = f"geometry {n_geom + 1}" if len(by_geometry) > 1 else ""
        sub = OrderedDict()
        for s in group:
            sub.setdefault(s.echo, []).append(s)
        echo_groups = list(sub.items()) if len(sub) > 1 else [((), group)]
        for echo, eg in echo_groups:
            label = ", ".join(x for x in [geom_label, _echo_label(echo)] if x)
            if _has_repeats(eg):
                by_variant = OrderedDict()
                for s in eg:
                    by_variant.setdefault(s.variant, []).append(s)
                if len(by_variant) > 1:
                    for n_var, vg in enumerate(by_variant.values()):
                        parts.append((", ".join(x for x in [label, f"part {n_var + 1}"] if x), vg))
                    continue
            parts.append((label, eg))
    return parts


def _echo_label(echo) -> str:
    if not echo:
        return ""
    number, te = echo
    if number is not None:
        return f"echo {int(number)}"
    return f"TE {te:g}" if te is not None else ""


# ----------------------------------------------------------------------------------------------------------------
# stacking

def _frame_pixels(s: _Slice, cache: Dict) -> np.ndarray:
    ds = s.ds
    ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    bits = _us(ds, "BitsAllocated", 16) or 16
    signed = _us(ds, "PixelRepresentation", 0) == 1
    stored = _us(ds, "BitsStored", bits) or bits
    if s.frame is None and ts in UNCOMPRESSED_LE and "PixelData" in ds and bits in (8, 16, 32) \
            and (stored == bits or not signed):
        # fast path: read the raw little-endian buffer instead of pydicom's general decoder
        dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
        n = s.rows * s.cols
        buf = ds.PixelData
        if len(buf) < n * dtype.itemsize:
            raise SeriesProblem(f"{s.path}: pixel data truncated ({len(buf)} of {n * dtype.itemsize} bytes)")
        px = np.frombuffer(buf, dtype=dtype, count=n).reshape(s.rows, s.cols)
        if stored < bits:
            px = px & ((1 << stored) - 1)
        return px
    if s.path not in cache:
        try:
            arr = ds.pixel_array
        except Exception as exc:
            raise SeriesProblem(f"{s.path}: pixel data cannot be decoded ({type(exc).__name__})") from None
        cache[s.path] = arr.reshape(-1, s.rows, s.cols)
    return cache[s.path][s.frame or 0]


def _regular_grid(dist: np.ndarray, opts: LoadOptions, warnings: List[str]):
    """Checks slice spacing. Returns (target distances or None when the slices are already regular, spacing)."""
    diffs = np.diff(dist)
    spacing = float(np.median(diffs))
    if spacing <= 1e-6:
        raise SeriesProblem("slices share the same position (repeated acquisition that cannot be separated)")
    tol = opts.spacing_tolerance_mm + opts.spacing_tolerance_rel * spacing
    off = np.abs(diffs - spacing) > tol
    if not off.any():
        return None, spacing
    gaps = diffs > 1.5 * spacing
    missing = int(np.sum(np.round(diffs[gaps] / spacing) - 1)) if gaps.any() else 0
    if gaps.any():
        at = int(np.argmax(gaps))
        problem = (f"slice gap: {missing} missing slice(s) (largest step {diffs.max():.3g} mm, "
                   f"expected {spacing:.3g} mm, after slice {at + 1})")
    else:
        problem = f"irregular slice spacing ({diffs.min():.3g}-{diffs.max():.3g} mm, median {spacing:.3g} mm)"
    if opts.on_irregular == "skip":
        raise SeriesProblem(problem)
    if opts.on_irregular == "keep":
        warnings.append(problem + "; kept as is, geometry approximate")
        return None, spacing
    if missing > opts.max_missing_slices:
        raise SeriesProblem(problem + f"; more than {opts.max_missing_slices} to interpolate")
    n = int(round((dist[-1] - dist[0]) / spacing)) + 1
    warnings.append(problem + f"; resampled to {n} slices at {spacing:.3g} mm by linear interpolation")
    return dist[0] + spacing * np.arange(n), spacing


def _interpolate_slices(stack: np.ndarray, dist: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Linear interpolation of (K, J, I) slices at positions `dist` onto positions `target` along the normal."""
    idx = np.clip(np.searchsorted(dist, target, side="right") - 1, 0, len(dist) - 2)
    w = ((target - dist[idx]) / (dist[idx + 1] - dist[idx])).clip(0, 1).astype(np.float32)[:, None, None]
    return stack[idx] * (1 - w) + stack[idx + 1] * w


def stack_group(slices: List[_Slice], opts: LoadOptions) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Sorts one geometry group along its normal; returns ((K, J, I) float32 array, IJK->RAS affine, warnings)."""
    warnings: List[str] = []
    first = slices[0]
    if len(slices) < opts.min_slices:
        raise SeriesProblem(f"only {len(slices)} image(s): a 2D image, not a volume")
    dist = [_normal_distance(s) for s in slices]
    if any(d is None for d in dist):
        # no patient geometry (stripped or secondary capture): keep file/frame order, assume an axial LPS grid
        order = sorted(range(len(slices)), key=lambda n: (slices[n].instance, slices[n].path))
        iop = np.array([1.0, 0, 0, 0, 1.0, 0])
        step = _num(first.ds.get("SpacingBetweenSlices")) or _num(first.ds.get("SliceThickness")) or 1.0
        ps = first.pixel_spacing or (1.0, 1.0)
        origin = np.zeros(3)
        kstep = np.array([0, 0, step])
        target = None
        warnings.append("no patient position/orientation in the files; assumed an axial grid "
                        f"({ps[1]:.3g} x {ps[0]:.3g} x {step:.3g} mm)")
    else:
        order = sorted(range(len(slices)), key=lambda n: (dist[n], slices[n].instance))
        dist = np.array([dist[n] for n in order])
        if len(set(np.round(dist, 2))) < len(dist):
            raise SeriesProblem("several images share one slice position and cannot be told apart")
        iop = first.iop
        ps = first.pixel_spacing
        if ps is None:
            ps = (1.0, 1.0)
            warnings.append("no pixel spacing; assumed 1 mm")
        target, spacing = _regular_grid(dist, opts, warnings)
        p0, p1 = slices[order[0]].ipp, slices[order[-1]].ipp
        origin = p0
        # k column from the first and last positions: also exact for gantry-tilted (sheared) series
        kstep = (p1 - p0) / (dist[-1] - dist[0]) * spacing
    cache: Dict = {}
    stack = np.empty((len(order), first.rows, first.cols), dtype=np.float32)
    for k, n in enumerate(order):
        s = slices[n]
        px = _frame_pixels(s, cache)
        if s.slope != 1.0 or s.intercept != 0.0:
            np.multiply(px, np.float32(s.slope), out=stack[k], casting="unsafe")
            stack[k] += np.float32(s.intercept)
        else:
            stack[k] = px
    if target is not None:
        stack = _interpolate_slices(stack, dist, target)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * ps[1]
    lps[:3, 1] = iop[3:] * ps[0]
    lps[:3, 2] = kstep
    lps[:3, 3] = origin
    return stack, LPS_TO_RAS @ lps, warnings


def scans_from_slices(slices: List[_Slice], opts: LoadOptions) -> Tuple[List[Scan], List[SkippedSeries]]:
    """Groups slices into series, splits and stacks them. Scans come sorted by series number then UID."""
    by_series: Dict[str, List[_Slice]] = defaultdict(list)
    for s in slices:
        by_series[s.series_uid].append(s)

    def series_order(uid):
        ds = by_series[uid][0].ds
        return (_num(ds.get("SeriesNumber"), 1e9), uid)

    scans, skipped = [], []
    for uid in sorted(by_series, key=series_order):
        series = by_series[uid]
        ds = series[0].ds
        label = _series_label(ds)
        where = os.path.dirname(series[0].path)
        parts = split_series(series)
        if len(parts) > 1 and all(len(g) < opts.min_slices for _, g in parts):
            # e.g. a 3-plane localizer or projections: one line for the series, not one per image
            kind = "localizer/scout: " if all(g[0].localizer for _, g in parts) else ""
            skipped.append(SkippedSeries(f"{where} {label}", kind + f"{len(series)} image(s) in {len(parts)} different "
                                         f"geometries, none with {opts.min_slices}+ slices: 2D images, not a volume"))
            parts = []
        for suffix, group in parts:
            name = f"{label} [{suffix}]" if suffix else label
            if group[0].localizer:
                skipped.append(SkippedSeries(f"{where} {name}", f"localizer/scout ({len(group)} image(s))"))
                continue
            try:
                array, affine, warnings = stack_group(group, opts)
                warnings += check_volume(array, opts.min_slices)
            except SeriesProblem as exc:
                skipped.append(SkippedSeries(f"{where} {name}", str(exc)))
                continue
            desc = str(ds.get("SeriesDescription", "") or ds.get("ProtocolName", "") or "").strip()
            if suffix:
                desc = f"{desc} [{suffix}]".strip()
            files = sorted({s.path for s in group})
            scan = Scan(array=array, affine=affine, modality=str(ds.get("Modality", "OT") or "OT").upper(),
                        description=desc, series_uid=uid + (f"#{suffix.replace(' ', '')}" if suffix else ""),
                        source=files, warnings=warnings)
            for w in warnings:
                log.warning("%s %s: %s", where, name, w)
            scans.append(scan)
        for s in series:  # release the file contents held for decoding
            s.ds = None
    return scans, skipped


def read_dicom(paths: Sequence[str], opts: Optional[LoadOptions] = None):
    """Reads DICOM files into Scans. Returns (scans, skipped, not_dicom_paths)."""
    opts = opts or LoadOptions()
    slices, skipped, not_dicom = read_headers(list(paths), opts.workers)
    scans, skipped_series = scans_from_slices(slices, opts)
    return scans, skipped + skipped_series, not_dicom


def dicomdir_files(path: str) -> List[str]:
    """The image files a DICOMDIR references (raises InvalidDicomError/ValueError if it is not one)."""
    from pydicom.fileset import FileSet
    fs = FileSet(pydicom.dcmread(path))
    return sorted(str(inst.path) for inst in fs)
