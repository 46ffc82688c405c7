"""Pointing game: does the attention map's hottest voxel fall inside the ground-truth lesion?

For each labelled study with a mask, the map of its true class (in `task`) is computed exactly as `hlip analyze`
computes it (same preprocessing, the analyzer's map method, mapping back to each scan's original voxels); the
voxel with the highest value over all scans is taken to RAS millimetres through its scan's affine and looked up
in the lesion mask (NIfTI, any grid; 1 = lesion, 2 = its oedema). A hit is a peak in the lesion itself (the bar's
measure); the game also reports how often the peak falls anywhere in the abnormality (lesion or oedema), which tells
a map that looks at the oedema (bright on T2/FLAIR) from one that looks elsewhere, and the median distance from
the peak to the nearest lesion voxel (0 for a hit), which tells a near miss (a peak beside a lesion smaller than
one token) from a map that looks at the wrong place. Studies whose class is not a lesion class are not counted.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..data import load_study, preprocess_study, select_scans
from ..errors import InputError


def _look_up(mask_path, ras: np.ndarray) -> Tuple[int, Optional[float]]:
    """(the mask's label at the voxel nearest to `ras` (mm), 0 outside the mask's grid; the distance in mm from
    `ras` to the nearest lesion voxel centre, 0 inside the lesion, None for a mask without lesion voxels)."""
    import nibabel as nib
    try:
        image = nib.load(str(mask_path))
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # missing, truncated gzip, not a NIfTI: one line naming the mask, not a traceback
        detail = str(exc).splitlines()[0][:80] if str(exc) else "corrupt"
        raise InputError(f"{mask_path}: unreadable lesion mask ({type(exc).__name__}: {detail})") from None
    if data.ndim > 3:  # (x, y, z, 1), as some writers store a 3D mask: label and distance read the same grid
        data = data[..., 0]
    return label_and_distance(data, image.affine, ras)


def label_and_distance(data: np.ndarray, affine: np.ndarray, ras: np.ndarray) -> Tuple[int, Optional[float]]:
    """`_look_up` on a mask array [i, j, k] with its affine."""
    ijk = np.linalg.inv(affine) @ np.append(ras, 1.0)
    index = tuple(int(round(v)) for v in ijk[:3])
    inside = all(0 <= i < n for i, n in zip(index, data.shape[:3]))
    label = int(data[index]) if inside else 0
    lesion = np.argwhere(data == 1)
    if label == 1 or not len(lesion):
        return label, (0.0 if label == 1 else None)
    points = lesion @ affine[:3, :3].T + affine[:3, 3]
    return label, float(np.sqrt(((points - ras) ** 2).sum(axis=1).min()))


def _mask_value_at(mask_path, ras: np.ndarray) -> int:
    """The mask's label at the voxel nearest to `ras` (mm); 0 outside the mask's grid."""
    return _look_up(mask_path, ras)[0]


def _lesion_at(mask_path, ras: np.ndarray) -> bool:
    return _mask_value_at(mask_path, ras) == 1


def hottest_point(analyzer, source, target) -> np.ndarray:
    """RAS (mm) of the maximum of `target`'s map over all scans of the study, on the original voxels."""
    study = select_scans(load_study(source, analyzer.options.load), analyzer.options.selection)
    prepared = preprocess_study(study, analyzer.preprocess)
    _, maps = analyzer.run_model(prepared.tensor, lambda scores: [target])
    volumes = next(iter(analyzer.maps_on_original_voxels(maps, prepared).values()))  # rollout: one class-free map
    best = int(np.argmax([v.max() for v in volumes]))
    k, j, i = np.unravel_index(int(np.argmax(volumes[best])), volumes[best].shape)
    return (np.asarray(study.scans[best].affine) @ np.array([i, j, k, 1.0]))[:3]


def pointing_game(analyzer, entries: List, task: str = "disease", normal_class: str = "Normal",
                  progress: bool = False) -> Dict[str, Optional[float]]:
    """{class: fraction of its studies whose map peak is in the lesion, ..., 'all': over every lesion study, 'n': their
    number, 'abnormal': the same fractions for a peak in the lesion or its oedema, 'distance_mm': the median
    distance from the peak to the lesion per class and over all}."""
    from tqdm import tqdm
    classes = {c.name.lower(): c.name for c in analyzer.prompt_set.task(task).classes}
    values: Dict[str, List[int]] = {}
    for entry in tqdm(entries, desc="pointing game", disable=not progress):
        cls = classes.get(str(entry.labels.get(task, entry.label or "")).lower())
        if entry.mask is None or cls is None or cls == normal_class:
            continue
        source = entry.study[0] if len(entry.study) == 1 else [str(p) for p in entry.study]
        ras = hottest_point(analyzer, source, (task, cls))
        values.setdefault(cls, []).append(_look_up(entry.mask, ras))

    def summary(measure, reduce) -> Dict[str, Optional[float]]:
        def of(vs):
            kept = [m for m in (measure(v) for v in vs) if m is not None]
            return float(reduce(kept)) if kept else None
        out = {cls: of(vs) for cls, vs in sorted(values.items())}
        out["all"] = of([v for vs in values.values() for v in vs])
        return out

    result = summary(lambda v: v[0] == 1, np.mean)
    result["n"] = sum(len(vs) for vs in values.values())
    result["abnormal"] = summary(lambda v: v[0] > 0, np.mean)
    result["distance_mm"] = summary(lambda v: v[1], np.median)
    return result
