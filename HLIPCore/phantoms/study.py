"""`generate_study(seed, label)`: one synthetic brain MRI study in memory, every series on its own grid.

Steps: pick the label's lesion in world (MNI) space; pick 2-5 sequences (at least one that shows the label's
signature); render each sequence on the world grid; plan each series' grid; resample, add coil shading and Rician
noise, quantise as the scanner would store it; sometimes add a localizer and a junk series; write the report.
Random streams are split per step so a study is a pure function of its seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

import numpy as np

from .anatomy import load_anatomy
from .geometry import GeometryRanges, SeriesGeometry, plan_series, resample, world_axes
from .lesions import LABELS, Lesion, make_lesion
from .reports import make_report
from .sequences import NOISE_RANGE, SEQUENCES, SHOWS, add_rician_noise, bias_field, contrast_table, render_world

ACQUISITION_ORDER = ("T1", "DWI", "T2", "FLAIR", "T1c")   # the order a brain protocol runs: contrast last
SEQUENCE_WEIGHTS = {"T1": 0.9, "T2": 0.8, "FLAIR": 0.85, "T1c": 0.6, "DWI": 0.6}
PLANE_WEIGHTS = {  # axial, sagittal, coronal
    "T1": (0.4, 0.45, 0.15), "T2": (0.6, 0.1, 0.3), "FLAIR": (0.6, 0.1, 0.3), "T1c": (0.45, 0.25, 0.3),
    "DWI": (1.0, 0.0, 0.0)}
VENDORS = ("siemens", "ge", "philips")


@dataclass(frozen=True)
class PhantomConfig:
    """Knobs of the generator. `PhantomConfig.sized('small')` is for tests, 'demo' (default) for the demo/training."""
    grid_mm: float = 2.0
    geometry: GeometryRanges = GeometryRanges()
    n_sequences: Tuple[int, int] = (2, 5)
    labels: Tuple[str, ...] = LABELS
    p_localizer: float = 0.5
    p_junk: float = 0.3
    slab_samples: int = 2          # samples averaged across a thick slice (partial volume)

    @classmethod
    def sized(cls, size: str = "demo", **changes) -> "PhantomConfig":
        if size == "small":
            geometry = GeometryRanges(matrix=(64, 80, 96), max_slices=24, min_slices=10)
            return replace(cls(geometry=geometry, slab_samples=1), **changes)
        if size == "demo":
            return replace(cls(), **changes)
        raise ValueError(f"unknown phantom size {size!r}: 'small' or 'demo'")


@dataclass(repr=False)
class PhantomSeries:
    """One series. kind 'image' holds a 3D volume (and its mask); 'localizer' holds `parts`, 3 small stacks in
    3 planes; 'junk' is a screen save (one 2D image) or a vendor's non-image report object (no pixels)."""
    kind: str
    sequence: str                  # T1, T2, FLAIR, T1c, DWI; 'localizer'; 'screen save' or 'report object'
    description: str
    series_number: int
    array: Optional[np.ndarray] = None      # (K, J, I) float32, exactly what a reader gets back from the files
    affine: Optional[np.ndarray] = None     # (i, j, k, 1) -> RAS mm
    mask: Optional[np.ndarray] = None       # (K, J, I) uint8 ground truth on this grid (0, 1 lesion, 2 oedema)
    geometry: Optional[SeriesGeometry] = None
    slope: float = 1.0                      # how pixels are stored: array = stored * slope (intercept 0)
    unsigned: bool = False
    parts: List[Tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def __repr__(self) -> str:
        shape = None if self.array is None else tuple(self.array.shape)
        return f"PhantomSeries({self.kind}, {self.sequence!r}, {self.description!r}, shape={shape})"


@dataclass(repr=False)
class PhantomStudy:
    study_id: str
    seed: int
    label: str
    series: List[PhantomSeries]
    world_mask: np.ndarray          # (K, J, I) uint8 on the world grid
    world_affine: np.ndarray        # (i, j, k, 1) -> RAS (MNI) mm of world_mask
    report: str
    findings: Dict
    vendor: str
    patient_name: str = "PHANTOM^0000"

    @property
    def images(self) -> List[PhantomSeries]:
        """The series a reader should load as scans, in series-number order."""
        return [s for s in self.series if s.kind == "image"]

    @property
    def sequences(self) -> List[str]:
        return [s.sequence for s in self.images]

    def to_study(self):
        """The image series as a `HLIPCore.data.Study` without touching the disk (what `load_study` would return
        for the written DICOM folder, localizer and junk series aside)."""
        from ..data.study import Scan, Study
        return Study(scans=[Scan(array=s.array.copy(), affine=s.affine.copy(), modality="MR", description=s.description,
                                 series_uid=f"{self.study_id}/{s.series_number}", source=f"phantom:{self.study_id}")
                            for s in self.images])

    def __repr__(self) -> str:
        return f"PhantomStudy({self.study_id!r}, label={self.label!r}, series={self.series!r})"


def _choose_sequences(rng: np.random.Generator, label: str, config: PhantomConfig) -> List[str]:
    low, high = config.n_sequences
    count = int(rng.integers(low, high + 1))
    weights = np.array([SEQUENCE_WEIGHTS[s] for s in SEQUENCES])
    chosen = list(rng.choice(SEQUENCES, size=count, replace=False, p=weights / weights.sum()))
    if not set(chosen) & set(SHOWS[label]):   # the study must show its pathology somewhere
        chosen[int(rng.integers(count))] = str(rng.choice(SHOWS[label]))
    return [s for s in ACQUISITION_ORDER if s in chosen]


def _description(vendor: str, sequence: str, plane: str, rng: np.random.Generator) -> str:
    p = {"siemens": {"axial": "tra", "sagittal": "sag", "coronal": "cor"},
         "ge": {"axial": "AX", "sagittal": "SAG", "coronal": "COR"},
         "philips": {"axial": "TRA", "sagittal": "SAG", "coronal": "COR"}}[vendor][plane]
    names = {
        "siemens": {"T1": [f"t1_se_{p}", f"t1_mprage_{p}", f"t1_fl2d_{p}"], "T2": [f"t2_tse_{p}", f"t2_blade_{p}"],
                    "FLAIR": [f"t2_tirm_{p}_dark-fluid", f"t2_flair_{p}"], "T1c": [f"t1_se_{p}_+C", f"t1_mprage_{p}_post"],
                    "DWI": ["ep2d_diff_3scan_trace_p2_TRACEW", "ep2d_diff_b1000_TRACEW"]},
        "ge": {"T1": [f"{p} T1", f"{p} T1 FLAIR", f"{p} T1 SE"], "T2": [f"{p} T2 FRFSE", f"{p} T2 PROPELLER"],
               "FLAIR": [f"{p} T2 FLAIR", f"{p} FLAIR"], "T1c": [f"{p} T1 POST", f"{p} T1+C", f"{p} T1 GAD"],
               "DWI": [f"{p} DWI ASSET", f"{p} DIFFUSION b1000"]},
        "philips": {"T1": [f"T1W_SE_{p}", f"T1W_FFE_{p}"], "T2": [f"T2W_TSE_{p}", f"T2_{p}"],
                    "FLAIR": [f"FLAIR_{p}", f"T2W_FLAIR_{p} SENSE"], "T1c": [f"T1W_SE_{p} +GD", f"T1W_{p}_CE"],
                    "DWI": ["DWI_SENSE", f"DWI_{p} b1000"]},
    }[vendor][sequence]
    return str(rng.choice(names))


def _store(image: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, float, bool]:
    """Quantises as a scanner stores pixels: mostly int16 with slope 1, sometimes uint16 with a rescale slope.
    Returns (the values a reader recovers, slope, unsigned)."""
    if rng.random() < 0.3:
        slope = float(rng.choice([0.25, 0.5, 2.0]))
        stored = np.clip(np.round(image / slope), 0, 65535).astype(np.uint16)
        return stored.astype(np.float32) * np.float32(slope), slope, True
    stored = np.clip(np.round(image), -32768, 32767).astype(np.int16)
    return stored.astype(np.float32), 1.0, False


def _acquire(world: np.ndarray, anatomy, geometry: SeriesGeometry, sequence: str, config: PhantomConfig,
             rng: np.random.Generator) -> np.ndarray:
    image = resample(world, anatomy, geometry, order=1, slab_samples=config.slab_samples)
    image *= bias_field(*world_axes(geometry), rng, rng.uniform(0.05, 0.25))
    white = float(rng.uniform(300, 1500))       # scanner gain: white matter on T1 at this value
    sigma = float(rng.uniform(*NOISE_RANGE[sequence])) * 0.8
    return add_rician_noise(image, sigma, rng) * np.float32(white / 0.8)


def _localizer(world_t1: np.ndarray, anatomy, config: PhantomConfig, rng: np.random.Generator, number: int,
               vendor: str) -> PhantomSeries:
    """A 3-plane scout: three 3-slice stacks, one per plane, low resolution, thick slices, no tilt."""
    ranges = replace(config.geometry, matrix=(min(config.geometry.matrix),), fov_mm=(260.0, 280.0),
                     thickness_mm=(8.0, 10.0), p_oblique=0.0, p_gap=0.0, min_slices=3, max_slices=3)
    parts = []
    for plane in ("sagittal", "coronal", "axial"):
        geometry = plan_series(rng, plane, anatomy, ranges)
        image = resample(world_t1, anatomy, geometry, order=1)
        image = add_rician_noise(image, 0.04, rng) * np.float32(rng.uniform(400, 1200))
        parts.append((np.clip(np.round(image), 0, 32767).astype(np.float32), geometry.affine))
    name = {"siemens": "localizer", "ge": "3-Plane Loc", "philips": "Survey"}[vendor]
    return PhantomSeries("localizer", "localizer", name, number, parts=parts)


def _junk(images: List[PhantomSeries], rng: np.random.Generator, number: int, vendor: str) -> PhantomSeries:
    """Something real archives hold besides images: a screen save, or a vendor's protocol object without pixels."""
    if vendor == "siemens" and rng.random() < 0.6:
        return PhantomSeries("junk", "report object", "PhoenixZIPReport", number)
    source = images[int(rng.integers(len(images)))]
    snapshot = source.array[source.array.shape[0] // 2][None]
    return PhantomSeries("junk", "screen save", "Screen Save", number, array=np.round(snapshot).astype(np.float32))


def generate_study(seed: int, label: Optional[str] = None, config: PhantomConfig = PhantomConfig(),
                   study_id: Optional[str] = None, patient_name: Optional[str] = None) -> PhantomStudy:
    """One phantom study, deterministic given (seed, label, config). label None draws one of config.labels."""
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(5)]
    r_label, r_lesion, r_protocol, r_acquire, r_report = streams
    label = label or str(r_label.choice(config.labels))
    anatomy = load_anatomy(config.grid_mm)
    lesion: Lesion = make_lesion(label, anatomy, r_lesion)

    vendor = str(r_protocol.choice(VENDORS))
    sequences = _choose_sequences(r_protocol, label, config)
    table = contrast_table(r_acquire)
    series_number = (lambda n: 100 * n + 1) if vendor == "philips" else (lambda n: n)  # Philips: 101, 201, ...
    series: List[PhantomSeries] = []
    world_t1 = None
    if r_protocol.random() < config.p_localizer:
        world_t1 = render_world(anatomy, lesion, "T1", table, r_acquire)
        series.append(_localizer(world_t1, anatomy, config, r_acquire, series_number(1), vendor))
    for n, sequence in enumerate(sequences, start=2):
        number = series_number(n)
        plane = str(r_protocol.choice(("axial", "sagittal", "coronal"), p=PLANE_WEIGHTS[sequence]))
        ranges = config.geometry
        matrix = ([m for m in ranges.matrix if m <= 128] or [min(ranges.matrix)]) if sequence == "DWI" else None
        thickness = (max(4.0, ranges.thickness_mm[0]), max(ranges.thickness_mm)) if sequence == "DWI" else None
        geometry = plan_series(r_protocol, plane, anatomy, ranges, thickness, matrix)
        world = world_t1 if sequence == "T1" and world_t1 is not None else \
            render_world(anatomy, lesion, sequence, table, r_acquire)
        image, slope, unsigned = _store(_acquire(world, anatomy, geometry, sequence, config, r_acquire), r_protocol)
        mask = resample(lesion.mask, anatomy, geometry, order=0).astype(np.uint8)
        series.append(PhantomSeries("image", sequence, _description(vendor, sequence, plane, r_protocol), number,
                                    image, geometry.affine, mask, geometry, slope, unsigned))
    if r_protocol.random() < config.p_junk:
        series.append(_junk([s for s in series if s.kind == "image"], r_protocol, series_number(99), vendor))

    report = make_report(lesion.findings, [(s.sequence, s.geometry.plane) for s in series if s.kind == "image"],
                         r_report)
    study_id = study_id or f"phantom_{int(seed)}"
    return PhantomStudy(study_id=study_id, seed=int(seed), label=label, series=series,
                        world_mask=np.ascontiguousarray(lesion.mask.transpose(2, 1, 0)),
                        world_affine=anatomy.affine.copy(), report=report, findings=lesion.findings, vendor=vendor,
                        patient_name=patient_name or f"PHANTOM^{int(seed) % 10000:04d}")
