"""Each series' own acquisition grid, and resampling the world-space phantom onto it.

A series is planned like a technologist would: a plane (axial, sagittal or coronal) tilted by a few degrees,
a field of view and matrix, a slice thickness (with or without a gap), and enough slices to cover the head along
the slice normal (capped, so files stay small). Direction conventions follow DICOM as 3D Slicer reads it: i runs
along the image rows' direction, j down the columns, k along row x column; the affine maps (i, j, k, 1) to RAS mm.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
from scipy import ndimage

from .anatomy import Anatomy

# RAS directions of (i, j) as scanners store each plane: axial i -> patient left, j -> posterior;
# sagittal i -> posterior, j -> inferior; coronal i -> left, j -> inferior
PLANES = {
    "axial": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "sagittal": ((0.0, -1.0, 0.0), (0.0, 0.0, -1.0)),
    "coronal": ((-1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
}


@dataclass(frozen=True)
class GeometryRanges:
    """What the series of a study may look like (in-plane matrix, field of view, slices, tilt)."""
    matrix: Sequence[int] = (96, 112, 128, 144, 160)
    fov_mm: Tuple[float, float] = (200.0, 260.0)
    thickness_mm: Tuple[float, float] = (3.0, 6.0)
    max_slices: int = 40
    min_slices: int = 12
    max_oblique_deg: float = 12.0
    p_oblique: float = 0.6
    p_gap: float = 0.4           # slice spacing larger than the thickness (an interslice gap)


@dataclass
class SeriesGeometry:
    plane: str
    affine: np.ndarray            # 4x4 (i, j, k, 1) -> RAS mm
    shape: Tuple[int, int, int]   # (K, J, I)
    slice_thickness: float
    oblique_deg: float

    @property
    def spacing(self) -> Tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def normal(self) -> np.ndarray:
        return self.affine[:3, 2] / np.linalg.norm(self.affine[:3, 2])


def rotation(axis, degrees: float) -> np.ndarray:
    """Rodrigues rotation matrix about `axis`."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


@functools.lru_cache(maxsize=2)
def _head_points(anatomy: Anatomy) -> np.ndarray:
    """A thinned cloud of intracranial points (RAS mm): what the slices must cover."""
    idx = np.argwhere(anatomy.intracranial[::2, ::2, ::2]) * 2
    return anatomy.world(idx)


def plan_series(rng: np.random.Generator, plane: str, anatomy: Anatomy, ranges: GeometryRanges,
                thickness_mm: Tuple[float, float] = None, matrix: Sequence[int] = None) -> SeriesGeometry:
    """A random grid for one series in `plane` that covers the brain."""
    row0, col0 = (np.asarray(v) for v in PLANES[plane])
    tilt = 0.0
    turn = np.eye(3)
    if rng.random() < ranges.p_oblique:
        tilt = float(rng.uniform(2.0, ranges.max_oblique_deg))
        turn = rotation(rng.normal(size=3), tilt)
    row, col = turn @ row0, turn @ col0
    normal = np.cross(row, col)

    cols = int(rng.choice(list(matrix or ranges.matrix)))
    rows = cols if plane != "axial" or rng.random() < 0.5 else int(16 * round(cols * rng.uniform(0.78, 1.0) / 16))
    pixel = round(float(rng.uniform(*ranges.fov_mm)) / cols, 4)
    thickness = round(float(rng.uniform(*(thickness_mm or ranges.thickness_mm))), 1)
    step = round(thickness * (rng.uniform(1.05, 1.25) if rng.random() < ranges.p_gap else 1.0), 2)

    points = _head_points(anatomy)
    along = points @ normal
    length = (along.max() - along.min()) * rng.uniform(0.85, 1.05)
    slices = int(np.clip(round(length / step), ranges.min_slices, ranges.max_slices))
    centre = points.mean(axis=0)
    centre = centre + normal * ((along.max() + along.min()) / 2 - centre @ normal + rng.uniform(-5, 5))
    centre = centre + row * rng.uniform(-8, 8) + col * rng.uniform(-8, 8)

    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = row * pixel, col * pixel, normal * step
    affine[:3, 3] = centre - affine[:3, :3] @ (np.array([cols, rows, slices]) - 1) / 2.0
    return SeriesGeometry(plane, affine, (slices, rows, cols), thickness, tilt)


def world_axes(geometry: SeriesGeometry) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RAS x, y, z (mm, float32) of the series' voxel centres, each shaped (K, J, I)."""
    k, j, i = (np.arange(n, dtype=np.float32) for n in geometry.shape)
    a = geometry.affine.astype(np.float32)
    return tuple(a[d, 0] * i[None, None, :] + a[d, 1] * j[None, :, None] + a[d, 2] * k[:, None, None] + a[d, 3]
                 for d in range(3))


def voxel_points(geometry: SeriesGeometry) -> np.ndarray:
    """RAS mm of every voxel centre of the series, shaped (K, J, I, 3)."""
    return np.stack(world_axes(geometry), axis=-1)


def resample(volume: np.ndarray, anatomy: Anatomy, geometry: SeriesGeometry, order: int = 1,
             slab_samples: int = 1) -> np.ndarray:
    """`volume` (world grid [x, y, z]) sampled at the series' voxel centres, shaped (K, J, I); 0 outside.

    order 1 for images, 0 for label masks. slab_samples > 1 averages that many samples across the slice
    thickness (partial volume of a thick slice).
    """
    to_world_index = np.linalg.inv(anatomy.affine) @ geometry.affine   # (i, j, k, 1) -> world voxel index
    swap = np.zeros((4, 4))
    swap[0, 2] = swap[1, 1] = swap[2, 0] = swap[3, 3] = 1.0            # output index (k, j, i) -> (i, j, k)
    matrix = to_world_index @ swap
    if slab_samples <= 1 or order == 0:
        return ndimage.affine_transform(volume, matrix[:3, :3], matrix[:3, 3], output_shape=geometry.shape,
                                        order=order, mode="constant", cval=0.0, prefilter=False)
    out = np.zeros(geometry.shape, np.float32)
    spacing = geometry.spacing[2]
    offsets = (np.arange(slab_samples) + 0.5) / slab_samples - 0.5
    for off in offsets * min(geometry.slice_thickness, spacing) / spacing:
        shifted = matrix[:3, 3] + matrix[:3, 0] * off   # column 0 moves along k
        out += ndimage.affine_transform(volume, matrix[:3, :3], shifted, output_shape=geometry.shape,
                                        order=order, mode="constant", cval=0.0, prefilter=False)
    return out / len(offsets)
