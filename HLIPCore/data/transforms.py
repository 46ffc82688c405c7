"""Small preprocessing steps on a [C, D, H, W] torch tensor; every step records what it did.

Geometric steps (axis permutation/flip, pad, resize, crop) also give `index_map(in_shape)`: the output shape and a
4x4 matrix mapping an output voxel index (d, h, w, 1) to the input index it was sampled from, using voxel-centre
coordinates (torch's align_corners=False convention). Composing these matrices gives the exact map from the model
grid back to a scan's original (k, j, i) voxels; `TransformRecord.to_original` inverts it by interpolation.
Intensity steps record the values they used (percentiles, window) so that a run can be reproduced.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

Shape = Tuple[int, int, int]


class Step:
    """Base class: `__call__` transforms a [C, D, H, W] tensor; `params` says how."""
    name = "step"
    geometric = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def index_map(self, in_shape: Shape) -> Tuple[Shape, np.ndarray]:
        return in_shape, np.eye(4)

    def params(self) -> Dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.params().items())})"


class PermuteFlip(Step):
    """Reorders the three spatial axes (`perm[b]` = input axis of output axis b), then flips output axes `flip`."""
    name = "permute_flip"
    geometric = True

    def __init__(self, perm: Sequence[int], flip: Sequence[bool], reason: str = ""):
        self.perm = tuple(int(p) for p in perm)
        self.flip = tuple(bool(f) for f in flip)
        self.reason = reason

    def __call__(self, x):
        x = x.permute(0, *(p + 1 for p in self.perm))
        dims = [b + 1 for b in range(3) if self.flip[b]]
        return (x.flip(dims) if dims else x).contiguous()

    def index_map(self, in_shape):
        out_shape = tuple(in_shape[p] for p in self.perm)
        m = np.zeros((4, 4))
        m[3, 3] = 1
        for b, p in enumerate(self.perm):
            if self.flip[b]:
                m[p, b], m[p, 3] = -1.0, out_shape[b] - 1
            else:
                m[p, b] = 1.0
        return out_shape, m


def reorient_step(affine: np.ndarray, target: str = "RPI") -> PermuteFlip:
    """The PermuteFlip that turns a (K, J, I) array with IJK->RAS `affine` into one whose (W, H, D) = (i', j', k')
    axes point towards `target` (nibabel/Slicer 'to' codes, e.g. 'RPI': columns to the Right, rows Posterior,
    slices Inferior; the same as SimpleITK's DICOMOrientImageFilter 'RPI' used by the reference)."""
    import nibabel.orientations as nio
    start = nio.io_orientation(affine)                    # for i, j, k: RAS axis and sign
    end = nio.axcodes2ornt(tuple(target))
    t = nio.ornt_transform(start, end)                    # for i, j, k: target axis and flip
    perm, flip = [0, 0, 0], [False, False, False]
    for src_ijk in range(3):
        dst_ijk, sign = int(t[src_ijk, 0]), t[src_ijk, 1]
        perm[2 - dst_ijk] = 2 - src_ijk                   # array axes are (k, j, i)
        flip[2 - dst_ijk] = sign < 0
    return PermuteFlip(perm, flip, reason=f"{''.join(nio.aff2axcodes(affine))} -> {target}")


def through_plane_step(spacing_dhw: Sequence[float]) -> Optional[PermuteFlip]:
    """Puts the axis with the largest spacing (the acquisition's through-plane axis) first, as the reference's
    raw-clinical pipeline (data/pub_brain_5/stroke/process.py) does: coronal (y largest) -> (y, z, x), sagittal
    (x largest) -> (x, z, y). Ties keep the axial layout. Returns None when D is already the largest."""
    largest = int(np.argmax(np.round(np.asarray(spacing_dhw, dtype=float), 3)))
    if largest == 0:
        return None
    perm = (1, 0, 2) if largest == 1 else (2, 0, 1)
    return PermuteFlip(perm, (False, False, False), reason="coronal" if largest == 1 else "sagittal")


class PadToSquare(Step):
    """Zero-pads H and W to the longer side, centred (the extra pixel goes right/bottom), as the reference."""
    name = "pad_to_square"
    geometric = True

    def _pads(self, h, w):
        size = max(h, w)
        top, left = (size - h) // 2, (size - w) // 2
        return top, size - h - top, left, size - w - left

    def __call__(self, x):
        top, bottom, left, right = self._pads(x.shape[2], x.shape[3])
        return F.pad(x, (left, right, top, bottom), mode="constant", value=0.0)

    def index_map(self, in_shape):
        d, h, w = in_shape
        top, bottom, left, right = self._pads(h, w)
        m = np.eye(4)
        m[1, 3], m[2, 3] = -top, -left
        return (d, h + top + bottom, w + left + right), m


class Resize(Step):
    """torch interpolate to `size` (D, H, W); None keeps an axis. 'bilinear' resizes H, W of each slice (depth as
    channels) like the reference; 'nearest-exact' and 'trilinear' act on the volume. align_corners=False, no
    antialiasing, as the reference."""
    name = "resize"
    geometric = True

    def __init__(self, size: Sequence[Optional[int]], mode: str):
        self.size = tuple(size)
        self.mode = mode

    def _out(self, in_shape):
        return tuple(int(n if s is None else s) for n, s in zip(in_shape, self.size))

    def __call__(self, x):
        out = self._out(tuple(x.shape[1:]))
        if out == tuple(x.shape[1:]):
            return x
        if self.mode == "bilinear":
            assert out[0] == x.shape[1], "bilinear resizes H and W only"
            return F.interpolate(x, size=out[1:], mode="bilinear", align_corners=False)
        kw = {} if self.mode.startswith("nearest") else {"align_corners": False}
        return F.interpolate(x[None], size=out, mode=self.mode, **kw)[0]

    def index_map(self, in_shape):
        out = self._out(in_shape)
        m = np.eye(4)
        for a in range(3):  # voxel centres: in = (out + 0.5) * n_in / n_out - 0.5
            scale = in_shape[a] / out[a]
            m[a, a], m[a, 3] = scale, 0.5 * scale - 0.5
        return out, m


class CenterPadCrop(Step):
    """Zero-pads (centred) axes shorter than `size`, then crops the centre, as the reference's CT loader and its
    MRI crop [16:240] of 256. Padding puts the extra voxel after; the crop starts at (n - size) // 2."""
    name = "center_pad_crop"
    geometric = True

    def __init__(self, size: Sequence[int]):
        self.size = tuple(int(s) for s in size)

    def _plan(self, in_shape):
        plan = []
        for n, s in zip(in_shape, self.size):
            pad = max(s - n, 0)
            before = pad // 2
            start = (n + pad - s) // 2
            plan.append((before, pad - before, start))
        return plan

    def __call__(self, x):
        plan = self._plan(tuple(x.shape[1:]))
        pads = []
        for before, after, _ in reversed(plan):
            pads += [before, after]
        if any(pads):
            x = F.pad(x, pads, mode="constant", value=0.0)
        (_, _, s0), (_, _, s1), (_, _, s2) = plan
        d, h, w = self.size
        return x[:, s0:s0 + d, s1:s1 + h, s2:s2 + w]

    def index_map(self, in_shape):
        m = np.eye(4)
        for a, (before, _, start) in enumerate(self._plan(in_shape)):
            m[a, 3] = start - before
        return self.size, m


class PercentileClipMinMax(Step):
    """Clips to the [low, high] percentiles of the volume and scales to [0, 1]: (x - min) / (max - min + 1e-8),
    as the reference's MRI preprocessing (0.5 and 99.5). Records the values used."""
    name = "percentile_clip_minmax"

    def __init__(self, low: float = 0.5, high: float = 99.5):
        self.low, self.high = float(low), float(high)
        self.values: Optional[Tuple[float, float]] = None

    def __call__(self, x):
        flat = x.detach().reshape(-1).cpu().numpy()
        lo, hi = (float(v) for v in exact_percentiles(flat, (self.low, self.high)))
        self.values = (lo, hi)
        # after the clip, min and max are the two percentiles (the reference recomputes them; same values)
        return x.clamp(lo, hi).sub_(lo).div_(hi - lo + 1e-8)


def exact_percentiles(flat: np.ndarray, qs: Sequence[float], sample: int = 65536) -> List[float]:
    """np.percentile(flat, qs) (linear method), exactly, without partitioning the whole volume.

    A strided sample brackets each wanted order statistic; only the voxels inside the bracket are partitioned.
    Falls back to np.percentile when the bracket misses (for example with many equal values).
    """
    n = flat.size
    if n <= 4 * sample:
        return [float(v) for v in np.percentile(flat, qs)]
    probe = np.sort(flat[:: n // sample])
    out = []
    for q in qs:
        pos = q / 100.0 * (n - 1)
        k = int(np.floor(pos))
        frac = pos - k
        r = k / (n - 1) * (probe.size - 1)
        margin = 4.0 * np.sqrt(probe.size) + 8
        lo_v = probe[max(int(r - margin), 0)]
        hi_v = probe[min(int(r + margin) + 1, probe.size - 1)]
        below = int(np.count_nonzero(flat < lo_v))
        band = flat[(flat >= lo_v) & (flat <= hi_v)]
        a, b = k - below, k + 1 - below
        if a < 0 or b >= band.size:
            out.append(float(np.percentile(flat, q)))
            continue
        part = np.partition(band, [a, b])
        out.append(float(part[a]) + (float(part[b]) - float(part[a])) * frac)
    return out


class Window(Step):
    """(x - low) / (high - low) clipped to [0, 1]: the reference's CT window (HU + 1150) / 1500."""
    name = "window"

    def __init__(self, low: float = -1150.0, high: float = 350.0):
        self.low, self.high = float(low), float(high)

    def __call__(self, x):
        return ((x - self.low) / (self.high - self.low)).clamp_(0.0, 1.0)


class Normalize(Step):
    """(x - mean) / std with the reference's scalar ImageNet means (0.449, 0.226)."""
    name = "normalize"

    def __init__(self, mean: float = 0.449, std: float = 0.226):
        self.mean, self.std = float(mean), float(std)

    def __call__(self, x):
        return (x - self.mean) / self.std


@dataclass
class StepRecord:
    name: str
    params: Dict
    in_shape: Shape
    out_shape: Shape
    index_matrix: Optional[np.ndarray] = None  # output (d, h, w, 1) -> input index; None for intensity steps


@dataclass
class TransformRecord:
    """Everything done to one scan. `grid_to_original` maps a model-grid index (d, h, w, 1) to the scan's original
    array index (k, j, i, 1); `original_affine` is the scan's IJK->RAS."""
    original_shape: Shape
    original_affine: np.ndarray
    steps: List[StepRecord] = field(default_factory=list)
    grid_to_original: np.ndarray = field(default_factory=lambda: np.eye(4))

    @property
    def grid_shape(self) -> Shape:
        return self.steps[-1].out_shape if self.steps else self.original_shape

    @property
    def grid_affine(self) -> np.ndarray:
        """IJK->RAS of the model grid seen as a volume: (w, h, d, 1) -> RAS mm (Slicer order: i = last axis)."""
        rev = np.eye(4)[[2, 1, 0, 3]]  # (i, j, k) <-> (k, j, i)
        return self.original_affine @ rev @ self.grid_to_original @ rev

    @property
    def grid_spacing(self) -> Tuple[float, float, float]:
        """Voxel size (mm) of the model grid along (d, h, w)."""
        return tuple(float(v) for v in np.linalg.norm(self.grid_affine[:3, :3], axis=0)[::-1])

    def to_original(self, grid_map, order: int = 1) -> np.ndarray:
        """Sends a map on the model grid (D, H, W) back onto the scan's original (K, J, I) voxels.

        Inverts every geometric step exactly (reorientation, pad, resize, crop) and samples `grid_map` with spline
        interpolation of `order` (1 = linear, 0 = nearest for label maps). Original voxels outside the model grid's
        field of view (cropped away) get 0. Returns float32 (or the map's dtype for order 0).
        """
        from scipy import ndimage
        if isinstance(grid_map, torch.Tensor):
            grid_map = grid_map.detach().cpu().numpy()
        grid_map = np.asarray(grid_map)
        if grid_map.shape != tuple(self.grid_shape):
            raise ValueError(f"map shape {grid_map.shape} is not the model grid {tuple(self.grid_shape)}")
        src = grid_map if order == 0 else grid_map.astype(np.float32, copy=False)
        inv = np.linalg.inv(self.grid_to_original)  # original index -> grid index
        out = ndimage.affine_transform(src, inv[:3, :3], offset=inv[:3, 3], output_shape=self.original_shape,
                                       order=order, mode="nearest", prefilter=order > 1)
        out *= self._inside(inv)
        return out

    def _inside(self, inv: np.ndarray) -> np.ndarray:
        """1 where an original voxel's centre falls inside the grid's field of view (within half a grid voxel)."""
        eps = 1e-6
        mask = np.ones(self.original_shape, dtype=bool)
        lin = inv[:3, :3]
        if np.count_nonzero(np.abs(lin) > 1e-12) == 3:  # a scaled permutation: one 1-D test per axis
            for p in range(3):
                a = int(np.argmax(np.abs(lin[p])))
                g = lin[p, a] * np.arange(self.original_shape[a]) + inv[p, 3]
                ok = (g >= -0.5 - eps) & (g <= self.grid_shape[p] - 0.5 + eps)
                shape = [1, 1, 1]
                shape[a] = -1
                mask &= ok.reshape(shape)
            return mask
        idx = np.indices(self.original_shape).reshape(3, -1)
        g = lin @ idx + inv[:3, 3:4]
        ok = np.all((g >= -0.5 - eps) & (g <= np.array(self.grid_shape)[:, None] - 0.5 + eps), axis=0)
        return ok.reshape(self.original_shape)


def apply_step(step: Step, x: torch.Tensor, record: TransformRecord) -> torch.Tensor:
    """Applies one step to a [C, D, H, W] tensor and appends it to `record`."""
    in_shape = tuple(int(n) for n in x.shape[1:])
    matrix = None
    if step.geometric:
        expected, matrix = step.index_map(in_shape)
        record.grid_to_original = record.grid_to_original @ matrix
    x = step(x)
    out_shape = tuple(int(n) for n in x.shape[1:])
    if step.geometric and out_shape != tuple(expected):
        raise AssertionError(f"{step!r}: produced {out_shape}, index map says {tuple(expected)}")
    record.steps.append(StepRecord(step.name, step.params(), in_shape, out_shape, matrix))
    return x


def current_spacing(record: TransformRecord) -> Tuple[float, float, float]:
    """Voxel size (mm) of the current array axes (d, h, w) after the geometric steps recorded so far."""
    rev = np.eye(4)[[2, 1, 0, 3]]
    cols = record.original_affine[:3, :3] @ rev[:3, :3] @ record.grid_to_original[:3, :3]
    return tuple(float(v) for v in np.linalg.norm(cols, axis=0))


class Compose:
    """Applies fixed steps in order to a [C, D, H, W] tensor, recording each."""

    def __init__(self, steps: Sequence[Optional[Step]]):
        self.steps = [s for s in steps if s is not None]

    def __call__(self, x: torch.Tensor, record: TransformRecord) -> torch.Tensor:
        for step in self.steps:
            x = apply_step(step, x, record)
        return x
