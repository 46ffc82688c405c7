"""`hlip analyze STUDY... --model ID|PATH --prompts NAME|FILE --out DIR`: zero-shot scores and attention maps.

One study: results go straight into DIR. Several: DIR/<study>/ each plus DIR/scores.csv. Exit code 0 when every
study was analysed, 1 when any failed (the others are still done), 2 for a usage or model error.
"""
# attention_maps.METHODS, spelled out so that building the parser does not import torch (a test keeps them equal)
ATTENTION_METHODS = ("auto", "gradcam", "refined", "rollout")


def add_parser(sub):
    p = sub.add_parser("analyze", help="zero-shot scores and attention maps for one or more studies")
    p.add_argument("studies", nargs="+", metavar="STUDY", help="DICOM folder, DICOMDIR, NIfTI/NRRD file")
    p.add_argument("--model", default="hlip-demo", help="catalog id, checkpoint file or model folder (default: hlip-demo)")
    p.add_argument("--config", help="model config for a bare checkpoint whose weights fit several configs")
    p.add_argument("--tokenizer", help="tokenizer folder or hub name (default: the model's)")
    p.add_argument("--prompts", default=None, help="built-in prompt set name or JSON/YAML file (default: the model's)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--attention", default="top", help="top | all | none | CLASS or TASK/CLASS (default: top)")
    p.add_argument("--attention-method", default="auto", choices=ATTENTION_METHODS,
                   help="auto (default): refined for a model with a conv stem, else gradcam (the reference's)")
    p.add_argument("--map-smooth-mm", type=float, metavar="MM",
                   help="Gaussian sigma of the maps in mm, 0 for none (default: 8 for refined maps, else 0)")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="inference precision")
    p.add_argument("--num-slices", type=int, help="model input depth (default: the model's)")
    p.add_argument("--max-scans", type=int, default=40)
    p.add_argument("--include-modality", action="append", default=[], metavar="MOD")
    p.add_argument("--exclude-description", metavar="REGEX", help="skip series whose description matches")
    p.add_argument("--min-slices", type=int, default=1)
    p.add_argument("--download", action="store_true", help="download a catalog model that is not cached yet")
    p.add_argument("--force", action="store_true", help="redo studies that already have a report")
    p.add_argument("--no-overview", action="store_true", help="do not write overview.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown for several studies)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..analyze import AnalyzeOptions, analyze_batch
    from ..data import ScanSelection

    options = AnalyzeOptions(
        model=args.model, config=args.config, tokenizer=args.tokenizer, prompts=args.prompts,
        device=args.device, precision=args.dtype, attention=args.attention, attention_method=args.attention_method,
        map_smooth_mm=args.map_smooth_mm,
        num_slices=args.num_slices, overview=not args.no_overview, download=args.download,
        selection=ScanSelection(max_scans=args.max_scans, include_modalities=tuple(args.include_modality),
                                exclude_description=args.exclude_description, min_slices=args.min_slices))
    out = Path(args.out)
    rows = analyze_batch(args.studies, out, options, force=args.force, show_progress=not args.no_progress,
                         flat=len(args.studies) == 1)
    failed = [r for r in rows if r.get("status") != "ok"]
    for row in rows:
        if row.get("status") == "ok":
            top = "; ".join(f"{task}: {cls} ({row['scores'][task][cls]:.2f})" for task, cls in row["top"].items())
            print(f"{row['study']}: {top}")
        else:
            print(f"{row['study']}: FAILED: {row.get('error')}")
    if len(args.studies) > 1:
        print(f"{len(rows) - len(failed)}/{len(rows)} studies analysed; scores in {out / 'scores.csv'}")
    return 1 if failed else 0
