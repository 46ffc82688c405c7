"""`hlip demo [--out DIR]`: make a synthetic brain-MRI study, analyse it with the demo model, show the answer.

The study is a phantom (HLIPCore.phantoms) with a seed never used in the demo model's training, written as DICOM
series like a scanner export; the analysis is exactly what `hlip analyze` does. Because the phantom's truth is
known, the demo also says whether the top class is right and whether the attention map's peak lies in the lesion.
"""
DEMO_SEED = 90_000_017  # not among the training studies (their seeds are hashes of (dataset seed, index))


def add_parser(sub):
    p = sub.add_parser("demo", help="analyse a synthetic brain-MRI study with the demo model (or a labelled random stand-in)")
    p.add_argument("--out", default="hlip-demo-output", help="output folder (default: ./hlip-demo-output)")
    p.add_argument("--label", default="glioma", choices=["normal", "stroke", "glioma", "meningioma", "metastasis"],
                   help="pathology of the synthetic study (default: glioma)")
    p.add_argument("--seed", type=int, default=DEMO_SEED)
    p.add_argument("--model", default="hlip-demo")
    p.add_argument("--prompts", default="pub_brain_5")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.set_defaults(func=run)


def _catalog_has(model_id: str) -> bool:
    from ..catalog import load_catalog
    return any(entry.id == model_id for entry in load_catalog())


def pointing_game(report: dict, out_dir, masks: list) -> str:
    """Where the hottest voxel of the top class's map (over all scans) lies against that scan's lesion mask:
    'yes', or 'no (...)' saying whether it is in the oedema or how far from the lesion it is."""
    import nibabel as nib
    import numpy as np
    from pathlib import Path

    from ..training.pointing import label_and_distance
    task = "disease" if "disease" in report["top"] else next(iter(report["top"]))
    cls = report["top"][task]
    best = None
    for entry in report["maps"]:
        if entry["task"] == task and entry["class"] == cls:
            image = nib.load(Path(out_dir) / entry["file"])
            data = np.asarray(image.dataobj)
            if best is None or data.max() > best[0]:
                best = (data.max(), entry["scan_index"], np.unravel_index(int(data.argmax()), data.shape), image)
    if best is None:
        return "no (no map)"
    _, scan_index, ijk, image = best
    mask = masks[scan_index]
    if mask is None:
        return "no (no lesion mask for that scan)"
    # the map has its scan's exact geometry; phantom masks are [k, j, i] on that scan's grid (1 lesion, 2 oedema)
    label, mm = label_and_distance(mask.transpose(2, 1, 0), image.affine, image.affine[:3] @ np.append(ijk, 1.0))
    if label == 1:
        return "yes"
    if label == 2:
        return "no (in the oedema around it)"
    return f"no ({mm:.1f} mm from it)" if mm is not None else "no (no lesion in that scan's mask)"


def untrained_stand_in(folder, texts):
    """A small model folder with RANDOM weights (config small_multiscan_h2) and a vocabulary from `texts`: lets the
    demo show the whole chain while no trained demo model is bundled. Its scores mean nothing."""
    import torch

    from ..model import create_model
    from ..model.checkpoint import convert_checkpoint
    from ..training.vocab import build_wordpiece_tokenizer
    tokenizer = build_wordpiece_tokenizer(texts, folder / "tokenizer", vocab_size=1024)
    torch.manual_seed(0)
    torch.save(create_model("small_multiscan_h2").state_dict(), folder / "random.pt")
    return convert_checkpoint(folder / "random.pt", "small_multiscan_h2", folder / "model", tokenizer=tokenizer,
                              model_id="untrained-stand-in")


def run(args) -> int:
    import time
    from pathlib import Path

    from ..analyze import AnalyzeOptions, Analyzer
    from ..phantoms import generate_study, write_study

    start = time.perf_counter()
    out = Path(args.out)
    phantom = generate_study(args.seed, label=args.label)
    paths = write_study(phantom, out / "study", formats=("dicom",))
    print(f"synthetic study: {len(phantom.series)} MR series written as DICOM to {paths['dicom']} "
          f"(truth: {phantom.label})")
    model = args.model
    if model == "hlip-demo" and not _catalog_has(model):
        from ..prompts import load_prompt_set
        prompt_set = load_prompt_set(args.prompts)
        texts = [phantom.report] + [t for task in prompt_set.tasks for c in task.classes
                                    for t in c.texts(task.effective_templates(prompt_set.templates))]
        model = str(untrained_stand_in(out / "untrained-model", texts))
        print("NOTE: no trained demo model is bundled in this version (Resources/models.json has no 'hlip-demo').\n"
              "      The demo runs the whole chain with a small model of RANDOM weights: the outputs show what an\n"
              "      analysis produces, but the scores and maps mean nothing. Give a real model with --model.")
    analyzer = Analyzer(AnalyzeOptions(model=model, prompts=args.prompts, precision=args.dtype, attention="top"))
    report = analyzer.analyze(paths["dicom"], out / "result", name="demo_study")
    # scans are read back from DICOM in their own order: match each to the phantom series by description
    by_description = {s.description: s.mask for s in phantom.series}
    masks = [by_description.get(s["description"]) for s in report["scans"]]
    print("\n".join(f"  {task}: {cls} (p={report['scores'][task][cls]:.2f})" for task, cls in report["top"].items()))
    disease = report["top"].get("disease", "")
    correct = disease.lower().startswith(phantom.label[:5]) or (phantom.label == "normal" and disease == "Normal")
    print(f"5-way answer: {disease} - {'correct' if correct else 'wrong'} (truth: {phantom.label})")
    if phantom.label != "normal":
        print(f"attention peak inside the lesion: {pointing_game(report, out / 'result', masks)}")
    print(f"report: {out / 'result' / 'report.json'}; maps: {out / 'result' / 'maps'}; "
          f"overview: {out / 'result' / 'overview.png'}  ({time.perf_counter() - start:.0f} s)")
    return 0
