"""Real anatomy for the phantoms: the MNI152 2009c template and its GM/WM probability maps, as shipped by nilearn.

The files are read straight from nilearn's package data with nibabel (no nilearn import: it pulls in scikit-learn
and pandas, and nothing may be downloaded), block-averaged onto a coarse world grid (2 mm by default, to keep
studies fast), and wrapped in a synthetic head - CSF rim, skull with fatty diploe, scalp fat - because the template
is skull-stripped while real MR series show the whole head. World space is MNI RAS millimetres.
Everything is cached per grid size: the first call costs about a second, later ones nothing.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Dict

import numpy as np
from scipy import ndimage

from ..errors import HLIPError

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
HEAD_MARGIN_MM = 16.0   # room around the brain for the CSF rim, skull and scalp
SKULL_MM = (1.5, 8.0)   # distance from the brain surface where the skull starts and ends
SCALP_MM = 13.0         # outer edge of the scalp


@dataclass(frozen=True, eq=False)  # hashed by identity: one cached instance per grid
class Anatomy:
    """Tissue fractions on a world grid. Arrays are indexed [x, y, z] (nibabel order); `affine` maps them to RAS mm.

    gm/wm/csf are fractions inside the intracranial space; bone, marrow (skull diploe) and fat (scalp) make the head.
    `intracranial` is the space inside the skull's inner table (brain + CSF), `brain` the parenchyma (GM+WM > 0.5),
    `dura` the one-voxel shell where the skull meets the intracranial space (meningiomas grow from it).
    """
    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    bone: np.ndarray
    marrow: np.ndarray
    fat: np.ndarray
    intracranial: np.ndarray
    brain: np.ndarray
    dura: np.ndarray

    @property
    def shape(self):
        return self.gm.shape

    @property
    def spacing(self) -> float:
        return float(abs(self.affine[0, 0]))

    def world(self, index) -> np.ndarray:
        """RAS mm of voxel indices (..., 3)."""
        index = np.asarray(index, dtype=np.float64)
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]

    def index(self, ras) -> np.ndarray:
        """Fractional voxel indices of RAS mm points (..., 3)."""
        inv = np.linalg.inv(self.affine)
        return np.asarray(ras, dtype=np.float64) @ inv[:3, :3].T + inv[:3, 3]

    def coordinates(self) -> np.ndarray:
        """RAS mm of every voxel, shaped (X, Y, Z, 3) float32 (lesion shapes are defined in world mm)."""
        axes = [self.affine[d, 3] + self.affine[d, d] * np.arange(n, dtype=np.float32) for d, n in enumerate(self.shape)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float32)


def template_folder() -> str:
    """nilearn's package data folder, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise HLIPError("the phantoms need the MNI152 template that ships with nilearn: pip install nilearn")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    missing = [f for f in TEMPLATE_FILES.values() if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise HLIPError(f"nilearn is installed but lacks its MNI152 files ({', '.join(missing)}); reinstall nilearn")
    return folder


def _block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    """Averages factor^3 blocks (padding with zeros to a multiple): the right way to coarsen probability maps."""
    pad = [(0, (-n) % factor) for n in data.shape]
    data = np.pad(data, pad)
    x, y, z = (n // factor for n in data.shape)
    return data.reshape(x, factor, y, factor, z, factor).mean(axis=(1, 3, 5))


def _load_template(grid_mm: float) -> Dict[str, np.ndarray]:
    import nibabel as nib
    folder = template_folder()
    maps, affine = {}, None
    for key, name in TEMPLATE_FILES.items():
        img = nib.load(os.path.join(folder, name))
        data = np.asarray(img.dataobj, dtype=np.float32) / 255.0
        affine = np.asarray(img.affine, dtype=np.float64)
        factor = int(round(grid_mm / abs(affine[0, 0])))
        if factor > 1:
            data = _block_mean(data, factor)
        maps[key] = data
    factor = max(1, int(round(grid_mm / abs(affine[0, 0]))))
    coarse = affine.copy()
    coarse[:3, :3] *= factor
    coarse[:3, 3] += affine[:3, :3] @ np.full(3, (factor - 1) / 2.0)  # centre of each block
    maps["affine"] = coarse
    return maps


@functools.lru_cache(maxsize=2)
def load_anatomy(grid_mm: float = 2.0) -> Anatomy:
    """The cached head anatomy on a `grid_mm` isotropic world grid (integer multiples of the template's 1 mm)."""
    maps = _load_template(grid_mm)
    step = float(abs(maps["affine"][0, 0]))
    margin = int(np.ceil(HEAD_MARGIN_MM / step))
    affine = maps["affine"].copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, margin)
    pad = lambda a: np.pad(a, margin)
    gm, wm, t1 = pad(maps["gm"]), pad(maps["wm"]), pad(maps["t1"])
    # the template is masked to the intracranial space: everything that is not GM or WM inside it is CSF
    intracranial = ndimage.binary_fill_holes(ndimage.binary_closing(t1 > 0.02, iterations=2))
    total = gm + wm
    scale = np.where(total > 1.0, 1.0 / np.maximum(total, 1e-6), 1.0)  # fractions must not add up beyond 1
    gm, wm = gm * scale * intracranial, wm * scale * intracranial
    csf = np.clip(intracranial - gm - wm, 0.0, 1.0).astype(np.float32)
    # the head around it: distance (mm) from the intracranial space decides CSF rim, skull and scalp
    outside = ndimage.distance_transform_edt(~intracranial) * step
    bone = ((outside > 0) & (outside <= SKULL_MM[1])).astype(np.float32)
    mid = (SKULL_MM[0] + SKULL_MM[1]) / 2.0
    marrow = (bone * (np.abs(outside - mid) < 1.6)).astype(np.float32)  # the diploe between the two tables
    fat = ((outside > SKULL_MM[1]) & (outside <= SCALP_MM)).astype(np.float32)
    smooth = lambda a: np.clip(ndimage.gaussian_filter(a, 0.6), 0, 1).astype(np.float32)
    bone, marrow, fat = smooth(bone) * ~intracranial, smooth(marrow) * ~intracranial, smooth(fat) * ~intracranial
    brain = (gm + wm) > 0.5
    dura = ndimage.binary_dilation(intracranial) & ~intracranial
    return Anatomy(affine=affine, gm=gm.astype(np.float32), wm=wm.astype(np.float32), csf=csf,
                   bone=bone.astype(np.float32), marrow=marrow.astype(np.float32), fat=fat.astype(np.float32),
                   intracranial=intracranial, brain=brain, dura=dura)


# ---------------------------------------------------------------------------------------------------------------
# where things are, in MNI millimetres: used to place lesions and to word the reports

def side_of(x_mm: float) -> str:
    """MNI/RAS x grows towards the patient's right."""
    return "right" if x_mm > 0 else "left"


def lobe_of(ras) -> str:
    """A coarse lobe/region name for an MNI point, good enough for a report (boundaries are approximate)."""
    x, y, z = (float(v) for v in ras)
    if abs(x) < 12 and z < -5 and y > -40:
        return "brainstem"
    if z < -15 and y < -40:
        return "cerebellar"
    if abs(x) < 22 and -36 < y < -8 and -4 < z < 20:
        return "thalamic"
    if abs(x) < 32 and -12 < y < 22 and -8 < z < 22:
        return "basal ganglia"
    if y < -70 or (y < -58 and z < 30):
        return "occipital"
    if (z < 8 and -70 < y < 20 and abs(x) > 30) or (z < -12 and y > -45):
        return "temporal"
    if y > -18 + 0.2 * max(z, 0):  # the central sulcus leans back as it climbs
        return "frontal"
    return "parietal"
