"""`hlip eval --model ID|PATH --manifest FILE --prompts NAME`: zero-shot metrics per task on a labelled manifest."""


def add_parser(sub):
    p = sub.add_parser("eval", help="zero-shot evaluation (macro AUC, balanced accuracy, F1) on a labelled manifest")
    p.add_argument("--model", required=True, help="catalog id, checkpoint file or model folder")
    p.add_argument("--config", help="model config for a bare checkpoint")
    p.add_argument("--tokenizer", help="tokenizer folder or hub name")
    p.add_argument("--manifest", required=True, help="JSONL manifest with 'study' and 'label'/'labels'")
    p.add_argument("--prompts", required=True, help="prompt set name or file")
    p.add_argument("--labels", help="YAML/JSON {task: {manifest label: class}} when labels are not class names")
    p.add_argument("--out", help="folder for eval.json and eval_predictions.csv")
    p.add_argument("--cache-dir", help="preprocessed-study cache (default: a temporary folder)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-scans", type=int, default=40)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--pointing", metavar="TASK", nargs="?", const="disease",
                   help="also play the pointing game on studies with a lesion mask: is the map peak of the true "
                        "class of TASK (default: disease) inside the lesion?")
    from .cmd_analyze import ATTENTION_METHODS
    p.add_argument("--attention-method", default="auto", choices=ATTENTION_METHODS,
                   help="map method of the pointing game, as in hlip analyze (default: auto)")
    p.add_argument("--map-smooth-mm", type=float, metavar="MM",
                   help="Gaussian sigma of the maps in mm, as in hlip analyze (default: the method's)")
    p.set_defaults(func=run)


def run(args) -> int:
    import tempfile
    from pathlib import Path

    from ..data import model_preprocess_config
    from ..model.precision import resolve_device
    from ..model.resolve import load_model
    from ..prompts import load_prompt_set
    from ..documents import read_document
    from ..training.dataset import StudyCache, read_manifest
    from ..training.evaluate import evaluate, format_table

    device = resolve_device(args.device)
    model, tokenizer, resolved = load_model(args.model, config=args.config, tokenizer=args.tokenizer, device=device)
    prompt_set = load_prompt_set(args.prompts)
    entries = read_manifest(args.manifest, need_report=False)
    labels = read_document(Path(args.labels), "label map") if args.labels else None
    with tempfile.TemporaryDirectory(prefix="hlip-eval-") as tmp:
        pre = model_preprocess_config(resolved.preprocess, resolved.config, source=f"model preprocessing {resolved.preprocess}")
        cache = StudyCache(args.cache_dir or tmp, pre, max_scans=args.max_scans)
        result = evaluate(model, tokenizer, entries, prompt_set, cache, labels, device, args.dtype,
                          progress=not args.no_progress, out_dir=Path(args.out) if args.out else None)
    print(f"{resolved.model_id} on {args.manifest} ({result['studies']} studies, prompts {prompt_set.name})")
    print(format_table(result))
    if result["failed"]:
        print(f"{len(result['failed'])} study(ies) could not be read: {', '.join(result['failed'][:5])}")
    if not result["studies"]:
        print(f"hlip eval: error: {args.manifest}: no study could be evaluated")
        return 1
    if args.pointing:
        from ..analyze import AnalyzeOptions, Analyzer
        from ..training.pointing import pointing_game
        analyzer = Analyzer(AnalyzeOptions(model=args.model, config=args.config, tokenizer=args.tokenizer,
                                           prompts=args.prompts, device=args.device, precision=args.dtype,
                                           attention_method=args.attention_method,
                                           map_smooth_mm=args.map_smooth_mm))
        game = pointing_game(analyzer, entries, task=args.pointing, progress=not args.no_progress)
        abnormal, distance = game.pop("abnormal"), game.pop("distance_mm")
        print(f"pointing game ({args.pointing}, {analyzer.attention_method} map smoothed "
              f"{analyzer.map_smooth_mm:g} mm, peak inside the lesion; {game.pop('n')} lesion studies):")
        print(f"  {'class':<14} {'lesion':>7} {'lesion or oedema':>17} {'median mm to lesion':>20}")
        for cls, value in game.items():
            cells = [f"{v:.3f}" if v is not None else "-" for v in (value, abnormal[cls])]
            mm = f"{distance[cls]:.1f}" if distance[cls] is not None else "-"
            print(f"  {cls:<14} {cells[0]:>7} {cells[1]:>17} {mm:>20}")
    if args.out:
        print(f"wrote {Path(args.out) / 'eval.json'} and eval_predictions.csv")
    return 0
