"""Which scans of a study go to the model: include/exclude rules, then at most `max_scans`, deterministically."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from .study import SkippedSeries, Study


@dataclass
class ScanSelection:
    """Rules applied in order: modality include/exclude, description include/exclude (case-insensitive regular
    expressions searched anywhere in the description), minimum slice count, then the first `max_scans` in the
    study's order (series number, then UID). `shuffle_seed` (training only) draws a seeded random subset instead."""
    max_scans: int = 40
    include_modalities: Sequence[str] = ()
    exclude_modalities: Sequence[str] = ()
    include_description: Optional[str] = None
    exclude_description: Optional[str] = None
    min_slices: int = 1
    shuffle_seed: Optional[int] = None


def select_scans(study: Study, selection: Optional[ScanSelection] = None) -> Study:
    """A new Study with the selected scans; each scan left out is added to `skipped` with the rule that did it."""
    sel = selection or ScanSelection()
    include_mod = {m.upper() for m in sel.include_modalities}
    exclude_mod = {m.upper() for m in sel.exclude_modalities}
    inc = re.compile(sel.include_description, re.I) if sel.include_description else None
    exc = re.compile(sel.exclude_description, re.I) if sel.exclude_description else None
    kept, skipped = [], list(study.skipped)
    for scan in study.scans:
        reason = None
        if include_mod and scan.modality.upper() not in include_mod:
            reason = f"modality {scan.modality} not in {sorted(include_mod)}"
        elif scan.modality.upper() in exclude_mod:
            reason = f"modality {scan.modality} excluded"
        elif inc is not None and not inc.search(scan.description or ""):
            reason = f"description does not match {sel.include_description!r}"
        elif exc is not None and exc.search(scan.description or ""):
            reason = f"description matches excluded {sel.exclude_description!r}"
        elif scan.shape[0] < sel.min_slices:
            reason = f"{scan.shape[0]} slices, fewer than {sel.min_slices}"
        if reason:
            skipped.append(SkippedSeries(_name(scan), "not selected: " + reason, scan.series_uid))
        else:
            kept.append(scan)
    if len(kept) > sel.max_scans:
        if sel.shuffle_seed is None:
            chosen = kept[: sel.max_scans]
        else:
            idx = sorted(random.Random(sel.shuffle_seed).sample(range(len(kept)), sel.max_scans))
            chosen = [kept[n] for n in idx]
        for scan in kept:
            if not any(scan is c for c in chosen):
                skipped.append(SkippedSeries(_name(scan), f"not selected: more than {sel.max_scans} scans",
                                             scan.series_uid))
        kept = chosen
    return Study(scans=kept, skipped=skipped)


def _name(scan) -> str:
    # no series UID: it is a DICOM identifier, and reports and logs carry none
    return f"{scan.modality} '{scan.description}' ({'x'.join(str(n) for n in scan.shape)})"
