"""MR contrasts from tissue fractions: T1, T2, FLAIR, T1c (post-gadolinium) and DWI (b=1000 trace).

A sequence's world image is the fraction-weighted mix of tissue intensities (relative to normal white matter on
T1 = 0.8), then each lesion compartment is laid over it in a fixed order: 'scale' compartments multiply what is
there (infarct, oedema keep the grey/white pattern underneath), 'replace' ones blend towards their own intensity.
Per study the intensities are jittered a little so no two scanners look alike. The acquisition (`acquire`) adds a
smooth multiplicative bias field and Rician noise on the series' own grid, as a real coil and receiver would.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from .anatomy import Anatomy
from .lesions import Lesion

SEQUENCES = ("T1", "T2", "FLAIR", "T1c", "DWI")
TISSUES = ("csf", "gm", "wm", "bone", "marrow", "fat")
# relative tissue intensities per sequence, in TISSUES order
TISSUE_INTENSITY = {
    "T1":    (0.25, 0.55, 0.80, 0.03, 0.85, 1.00),
    "T1c":   (0.25, 0.57, 0.80, 0.03, 0.85, 1.00),
    "T2":    (1.00, 0.55, 0.38, 0.03, 0.55, 0.70),
    "FLAIR": (0.10, 0.62, 0.45, 0.03, 0.55, 0.70),
    "DWI":   (0.12, 0.50, 0.42, 0.02, 0.05, 0.08),   # fat-suppressed EPI
}
# compartment -> (mode, values per sequence in SEQUENCES order); applied in this order
COMPARTMENTS = {
    "edema":      ("scale",   (0.80, 2.00, 1.90, 0.80, 1.15)),   # vasogenic: T2/FLAIR bright, no enhancement
    "infarct":    ("scale",   (0.82, 1.55, 1.75, 0.82, 2.80)),   # acute: restricted diffusion, T2/FLAIR bright
    "tumour":     ("replace", (0.42, 0.85, 0.85, 0.46, 0.62)),   # glioma solid part
    "necrosis":   ("replace", (0.22, 0.95, 0.45, 0.24, 0.22)),
    "enhancing":  ("replace", (0.45, 0.70, 0.80, 1.30, 0.58)),   # enhancing tumour: bright only with gadolinium
    "meningioma": ("replace", (0.52, 0.58, 0.60, 1.22, 0.50)),   # iso to grey matter, avid homogeneous enhancement
    "cleft":      ("replace", (0.25, 1.00, 0.10, 0.25, 0.12)),   # CSF cleft around an extra-axial mass
    "dural_tail": ("replace", (0.10, 0.12, 0.12, 0.95, 0.03)),
}
# which sequences show each label's signature: every study gets at least one of them
SHOWS = {
    "normal": SEQUENCES,
    "stroke": ("DWI", "FLAIR", "T2"),
    "glioma": ("FLAIR", "T2", "T1c"),
    "meningioma": ("T1c",),
    "metastasis": ("T1c",),
}
# noise standard deviation relative to white matter, per sequence (EPI diffusion is noisier)
NOISE_RANGE = {"T1": (0.015, 0.035), "T1c": (0.015, 0.035), "T2": (0.02, 0.04), "FLAIR": (0.025, 0.05),
               "DWI": (0.04, 0.07)}


def contrast_table(rng: np.random.Generator, jitter: float = 0.08) -> Dict:
    """This study's intensities: the tables above, each value scaled by 1 +- `jitter`."""
    tissues = {s: np.asarray(v) * rng.uniform(1 - jitter, 1 + jitter, len(v)) for s, v in TISSUE_INTENSITY.items()}
    comps = {c: (mode, np.asarray(v) * rng.uniform(1 - jitter / 2, 1 + jitter / 2, len(v)))
             for c, (mode, v) in COMPARTMENTS.items()}
    return {"tissues": tissues, "compartments": comps}


def render_world(anatomy: Anatomy, lesion: Lesion, sequence: str, table: Dict,
                 rng: np.random.Generator) -> np.ndarray:
    """The noise-free image of `sequence` on the world grid [x, y, z], float32, white matter on T1 about 0.8."""
    values = table["tissues"][sequence]
    image = np.zeros(anatomy.shape, np.float32)
    for name, value in zip(TISSUES, values):
        image += np.float32(value) * getattr(anatomy, name)
    if sequence == "T1c":  # normal enhancement: dura and the superior sagittal sinus light up a little
        x = anatomy.affine[0, 3] + anatomy.affine[0, 0] * np.arange(anatomy.shape[0])
        sinus = anatomy.dura & (np.abs(x)[:, None, None] < 4)
        image[anatomy.dura] = np.maximum(image[anatomy.dura], 0.25)
        image[sinus] = 0.9
    s = SEQUENCES.index(sequence)
    for name, (mode, per_seq) in table["compartments"].items():
        frac = lesion.compartments.get(name)
        if frac is None:
            continue
        value = np.float32(per_seq[s])
        where = frac > 0  # lesions are small: work on their voxels only
        f, here = frac[where], image[where]
        if mode == "scale":
            image[where] = here * (1.0 + f * (value - 1.0))
        else:
            if name in ("tumour", "meningioma", "enhancing"):  # a lesion is never perfectly uniform
                value = value * (1.0 + 0.05 * rng.standard_normal(f.shape).astype(np.float32))
            image[where] = here + f * (value - here)
    return image


def bias_field(x: np.ndarray, y: np.ndarray, z: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Smooth multiplicative coil shading at RAS mm coordinates x, y, z (broadcastable arrays): exp of a random
    quadratic, scaled to about 1 +- strength over the grid."""
    lin = rng.normal(0, 1, 3)
    quad = rng.normal(0, 0.5, 3)
    log_field = sum(np.float32(a) * (c / np.float32(100)) + np.float32(b) * (c / np.float32(100)) ** 2
                    for a, b, c in zip(lin, quad, (x, y, z)))
    log_field = log_field - log_field.mean()
    scale = max(float(np.abs(log_field).max()), 1e-6)
    return np.exp(log_field * np.float32(strength / scale)).astype(np.float32)


def add_rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise in both channels: the background is not zero, as in MR."""
    real = image + np.float32(sigma) * rng.standard_normal(image.shape, dtype=np.float32)
    imag = np.float32(sigma) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)
