"""`hlip inspect STUDY`: list the scans found in a study and what was skipped and why."""
from __future__ import annotations

import argparse
import logging
from typing import List


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("inspect", help="list the scans of a study (DICOM folder, DICOMDIR, NIfTI, NRRD)",
                              description="Read a study as HLIP would and print its scans and skipped series.")
    p.add_argument("study", nargs="+", help="folder (searched recursively), DICOMDIR, NIfTI/NRRD file(s) or files")
    p.add_argument("--on-irregular", choices=("resample", "skip", "keep"), default="resample",
                   help="series with a missing slice or uneven spacing: resample (default), skip or keep as is")
    p.add_argument("--min-slices", type=int, default=3, help="fewer slices than this is a 2D image (default 3)")
    p.add_argument("--max-scans", type=int, default=40, help="scans passed to the model (default 40)")
    p.add_argument("--include-modality", action="append", default=[], metavar="MOD", help="keep only this modality")
    p.add_argument("--exclude-description", default=None, metavar="REGEX", help="drop scans whose description matches")
    p.set_defaults(func=run)
    return p


def _table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(str(r[c])) for r in rows + [header]) for c in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def run(args) -> int:
    from ..data.loader import load_study
    from ..data.select import ScanSelection, select_scans
    from ..data.study import LoadOptions

    source = args.study[0] if len(args.study) == 1 else args.study
    data_log = logging.getLogger("HLIPCore.data")
    level = data_log.level
    if not getattr(args, "debug", False):
        data_log.setLevel(logging.ERROR)  # skipped series and warnings are printed below, once
    try:
        study = load_study(source, LoadOptions(on_irregular=args.on_irregular, min_slices=args.min_slices))
    finally:
        data_log.setLevel(level)
    study = select_scans(study, ScanSelection(max_scans=args.max_scans, include_modalities=args.include_modality,
                                              exclude_description=args.exclude_description))
    rows = []
    for n, s in enumerate(study.scans, 1):
        shape = "x".join(str(v) for v in s.shape)
        spacing = " x ".join(f"{v:.3g}" for v in s.spacing)
        rows.append([str(n), s.modality, s.description or "-", shape, spacing, s.orientation, str(s.num_files),
                     "; ".join(s.warnings) or ""])
    print(f"{len(study.scans)} scan(s), modality {study.modality}")
    print(_table(rows, ["#", "modality", "description", "shape (KxJxI)", "spacing mm (i x j x k)", "orient",
                        "files", "warnings"]))
    if study.skipped:
        print(f"\n{len(study.skipped)} skipped:")
        for s in study.skipped:
            print(f"  - {s.source}: {s.reason}")
    return 0
