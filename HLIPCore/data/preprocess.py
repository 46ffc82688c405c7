"""Scans -> the model's input tensor, as HLIP's reference code prepares them, with every step recorded.

MRI (reference: data/pub_brain_5/*/process.py, hlip_test/inference_pub_brain_5.py):
  reorient to RPI -> through-plane axis first (coronal/sagittal acquisitions; stroke/process.py) -> clip to the
  0.5-99.5 percentiles and min-max to [0, 1] -> pad H, W to a square -> bilinear resize to resize_hw^2 (256 for
  the reference's 224 grid; img_size * 256/224 for others) ->
  nearest-exact resample of depth to num_slices -> centre crop H, W to img_size[1:] -> (x - 0.449) / 0.226.
MRI with `mri_spacing` (a choice for small models trained from scratch, e.g. the demo model): reorient to RPI and
  keep that anatomical frame (no through-plane-first) -> trilinear resample to `mri_spacing` (D, H, W) mm -> clip
  to the percentiles and min-max to [0, 1] -> centre pad/crop to img_size -> normalise. Every scan of a study then
  lies on the same millimetre grid, axial, sagittal and coronal acquisitions alike, so a token position means the
  same anatomy in every scan; the reference's pipeline instead gives each acquisition plane its own layout, which a
  model pre-trained on 220K studies absorbs but a demo-sized one trained on a few hundred cannot.
CT (reference: data/ct_rate/process.py, hlip_test/inference_rad_chestct.py):
  [choice: reorient to RPI and through-plane first, as MRI; the reference reads curated NIfTI as stored and does not
  reorient] -> trilinear resample to ct_spacing (3, 1, 1) mm with size int(n * spacing / target) -> window
  (HU + 1150) / 1500 clipped to [0, 1] -> centre pad/crop to (num_slices, *img_size[1:]) -> normalise.
Depth: the tensor's depth is `num_slices` (default img_size[0]). The reference evaluates MRI at 144 slices with a
model grid of 48; when num_slices != img_size[0] the model must interpolate its depth position embeddings.
Every result carries a TransformRecord whose `to_original` sends model-grid maps back to the scan's voxels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..errors import ConfigError, InputError
from .study import Scan, Study
from .transforms import (CenterPadCrop, Normalize, PadToSquare, PercentileClipMinMax, Resize, TransformRecord,
                         Window, apply_step, current_spacing, reorient_step, through_plane_step)


@dataclass
class PreprocessConfig:
    """How scans become model input. Defaults follow the HLIP reference (brain MRI model, 48x224x224 grid)."""
    mode: str = "auto"                          # 'mri', 'ct', or 'auto': 'ct' for CT scans, 'mri' for all others
    img_size: Tuple[int, int, int] = (48, 224, 224)  # (D, H, W) of the model grid
    num_slices: Optional[int] = None            # tensor depth; None = img_size[0]
    resize_hw: Optional[int] = None             # MRI: square side before the centre crop to img_size[1:];
    #   None = img_size * 256/224: the reference's 256 -> 224 keeps 7/8 of the field of view on any grid (a fixed
    #   256 would leave a 128 grid only the central half of the head, and most lesions outside it)
    orientation: str = "RPI"                    # axis codes of (W, H, D) after reorientation, as the reference
    through_plane_first: bool = True            # coronal/sagittal acquisitions: largest-spacing axis becomes D
    percentiles: Tuple[float, float] = (0.5, 99.5)
    ct_window: Tuple[float, float] = (-1150.0, 350.0)  # HU -> (HU + 1150) / 1500
    ct_spacing: Tuple[float, float, float] = (3.0, 1.0, 1.0)  # (z, y, x) = (D, H, W) mm
    mri_spacing: Optional[Tuple[float, float, float]] = None  # MRI: resample to this (D, H, W) mm in the RPI frame
    mean: float = 0.449
    std: float = 0.226

    def __post_init__(self):
        if self.mode not in ("auto", "mri", "ct"):
            raise ValueError(f"mode must be 'auto', 'mri' or 'ct', not {self.mode!r}")
        self.img_size = tuple(int(n) for n in self.img_size)
        if len(self.img_size) != 3:
            raise ValueError(f"img_size must be (D, H, W), not {self.img_size}")
        # tuples of floats whether the values came from the defaults or from a JSON config's lists: the study
        # cache's key is this config's repr, and an exported model must find the cache its training made
        self.percentiles = _floats(self.percentiles, 2, "percentiles")
        self.ct_window = _floats(self.ct_window, 2, "ct_window")
        self.ct_spacing = _floats(self.ct_spacing, 3, "ct_spacing")
        self.mean, self.std = float(self.mean), float(self.std)
        if self.resize_hw is None:
            self.resize_hw = round(max(self.img_size[1:]) * 256 / 224)
        self.resize_hw = int(self.resize_hw)
        if self.mri_spacing is not None:
            self.mri_spacing = _floats(self.mri_spacing, 3, "mri_spacing")
            if min(self.mri_spacing) <= 0:
                raise ValueError(f"mri_spacing must be three positive (D, H, W) mm values, not {self.mri_spacing}")
        if self.resize_hw < max(self.img_size[1:]):
            raise ValueError(f"resize_hw {self.resize_hw} is smaller than the crop {self.img_size[1:]}")

    @property
    def depth(self) -> int:
        return int(self.num_slices or self.img_size[0])

    @property
    def tensor_shape(self) -> Tuple[int, int, int]:
        """(D, H, W) of every preprocessed scan: (num_slices, img_size[1], img_size[2])."""
        return (self.depth, self.img_size[1], self.img_size[2])

    def mode_for(self, scan: Scan) -> str:
        if self.mode != "auto":
            return self.mode
        return "ct" if scan.modality.upper() == "CT" else "mri"


@dataclass
class PreparedScan:
    tensor: torch.Tensor          # [1, D, H, W] float32
    record: TransformRecord
    mode: str = "mri"


@dataclass
class PreparedStudy:
    tensor: torch.Tensor          # [N, 1, D, H, W] float32
    scans: List[Scan] = field(default_factory=list)
    records: List[TransformRecord] = field(default_factory=list)


def _floats(values, n: int, name: str) -> tuple:
    values = tuple(float(v) for v in values)
    if len(values) != n:
        raise ValueError(f"{name} must be {n} numbers, not {values}")
    return values


def model_preprocess_config(preprocess: dict, model_cfg: dict, num_slices: Optional[int] = None,
                            source: str = "model preprocessing") -> PreprocessConfig:
    """A model's own preprocessing: every field its config, catalog entry or training config sets (e.g.
    `mri_spacing`), on the model's grid unless `img_size` is given, with an optional depth override. Analysis,
    evaluation and training all build it here, so the three never disagree. `source` names it in errors."""
    pre = {"mode": "auto", "img_size": model_cfg["vision_cfg"]["img_size"], **preprocess}
    if num_slices:
        pre["num_slices"] = num_slices
    try:
        return PreprocessConfig(**pre)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def preprocess_scan(scan: Scan, cfg: Optional[PreprocessConfig] = None) -> PreparedScan:
    """One scan -> PreparedScan(tensor [1, D, H, W], record). D, H, W = cfg.tensor_shape for every scan."""
    cfg = cfg or PreprocessConfig()
    mode = cfg.mode_for(scan)
    record = TransformRecord(original_shape=tuple(scan.shape), original_affine=np.asarray(scan.affine, np.float64))
    x = torch.from_numpy(np.ascontiguousarray(scan.array, dtype=np.float32))[None]
    x = apply_step(reorient_step(scan.affine, cfg.orientation), x, record)
    resample_mri = mode == "mri" and cfg.mri_spacing is not None
    if cfg.through_plane_first and not resample_mri:
        step = through_plane_step(current_spacing(record))
        if step is not None:
            x = apply_step(step, x, record)
    d, h, w = cfg.tensor_shape
    if mode == "ct":
        x = apply_step(Resize(_size_at_spacing(x, record, cfg.ct_spacing, int), "trilinear"), x, record)
        x = apply_step(Window(*cfg.ct_window), x, record)
        x = apply_step(CenterPadCrop((d, h, w)), x, record)
    elif resample_mri:
        x = apply_step(Resize(_size_at_spacing(x, record, cfg.mri_spacing, round), "trilinear"), x, record)
        x = apply_step(PercentileClipMinMax(*cfg.percentiles), x, record)
        x = apply_step(CenterPadCrop((d, h, w)), x, record)
    else:
        x = apply_step(PercentileClipMinMax(*cfg.percentiles), x, record)
        x = apply_step(PadToSquare(), x, record)
        x = apply_step(Resize((None, cfg.resize_hw, cfg.resize_hw), "bilinear"), x, record)
        x = apply_step(Resize((d, None, None), "nearest-exact"), x, record)
        x = apply_step(CenterPadCrop((d, h, w)), x, record)
    x = apply_step(Normalize(cfg.mean, cfg.std), x, record)
    return PreparedScan(tensor=x.contiguous(), record=record, mode=mode)


def _size_at_spacing(x: torch.Tensor, record: TransformRecord, target, rounding) -> tuple:
    """(D, H, W) voxel counts that cover the current array's extent at `target` mm spacing. `int` truncates, as the
    reference's CT pipeline does; `round` keeps the extent closest."""
    spacing = current_spacing(record)
    return tuple(max(1, int(rounding(n * s / t))) for n, s, t in zip(x.shape[1:], spacing, target))


def preprocess_study(study: Study, cfg: Optional[PreprocessConfig] = None) -> PreparedStudy:
    """All scans of a study -> PreparedStudy(tensor [N, 1, D, H, W], scans, records), in the study's order."""
    cfg = cfg or PreprocessConfig()
    scans = list(study.scans if isinstance(study, Study) else study)
    if not scans:
        raise InputError("study has no scans to preprocess")
    prepared = [preprocess_scan(s, cfg) for s in scans]
    tensor = torch.stack([p.tensor for p in prepared], dim=0)
    return PreparedStudy(tensor=tensor, scans=scans, records=[p.record for p in prepared])
