"""Training data: a JSONL manifest of studies and reports, a cache of preprocessed studies, sampling and batching.

Manifest: one JSON object per line with `study` (a DICOM folder, NIfTI/NRRD file, or a list of files; `nifti`
is used when `study` is absent), `report` (text), and optionally `label` (one value, e.g. "glioma") and/or
`labels` ({task: class} or {task: [classes]} for multilabel tasks). Paths are relative to the manifest file.
`series_masks` (optional, one lesion mask per scan file of `study`/`nifti`, 0 = background, 1 = the lesion itself,
other values = surrounding abnormality such as oedema) gives the per-token
targets of the optional token loss (see loop.py): the phantom generator writes them. `series_shows` (optional, one
boolean per scan file) says whether that series shows the finding at all: a meningioma's mask covers its place on
every series, but only the contrast T1 shows it, so its tokens on the other series get no lesion target (they are
left out of the token loss rather than called lesion where nothing is visible, or normal where a lesion is).

Batching (a choice): the trunk needs one scan count per forward pass, and studies differ in scan count. Every
study of a global batch contributes k = min(max_scans_train, most scans in that global batch) scans: k distinct
ones drawn at random when it has that many, else all of its scans plus random repeats (as the reference pads by
repetition). Taking the fewest instead would drop, for most studies, the very sequence that shows their finding
(a meningioma is only seen on contrast T1) while the report still names it. k depends only on the global batch,
so 1 process x 4 studies and 2 processes x 2 see the same data.

Augmentations keep the study structure: a random subset and order of the study's scans (the reference's
augmentation), and per scan a random intensity scale and shift in normalised units. No flips: reports name the
side of a finding, so a left-right flip would contradict the text.

Randomness is stateless: sampling for (seed, epoch, study) comes from its own generator, so the data of any step
is known without replaying earlier steps (exact resume) and does not depend on the process count or workers.
"""
import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from ..errors import InputError
from .report_text import drop_words, report_text

log = logging.getLogger("HLIPCore.training")
CACHE_FORMAT = 2   # 2: token targets hold the abnormal and the lesion-core fraction


@dataclass
class ManifestEntry:
    study: List[Path]                 # one folder/file, or several files forming the study
    report: str = ""
    label: Optional[str] = None
    labels: Dict[str, Union[str, List[str]]] = field(default_factory=dict)
    line: int = 0
    mask: Optional[Path] = None       # ground-truth lesion mask (NIfTI, 1 = lesion) for the pointing game
    series_masks: List[Path] = field(default_factory=list)  # one mask per scan file, for token targets
    series_shows: List[bool] = field(default_factory=list)  # per scan file: does it show the finding (default yes)

    @property
    def name(self) -> str:
        return str(self.study[0]) if len(self.study) == 1 else f"{self.study[0]} (+{len(self.study) - 1})"


def read_manifest(path: Union[str, Path], need_report: bool = True) -> List[ManifestEntry]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    entries = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{number}: expected a JSON object")
        series_masks = [(path.parent / m).resolve() for m in row.get("series_masks") or []]
        source = row.get("study", row.get("nifti"))
        if series_masks:  # masks are aligned with the scan files: read the study from those files
            source = row.get("nifti") or source
        if not source:
            raise InputError(f"{path}:{number}: no 'study' (or 'nifti') path")
        files = [source] if isinstance(source, str) else list(source)
        study = [(path.parent / f).resolve() for f in files]
        report = row.get("report", "")
        if need_report and (not isinstance(report, str) or not report.strip()):
            raise InputError(f"{path}:{number}: no 'report' text")
        labels = row.get("labels") or {}
        if not isinstance(labels, dict):
            raise InputError(f"{path}:{number}: 'labels' must map task -> class")
        label = row.get("label")
        mask = (path.parent / row["mask"]).resolve() if row.get("mask") else None
        if series_masks and len(series_masks) != len(study):
            raise InputError(f"{path}:{number}: {len(series_masks)} series_masks for {len(study)} scan files")
        shows = row.get("series_shows") or []
        if shows and (len(shows) != len(study) or not all(isinstance(v, bool) for v in shows)):
            raise InputError(f"{path}:{number}: 'series_shows' must hold one true/false per scan file "
                             f"({len(study)})")
        entries.append(ManifestEntry(study, str(report), None if label is None else str(label), labels, number,
                                     mask, series_masks, list(shows)))
    if not entries:
        raise InputError(f"{path}: manifest lists no studies")
    return entries


# -- preprocessed-study cache --------------------------------------------------------------------------------------

def _source_signature(paths: Sequence[Path]) -> str:
    """Changes when any file of the study changes (path, size, mtime of every file below a folder)."""
    parts = []
    for p in paths:
        files = [p] if p.is_file() else sorted(Path(r) / n for r, _, names in os.walk(p) for n in names)
        for f in files:
            st = f.stat()
            parts.append(f"{f}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(parts)


class StudyCache:
    """Preprocessed studies as float16 tensors [N, 1, D, H, W] in `<folder>/<key>.pt`.

    Reading DICOM and resampling every epoch would dominate training on a small CPU. The key covers the study's
    files (paths, sizes, mtimes), the preprocessing config and the scan limit, so a change to any of them
    re-prepares the study. float16 halves disk and memory; its ~1e-3 relative error is far below the intensity
    augmentation. Writes are atomic, so processes preparing the same study concurrently are harmless.
    """

    def __init__(self, folder: Union[str, Path], preprocess, max_scans: int = 40, selection=None,
                 token_grid: Optional[Sequence[int]] = None):
        self.folder = Path(folder)
        self.token_grid = tuple(token_grid) if token_grid else None  # patch size: cache lesion fraction per token
        self.cell_grid: Optional[Tuple[int, int, int]] = None  # the stem loss's cell size, when it is on
        self.preprocess = preprocess
        self.max_scans = max_scans
        self.selection = selection
        self._counts: Dict[str, int] = {}

    def key(self, entry: ManifestEntry) -> str:
        blob = "\n".join([f"format {CACHE_FORMAT}", _source_signature(entry.study + entry.series_masks),
                          repr(self.preprocess),
                          f"max_scans {self.max_scans}", repr(self.selection)])
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def path(self, entry: ManifestEntry) -> Path:
        return self.folder / f"{self.key(entry)}.pt"

    def prepare(self, entry: ManifestEntry) -> torch.Tensor:
        from ..data import ScanSelection, load_study, preprocess_study, select_scans
        from ..model.checkpoint import save_torch_atomic
        target = self.path(entry)
        if target.is_file():
            try:
                return torch.load(target, map_location="cpu", weights_only=True)
            except Exception as exc:  # a damaged cache file is re-made, never fatal
                log.warning("re-preparing %s: unreadable cache file (%s)", entry.name, type(exc).__name__)
        source = [str(p) for p in entry.study]
        study = load_study(source[0] if len(source) == 1 else source)
        selection = self.selection or ScanSelection(max_scans=self.max_scans)
        study = select_scans(study, selection)
        if not study.scans:
            raise InputError(f"{entry.name}: no usable scans")
        tensor = preprocess_study(study, self.preprocess).tensor.to(torch.float16)
        save_torch_atomic(tensor, target)
        return tensor

    def load(self, entry: ManifestEntry) -> torch.Tensor:
        return self.prepare(entry).float()

    def token_targets(self, entry: ManifestEntry) -> Optional[torch.Tensor]:
        """Per token of every scan, [N, 2, D', H', W'] (float16): the fraction of abnormal voxels (mask > 0:
        the lesion and its oedema) and of lesion-core voxels (mask == 1), from the entry's `series_masks` pushed
        through the same geometric steps as the images; None without masks."""
        return self.mask_fractions(entry, self.token_grid) if self.token_grid else None

    def cell_targets(self, entry: ManifestEntry) -> Optional[torch.Tensor]:
        """The same fractions per cell of the conv stem's refine layer (`cell_grid` voxels each), for the stem
        loss; None without masks or without a cell grid."""
        return self.mask_fractions(entry, self.cell_grid) if self.cell_grid else None

    def mask_fractions(self, entry: ManifestEntry, pool: Sequence[int]) -> Optional[torch.Tensor]:
        """[N, 2, D/pd, H/ph, W/pw] abnormal and core fractions per `pool` block (cached next to the study)."""
        if not entry.series_masks:
            return None
        from ..data import load_study, preprocess_scan
        from ..model.checkpoint import save_torch_atomic
        # the pooling names the file: a model with another token grid must not read these fractions
        target = self.path(entry).with_suffix(".tokens{}.pt".format("x".join(map(str, pool))))
        if target.is_file():
            try:
                return torch.load(target, map_location="cpu", weights_only=True)
            except Exception:
                pass
        geometric = dataclasses.replace(self.preprocess, percentiles=(0.0, 100.0), mean=0.0, std=1.0)
        fractions = []
        for mask_file in entry.series_masks:
            mask = load_study(mask_file).scans[0]
            labels = mask.array
            per_part = []
            for part in (labels > 0, labels == 1):
                mask.array = part.astype("float32")
                # min-max of a 0/1 mask over its 0-100 percentiles is the identity: only geometry is applied
                grid = preprocess_scan(mask, geometric).tensor.float()
                per_part.append(torch.nn.functional.avg_pool3d(grid, tuple(pool))[0])
            fractions.append(torch.stack(per_part))
        tokens = torch.stack(fractions).to(torch.float16)
        if tokens.shape[0] != self.num_scans(entry):  # (the scan count is cached: no second read of the study)
            raise InputError(f"{entry.name}: {tokens.shape[0]} series masks for {self.num_scans(entry)} prepared "
                             "scans")
        save_torch_atomic(tokens, target)
        return tokens

    def num_scans(self, entry: ManifestEntry) -> int:
        key = self.key(entry)
        if key not in self._counts:
            self._counts[key] = int(self.prepare(entry).shape[0])
        return self._counts[key]


# -- sampling ------------------------------------------------------------------------------------------------------

def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + index)


def augment_study(scans: torch.Tensor, k: int, gen: torch.Generator, scale: float = 0.0, shift: float = 0.0,
                  shuffle: bool = True, return_order: bool = False, drop: float = 0.0):
    """k scans of a [N, 1, D, H, W] study in random order (all N plus random repeats when N < k), each with a
    random intensity scale/shift (and the scan indices taken, with `return_order`). `drop`: each scan is left out
    with this probability first (at least one stays), as if the study had been acquired without that sequence."""
    n = scans.shape[0]
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    if drop:
        keep = torch.rand(n, generator=gen) >= drop
        keep[0] |= not bool(keep.any())
        order = order[keep]
    m = order.numel()
    order = order[:k]
    if m < k:  # pad by repetition: every kept scan is seen, the batch keeps one scan count
        # without drop, `order` holds every scan and the repeats index the scans directly (the draws of the runs
        # made before `drop` existed, so their recipes still reproduce)
        extra = order[torch.randint(m, (k - m,), generator=gen)] if drop else torch.randint(n, (k - n,), generator=gen)
        order = torch.cat([order, extra])[torch.randperm(k, generator=gen)] if shuffle else torch.cat([order, extra])
    out = scans[order]
    if scale or shift:
        s = 1.0 + (torch.rand(k, generator=gen) * 2 - 1) * scale
        t = (torch.rand(k, generator=gen) * 2 - 1) * shift
        out = out * s.view(-1, 1, 1, 1, 1) + t.view(-1, 1, 1, 1, 1)
    return (out, order) if return_order else out


def _hidden(entry: ManifestEntry, order: torch.Tensor) -> torch.Tensor:
    """[k, 1, 1, 1] True for the sampled scans whose series does not show the entry's finding (`series_shows`)."""
    return ~torch.tensor(entry.series_shows)[order].view(-1, 1, 1, 1)


class TrainDataset(torch.utils.data.Dataset):
    """Items are addressed by (study index, scans to take, epoch) so that a sampler can fix k per global batch."""

    def __init__(self, entries: List[ManifestEntry], cache: StudyCache, seed: int = 0, augment: bool = True,
                 intensity_scale: float = 0.1, intensity_shift: float = 0.1, report_mode: str = "full",
                 word_dropout: float = 0.0, scan_dropout: float = 0.0):
        self.entries, self.cache, self.seed = entries, cache, seed
        self.scan_dropout = float(scan_dropout)
        self.augment, self.scale, self.shift = augment, intensity_scale, intensity_shift
        self.report_mode = report_mode
        self.word_dropout = float(word_dropout)
        self.token_classes: Optional[List[str]] = None   # set by enable_token_targets
        self.cell_shape: Optional[Tuple[int, int, int]] = None  # set by enable_cell_targets

    def enable_token_targets(self, classes: List[str], normal_class: str, token_shape, threshold: float,
                             core_threshold: Optional[float] = None) -> None:
        """Items gain per-token class targets (the study's label where a token is >= threshold lesion or, with
        `core_threshold`, >= core_threshold lesion core; else `normal_class`; -1 without masks) and the study's
        class index (-1 when unlabelled)."""
        self.token_classes, self.normal_class = list(classes), normal_class
        self.token_shape, self.token_threshold = tuple(token_shape), float(threshold)
        self.core_threshold = None if core_threshold is None else float(core_threshold)

    def enable_cell_targets(self, cell_shape, core_threshold: float) -> None:
        """Items (with token targets) also carry the stem loss's per-cell targets [k, d, h, w]: 1 where a cell is
        >= core_threshold lesion core, 0 where it holds no core (oedema included: the peak belongs on the core),
        -1 (no target) for a cell with a little core, for the lesion of a series that does not show it and for
        studies without masks."""
        self.cell_shape, self.cell_threshold = tuple(cell_shape), float(core_threshold)

    def cell_item(self, entry: ManifestEntry, order: torch.Tensor, k: int) -> torch.Tensor:
        cells = self.cache.cell_targets(entry)
        if cells is None or entry.label not in self.token_classes:
            return torch.full((k,) + self.cell_shape, -1, dtype=torch.long)
        abnormal, core = cells[order].float().unbind(1)
        targets = (core >= self.cell_threshold).long()
        targets[(core > 0) & (core < self.cell_threshold)] = -1
        if entry.series_shows:
            targets[(abnormal > 0) & _hidden(entry, order)] = -1
        return targets

    def __len__(self) -> int:
        return len(self.entries)

    def num_scans(self, index: int) -> int:
        return self.cache.num_scans(self.entries[index])

    def __getitem__(self, item):
        index, k, epoch = item
        gen = sample_generator(self.seed, epoch, index)
        scans = self.cache.load(self.entries[index])
        if self.augment:
            scans, order = augment_study(scans, k, gen, self.scale, self.shift, return_order=True,
                                          drop=self.scan_dropout)
        else:
            scans, order = augment_study(scans, k, gen, shuffle=False, return_order=True)
        text = report_text(self.entries[index].report, self.report_mode, gen)
        if self.word_dropout:
            text = drop_words(text, self.word_dropout, gen)
        if self.token_classes is None:
            return scans, text
        label = self.entries[index].label
        study_target = torch.tensor(self.token_classes.index(label) if label in self.token_classes else -1)
        cells = (self.cell_item(self.entries[index], order, k),) if self.cell_shape else ()
        tokens = self.cache.token_targets(self.entries[index])
        if tokens is None or label not in self.token_classes:  # -1: no token loss for this study
            return (scans, text, torch.full((k,) + self.token_shape, -1, dtype=torch.long), study_target,
                    torch.zeros((k,) + self.token_shape)) + cells
        abnormal, core = tokens[order].float().unbind(1)
        lesion = abnormal >= self.token_threshold
        if self.core_threshold is not None:  # small lesions: a token holding a real part of one shows it
            lesion |= core >= self.core_threshold
        normal = self.token_classes.index(self.normal_class) if self.normal_class in self.token_classes else -1
        targets = torch.full(lesion.shape, normal, dtype=torch.long)
        # a token with a little lesion in it (below both thresholds) is neither clearly lesion nor normal: no
        # target (calling a small metastasis's token "normal" would teach the model to miss it)
        targets[abnormal > 0] = -1
        targets[lesion] = self.token_classes.index(label)
        if self.entries[index].series_shows:  # lesion tokens of a series that does not show it: no target, no attention
            hidden = _hidden(self.entries[index], order)
            targets[(abnormal > 0) & hidden] = -1
            core = core * ~hidden
        # where the class token should look: the lesion itself (not its oedema), in proportion to how much of
        # each token it fills, so the hottest token of the map is the one most inside the lesion
        return (scans, text, targets, study_target, core) + cells


class StepBatchSampler(torch.utils.data.Sampler):
    """Micro-batches of this process for optimiser steps `start_step` .. `total_steps - 1`.

    Epoch e visits the studies in a permutation seeded by (seed, e); global batch b of the epoch is the slice
    perm[b*G : (b+1)*G] with G = world * accum * batch (incomplete last batches are dropped). Process r takes the
    contiguous part [r*accum*batch : (r+1)*accum*batch], split into `accum` micro-batches: the loss gathers
    features in rank order, so the global batch is seen in the same order as by one process with G studies.
    """

    def __init__(self, dataset: TrainDataset, batch_size: int, accum: int, total_steps: int, start_step: int = 0,
                 rank: int = 0, world: int = 1, seed: int = 0, max_scans: int = 10):
        self.dataset, self.batch_size, self.accum = dataset, batch_size, accum
        self.total_steps, self.start_step = total_steps, start_step
        self.rank, self.world, self.seed, self.max_scans = rank, world, seed, max_scans
        self.global_batch = world * accum * batch_size
        self.steps_per_epoch = len(dataset) // self.global_batch
        if self.steps_per_epoch < 1:
            raise InputError(f"the training manifest has {len(dataset)} studies, fewer than one global batch "
                             f"({world} process(es) x {accum} x {batch_size})")

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.accum

    def epoch_order(self, epoch: int) -> List[int]:
        return torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()

    def global_batch_at(self, step: int) -> List[int]:
        epoch, b = divmod(step, self.steps_per_epoch)
        return self.epoch_order(epoch)[b * self.global_batch:(b + 1) * self.global_batch]

    def __iter__(self) -> Iterator[list]:
        for step in range(self.start_step, self.total_steps):
            epoch = step // self.steps_per_epoch
            batch = self.global_batch_at(step)
            k = min(self.max_scans, max(self.dataset.num_scans(i) for i in batch))
            per_rank = self.accum * self.batch_size
            mine = batch[self.rank * per_rank:(self.rank + 1) * per_rank]
            for j in range(self.accum):
                yield [(i, k, epoch) for i in mine[j * self.batch_size:(j + 1) * self.batch_size]]


def collate(items) -> tuple:
    """[(study [k, 1, D, H, W], report[, token targets, study class, lesion-core fractions[, cell targets]])] ->
    (images [B, k, 1, D, H, W], reports[, token targets [B, k, D', H', W'], study classes [B], core [B, k, D', H',
    W'][, cell targets [B, k, d, h, w]]])."""
    batch = (torch.stack([item[0] for item in items]), [item[1] for item in items])
    if len(items[0]) > 2:
        batch += tuple(torch.stack([item[i] for item in items]) for i in range(2, len(items[0])))
    return batch
