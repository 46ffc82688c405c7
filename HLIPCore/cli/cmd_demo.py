"""`hlip demo [--out DIR]`: make a synthetic brain-MRI study, analyse it with the bundled demo model, show the answer.

The study is a phantom (HLIPCore.phantoms) with a seed never used in the demo model's training, written as DICOM
series like a scanner export; the analysis is exactly what `hlip analyze` does. Because the phantom's truth is
known, the demo also says whether the top class is right and whether the attention map's peak lies in the lesion.
"""
DEMO_SEED = 90_000_017  # not among the training studies (their seeds are hashes of (dataset seed, index))


def add_parser(sub):
    p = sub.add_parser("demo", help="analyse a synthetic brain-MRI study with the bundled demo model")
    p.add_argument("--out", default="hlip-demo-output", help="output folder (default: ./hlip-demo-output)")
    p.add_argument("--label", default="glioma", choices=["normal", "stroke", "glioma", "meningioma", "metastasis"],
                   help="pathology of the synthetic study (default: glioma)")
    p.add_argument("--seed", type=int, default=DEMO_SEED)
    p.add_argument("--model", default="hlip-demo")
    p.add_argument("--prompts", default="pub_brain_5")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.set_defaults(func=run)


def pointing_game(report: dict, out_dir, masks: list) -> bool:
    """True when the hottest voxel of the top class's map (over all scans) lies inside that scan's lesion mask."""
    import nibabel as nib
    import numpy as np
    from pathlib import Path
    task = "disease" if "disease" in report["top"] else next(iter(report["top"]))
    cls = report["top"][task]
    best = None
    for entry in report["maps"]:
        if entry["task"] == task and entry["class"] == cls:
            data = np.asarray(nib.load(Path(out_dir) / entry["file"]).dataobj)
            if best is None or data.max() > best[0]:
                best = (data.max(), entry["scan_index"], np.unravel_index(int(data.argmax()), data.shape))
    if best is None:
        return False
    _, scan_index, ijk = best
    mask = masks[scan_index]
    return mask is not None and bool(mask[ijk[2], ijk[1], ijk[0]] == 1)  # 1 = lesion (2 = oedema)


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
    analyzer = Analyzer(AnalyzeOptions(model=args.model, prompts=args.prompts, precision=args.dtype, attention="top"))
    report = analyzer.analyze(paths["dicom"], out / "result", name="demo_study")
    # scans are read back from DICOM in their own order: match each to the phantom series by description
    by_description = {s.description: s.mask for s in phantom.series}
    masks = [by_description.get(s["description"]) for s in report["scans"]]
    print("\n".join(f"  {task}: {cls} (p={report['scores'][task][cls]:.2f})" for task, cls in report["top"].items()))
    disease = report["top"].get("disease", "")
    correct = disease.lower().startswith(phantom.label[:5]) or (phantom.label == "normal" and disease == "Normal")
    print(f"5-way answer: {disease} - {'correct' if correct else 'wrong'} (truth: {phantom.label})")
    if phantom.label != "normal":
        print(f"attention peak inside the lesion: {'yes' if pointing_game(report, out / 'result', masks) else 'no'}")
    print(f"report: {out / 'result' / 'report.json'}; maps: {out / 'result' / 'maps'}; "
          f"overview: {out / 'result' / 'overview.png'}  ({time.perf_counter() - start:.0f} s)")
    return 0
