"""`hlip phantoms --n N --seed S --out DIR`: write synthetic brain MRI studies with known labels, masks, reports."""
from __future__ import annotations

import argparse


def _labels(text: str):
    from ..phantoms import LABELS
    labels = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in labels if t not in LABELS]
    if bad or not labels:
        raise argparse.ArgumentTypeError(f"unknown label(s) {', '.join(bad) or '(none)'}; choose from {', '.join(LABELS)}")
    return labels


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("phantoms", help="write synthetic brain MRI studies (DICOM/NIfTI) with labels and reports",
                              description="Generate phantom brain MRI studies on the MNI152 anatomy: 2-5 series per "
                                          "study on their own grids, a Pub-Brain-5 label with a ground-truth mask, a "
                                          "free-text report; writes labels.csv and manifest.jsonl in --out.")
    p.add_argument("--n", type=int, required=True, help="number of studies")
    p.add_argument("--seed", type=int, default=0, help="dataset seed: the same seed writes identical files (default 0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=("dicom", "nifti", "both"), default="both", help="image format (default both)")
    p.add_argument("--labels", type=_labels, default=None, metavar="L1,L2",
                   help="labels to draw from, balanced (default: normal,stroke,glioma,meningioma,metastasis)")
    p.add_argument("--size", choices=("small", "demo"), default="demo",
                   help="small: 64-96 px, <= 24 slices (tests); demo: 96-160 px, <= 40 slices (default)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from tqdm import tqdm
    from ..phantoms import PhantomConfig, generate_dataset
    if args.n < 1:
        from ..errors import InputError
        raise InputError("--n must be at least 1")
    formats = ("dicom", "nifti") if args.format == "both" else (args.format,)
    config = PhantomConfig.sized(args.size)
    manifest = generate_dataset(args.n, args.seed, args.out, labels=args.labels, formats=formats, config=config,
                                progress=lambda it: tqdm(it, desc="phantoms", unit="study"))
    print(f"wrote {args.n} stud{'y' if args.n == 1 else 'ies'} to {args.out}; manifest {manifest}")
    return 0
