"""The five Pub-Brain-5 classes as lesions in world (MNI) space: a label mask plus tissue compartments.

Each `make_<label>(anatomy, rng)` returns a `Lesion`:
- `mask` (uint8, world grid [x, y, z]): 0 = outside, 1 = the lesion itself (infarct, tumour, metastases),
  2 = perilesional oedema (glioma, metastases, some meningiomas);
- `compartments`: soft fractions (0..1) of named compartments; `sequences.COMPARTMENTS` says how each looks on
  each sequence (e.g. "enhancing" is bright only on T1c, "edema" bright on T2/FLAIR, "infarct" on DWI);
- `findings`: what a radiologist would say about it (side, lobe, size, territory, ...), used by the reports.
Shapes are soft-edged (a one-voxel ramp) so resampled images have partial-volume edges; the mask is fraction > 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np
from scipy import ndimage

from .anatomy import Anatomy, lobe_of, side_of

LABELS = ("normal", "stroke", "glioma", "meningioma", "metastasis")
MIN_CORE_VOXELS = 6   # a lesion smaller than this on the world grid is redrawn elsewhere


@dataclass
class Lesion:
    label: str
    mask: np.ndarray                                     # uint8 [x, y, z] on the anatomy grid
    compartments: Dict[str, np.ndarray] = field(default_factory=dict)
    findings: Dict = field(default_factory=dict)


class _Box:
    """A sub-block of the world grid around a point: lesions are computed locally and embedded (fast)."""

    def __init__(self, anatomy: Anatomy, centre_mm, half_mm: float):
        self.anatomy = anatomy
        c = anatomy.index(centre_mm)
        h = half_mm / anatomy.spacing
        self.slices = tuple(slice(max(0, int(np.floor(ci - h))), min(n, int(np.ceil(ci + h)) + 1))
                            for ci, n in zip(c, anatomy.shape))
        axes = [anatomy.affine[d, 3] + anatomy.affine[d, d] * np.arange(s.start, s.stop, dtype=np.float32)
                for d, s in enumerate(self.slices)]
        self.coords = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)

    @property
    def shape(self):
        return self.coords.shape[:3]

    def take(self, full: np.ndarray) -> np.ndarray:
        return full[self.slices]

    def embed(self, local: np.ndarray, dtype=np.float32) -> np.ndarray:
        full = np.zeros(self.anatomy.shape, dtype=dtype)
        full[self.slices] = local
        return full

    def distance(self, centre_mm, radii_mm=None) -> np.ndarray:
        """Distance (mm) to `centre_mm`, or the ellipsoidal radius scaled to mm when radii are given."""
        d = self.coords - np.asarray(centre_mm, dtype=np.float32)
        if radii_mm is None:
            return np.sqrt((d * d).sum(-1))
        r = np.asarray(radii_mm, dtype=np.float32)
        return np.sqrt(((d / r) ** 2).sum(-1)) * float(np.mean(r))

    def noise(self, rng: np.random.Generator, sigma_mm: float) -> np.ndarray:
        """Smooth random field with unit standard deviation (irregular borders, patchy enhancement)."""
        field = ndimage.gaussian_filter(rng.standard_normal(self.shape).astype(np.float32),
                                        sigma_mm / self.anatomy.spacing, mode="wrap")
        return field / max(float(field.std()), 1e-6)


def _ramp(outside_mm: np.ndarray, step: float) -> np.ndarray:
    """Soft inside fraction from a signed distance (negative inside): 1 inside, 0 outside, a one-voxel ramp between."""
    return np.clip(0.5 - outside_mm / step, 0.0, 1.0).astype(np.float32)


def _measure(mask: np.ndarray, anatomy: Anatomy) -> Tuple[np.ndarray, List[float]]:
    """Centroid (RAS mm) and extents (mm; transverse, AP, craniocaudal) of a boolean world mask."""
    idx = np.argwhere(mask)
    centroid = anatomy.world(idx.mean(axis=0))
    extent = ((idx.max(axis=0) - idx.min(axis=0) + 1) * anatomy.spacing).tolist()
    return centroid, [float(v) for v in extent]


def _describe(mask: np.ndarray, anatomy: Anatomy) -> Dict:
    centroid, extent = _measure(mask, anatomy)
    return {"centroid_mm": [round(float(v), 1) for v in centroid], "side": side_of(centroid[0]),
            "lobe": lobe_of(centroid), "size_mm": [round(v) for v in extent], "max_mm": round(max(extent)),
            "volume_ml": round(float(mask.sum()) * anatomy.spacing ** 3 / 1000.0, 1)}


def _pick(rng: np.random.Generator, candidates: np.ndarray, anatomy: Anatomy) -> np.ndarray:
    """A random candidate voxel (boolean world mask) as RAS mm, jittered inside its voxel."""
    idx = np.argwhere(candidates)
    chosen = idx[rng.integers(len(idx))] + rng.uniform(-0.5, 0.5, 3)
    return anatomy.world(chosen)


def _world_coords(anatomy: Anatomy) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = anatomy.affine[0, 3] + anatomy.affine[0, 0] * np.arange(anatomy.shape[0])
    y = anatomy.affine[1, 3] + anatomy.affine[1, 1] * np.arange(anatomy.shape[1])
    z = anatomy.affine[2, 3] + anatomy.affine[2, 2] * np.arange(anatomy.shape[2])
    return x[:, None, None], y[None, :, None], z[None, None, :]


# -----------------------------------------------------------------------------------------------------------------

def make_normal(anatomy: Anatomy, rng: np.random.Generator) -> Lesion:
    return Lesion("normal", np.zeros(anatomy.shape, np.uint8), {}, {"label": "normal"})


# Vascular territories as geometric regions in MNI mm, for a hemisphere sign s (+1 right, -1 left).
# MCA: the lateral wedge of the hemisphere (superior / inferior division) or its deep lenticulostriate branches;
# ACA: the parasagittal strip of the frontal and parietal lobes; PCA: occipital lobe and posterior temporal base.
def _territory(name: str, s: float, x, y, z) -> np.ndarray:
    sx = s * x
    if name == "MCA superior division":
        return (sx > 24) & (y > -65) & (y < 40) & (z > 5) & (z < 62)
    if name == "MCA inferior division":
        return (sx > 30) & (y > -60) & (y < 20) & (z > -35) & (z < 18)
    if name == "MCA deep (lenticulostriate)":
        return (sx > 12) & (sx < 32) & (y > -15) & (y < 22) & (z > -6) & (z < 22)
    if name == "ACA":
        return (sx > 1.5) & (sx < 20) & (y > -45) & (y < 50) & (z > 12)
    if name == "PCA":
        return (sx > 1.5) & (sx < 48) & (y < -58) & (z > -15) & (z < 35)
    raise ValueError(name)


TERRITORIES = (("MCA superior division", 0.35), ("MCA inferior division", 0.2), ("MCA deep (lenticulostriate)", 0.1),
               ("ACA", 0.15), ("PCA", 0.2))


def make_stroke(anatomy: Anatomy, rng: np.random.Generator) -> Lesion:
    """Acute infarct: part of one vascular territory (cortex and the white matter beneath it), restricted diffusion."""
    x, y, z = _world_coords(anatomy)
    names, weights = zip(*TERRITORIES)
    parenchyma = anatomy.gm + anatomy.wm
    for _ in range(20):
        territory = str(rng.choice(names, p=np.array(weights) / sum(weights)))
        s = float(rng.choice([-1.0, 1.0]))
        region = _territory(territory, s, x, y, z) & anatomy.brain
        if region.sum() < 20:
            continue
        centre = _pick(rng, region, anatomy)
        radius = rng.uniform(10, 26) if "deep" not in territory else rng.uniform(7, 13)
        box = _Box(anatomy, centre, radius * 1.6 + 4)
        wobble = 1.0 + 0.25 * box.noise(rng, 6.0)
        blob = _ramp(box.distance(centre, radius * rng.uniform(0.75, 1.25, 3)) - radius * wobble, anatomy.spacing)
        # territory edges softened (3 mm) so the infarct has no straight geometric borders
        infarct = box.embed(blob) * np.clip(ndimage.gaussian_filter(region.astype(np.float32), 1.5) * 1.3, 0, 1) \
            * np.clip(parenchyma, 0, 1) * (anatomy.brain & (s * x > 0))   # one hemisphere only
        mask = infarct > 0.5
        if mask.sum() < MIN_CORE_VOXELS:
            continue
        findings = {"label": "stroke", "territory": territory.split(" ")[0], "branch": territory, **_describe(mask, anatomy)}
        findings["side"] = "right" if s > 0 else "left"   # the territory's side, whatever the centroid rounding
        return Lesion("stroke", mask.astype(np.uint8), {"infarct": infarct}, findings)
    raise RuntimeError("could not place an infarct")  # pragma: no cover - the template always has room


def make_glioma(anatomy: Anatomy, rng: np.random.Generator) -> Lesion:
    """Intra-axial mass in the hemispheric white matter: necrotic core, irregular heterogeneous enhancing rim,
    and vasogenic oedema spreading along the white matter (bright on T2/FLAIR)."""
    x, y, z = _world_coords(anatomy)
    candidates = (anatomy.wm > 0.85) & (np.abs(x) > 14) & (z > -12) & (z < 55) & (y > -75)
    for _ in range(20):
        centre = _pick(rng, candidates, anatomy)
        radius = rng.uniform(11, 22)
        edema_mm = rng.uniform(8, 22)
        box = _Box(anatomy, centre, radius * 1.5 + edema_mm + 6)
        shape = 1.0 + 0.22 * box.noise(rng, 7.0)
        dist = box.distance(centre, radius * rng.uniform(0.8, 1.2, 3))
        inside = box.take(anatomy.intracranial).astype(np.float32)
        tumour = _ramp(dist - radius * shape, anatomy.spacing) * inside
        high_grade = rng.random() < 0.8
        necrosis = _ramp(dist - radius * rng.uniform(0.35, 0.6) * shape, anatomy.spacing) * inside if high_grade \
            else np.zeros_like(tumour)
        # heterogeneous enhancement: patches of the viable rim (or faint patches in a lower-grade tumour)
        patches = (box.noise(rng, 4.0) > rng.uniform(-0.6, 0.2)).astype(np.float32)
        enhancing = np.clip(tumour - necrosis, 0, 1) * ndimage.gaussian_filter(patches, 0.7)
        if not high_grade:
            enhancing *= 0.4
        wm_local = ndimage.gaussian_filter(box.take(anatomy.wm), 0.8)
        edema = _ramp(dist - (radius + edema_mm) * (1 + 0.3 * box.noise(rng, 8.0)), anatomy.spacing)
        edema = np.clip(edema * np.clip(wm_local * 1.4, 0, 1) - tumour, 0, 1) * inside
        core = tumour > 0.5
        if core.sum() < MIN_CORE_VOXELS:
            continue
        mask = np.where(core, 1, np.where(edema > 0.5, 2, 0)).astype(np.uint8)
        full_mask = box.embed(mask, np.uint8)
        findings = {"label": "glioma", "necrosis": bool(high_grade), "enhancement": "heterogeneous rim"
                    if high_grade else "faint patchy", **_describe(full_mask == 1, anatomy)}
        findings["edema_mm"] = round(edema_mm)
        comps = {"edema": box.embed(edema), "tumour": box.embed(tumour), "necrosis": box.embed(necrosis),
                 "enhancing": box.embed(enhancing)}
        return Lesion("glioma", full_mask, comps, findings)
    raise RuntimeError("could not place a glioma")  # pragma: no cover


def make_meningioma(anatomy: Anatomy, rng: np.random.Generator) -> Lesion:
    """Extra-axial dural-based mass: a dome whose base sits on the dura, pressing into the brain, with a CSF cleft,
    homogeneous avid enhancement and an enhancing dural tail; oedema only sometimes."""
    x, y, z = _world_coords(anatomy)
    centre_of_head = anatomy.world(np.argwhere(anatomy.intracranial).mean(axis=0))
    candidates = anatomy.dura & (z > -15) & (np.abs(x) > 6)
    for _ in range(20):
        base = _pick(rng, candidates, anatomy)
        outward = (base - centre_of_head) / np.linalg.norm(base - centre_of_head)
        radius = rng.uniform(9, 22)
        centre = base - outward * radius * rng.uniform(0.25, 0.55)  # most of the dome inside the skull
        box = _Box(anatomy, centre, radius * 2.0 + 8)
        inside = box.take(anatomy.intracranial).astype(np.float32)
        dist = box.distance(centre, radius * rng.uniform(0.85, 1.15, 3))
        shape = 1.0 + 0.06 * box.noise(rng, 8.0)   # smooth, slightly lobulated
        tumour = _ramp(dist - radius * shape, anatomy.spacing) * inside
        cleft = np.clip(_ramp(dist - radius * shape - 2.5, anatomy.spacing) * inside - tumour, 0, 1) * 0.7
        dura = box.take(anatomy.dura).astype(np.float32)
        tail = dura * _ramp(box.distance(centre) - radius * rng.uniform(1.4, 1.9), anatomy.spacing)
        tail = np.clip(tail - tumour, 0, 1)
        edema = np.zeros_like(tumour)
        if rng.random() < 0.35:
            edema = _ramp(dist - radius * shape - rng.uniform(5, 12), anatomy.spacing) * inside
            edema = np.clip(edema * np.clip(box.take(anatomy.wm) * 1.5, 0, 1) - tumour - cleft, 0, 1)
        core = tumour > 0.5
        if core.sum() < MIN_CORE_VOXELS:
            continue
        mask = np.where(core, 1, np.where(edema > 0.5, 2, 0)).astype(np.uint8)
        full_mask = box.embed(mask, np.uint8)
        findings = {"label": "meningioma", "edema": bool((mask == 2).any()), "dural_tail": True,
                    "parasagittal": bool(abs(base[0]) < 25), **_describe(full_mask == 1, anatomy)}
        comps = {"edema": box.embed(edema), "cleft": box.embed(cleft), "meningioma": box.embed(tumour),
                 "dural_tail": box.embed(tail)}
        return Lesion("meningioma", full_mask, comps, findings)
    raise RuntimeError("could not place a meningioma")  # pragma: no cover


def make_metastasis(anatomy: Anatomy, rng: np.random.Generator) -> Lesion:
    """2-6 small ring-enhancing lesions at the grey-white junction, each with disproportionate oedema."""
    x, y, z = _world_coords(anatomy)
    junction = (anatomy.gm > 0.3) & (anatomy.gm < 0.7) & (anatomy.wm > 0.3) & anatomy.brain
    junction &= (np.abs(x) > 8) & ~((np.abs(x) < 16) & (z < -5) & (y > -45))   # hemispheres, not the brainstem
    junction &= ~((np.abs(x) < 32) & (y > -36) & (y < 22) & (z > -8) & (z < 22))  # cortical, not the deep nuclei
    count = int(rng.integers(2, 7))
    names = ("edema", "necrosis", "enhancing")
    comps = {n: np.zeros(anatomy.shape, np.float32) for n in names}
    mask = np.zeros(anatomy.shape, np.uint8)
    centres: List[np.ndarray] = []
    lesions = []
    for _ in range(60):
        if len(centres) == count:
            break
        centre = _pick(rng, junction, anatomy)
        if any(np.linalg.norm(centre - c) < 22 for c in centres):
            continue
        radius = rng.uniform(3.5, 9.0)
        edema_mm = rng.uniform(5, 16)
        box = _Box(anatomy, centre, radius + edema_mm + 8)
        dist = box.distance(centre)
        inside = box.take(anatomy.intracranial).astype(np.float32)
        lesion = _ramp(dist - radius, anatomy.spacing) * inside
        ring_mm = rng.uniform(1.5, 2.5)
        necrosis = _ramp(dist - (radius - ring_mm), anatomy.spacing) * inside if radius > 4.0 else np.zeros_like(lesion)
        wm_local = ndimage.gaussian_filter(box.take(anatomy.wm), 0.8)
        edema = _ramp(dist - radius - edema_mm * (1 + 0.3 * box.noise(rng, 6.0)), anatomy.spacing)
        edema = np.clip(edema * np.clip(wm_local * 1.5, 0, 1) - lesion, 0, 1) * inside
        if (lesion > 0.5).sum() < 2:
            continue
        for name, local in zip(names, (edema, necrosis, np.clip(lesion - necrosis, 0, 1))):
            view = comps[name][box.slices]
            np.maximum(view, local, out=view)
        local_mask = mask[box.slices]
        local_mask[(edema > 0.5) & (local_mask == 0)] = 2
        local_mask[lesion > 0.5] = 1
        centres.append(centre)
        single = np.zeros(anatomy.shape, bool)
        single[box.slices] = lesion > 0.5
        lesions.append(_describe(single, anatomy))
    lesions.sort(key=lambda d: -d["max_mm"])
    sides = sorted({d["side"] for d in lesions})
    findings = {"label": "metastasis", "count": len(lesions), "lesions": lesions,
                "side": sides[0] if len(sides) == 1 else "bilateral", **{k: lesions[0][k] for k in ("lobe", "max_mm")},
                "size_mm": lesions[0]["size_mm"], "centroid_mm": lesions[0]["centroid_mm"]}
    return Lesion("metastasis", mask, comps, findings)


MAKERS = {"normal": make_normal, "stroke": make_stroke, "glioma": make_glioma, "meningioma": make_meningioma,
          "metastasis": make_metastasis}


def make_lesion(label: str, anatomy: Anatomy, rng: np.random.Generator) -> Lesion:
    if label not in MAKERS:
        raise ValueError(f"unknown phantom label {label!r}; choose from {', '.join(LABELS)}")
    return MAKERS[label](anatomy, rng)
