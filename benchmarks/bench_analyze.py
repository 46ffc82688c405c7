"""End-to-end benchmark of `hlip analyze` on a ViT-B study (multiscan_h2_token1176, random weights).

A 4-series MR study (4 x 24 x 256 x 256 DICOM slices) is written once; then it is analysed with plain scoring
(--attention none) and with gradient-weighted maps for the top class of each task (mapped back to every scan's
original voxels and written as NIfTI), in fp32 and bf16. Prints seconds per stage (median of --reps runs) and
the ratio of the map-producing run to plain scoring measured in the same run.

    python benchmarks/bench_analyze.py [--reps 3] [--precisions fp32 bf16]
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing" / "Python")]


def make_model_folder(folder: Path) -> Path:
    from conftest import write_wordpiece_tokenizer
    from HLIPCore.model import create_model, get_model_config
    from HLIPCore.model.checkpoint import save_safetensors
    torch.manual_seed(0)
    model = create_model("multiscan_h2_token1176")
    save_safetensors(model, folder / "model.safetensors")
    cfg = get_model_config("multiscan_h2_token1176")
    (folder / "config.json").write_text(json.dumps({"model_id": "vitb-random", "model_cfg": cfg}))
    write_wordpiece_tokenizer(folder)
    return folder


def make_study(folder: Path) -> Path:
    from data_fixtures import affine_from, write_series
    rng = np.random.default_rng(0)
    for s, name in enumerate(["T1 AX", "T2 AX", "FLAIR AX", "T1C AX"]):
        volume = rng.normal(300, 40, size=(24, 256, 256)).astype(np.float32)
        volume[8:16, 100:140, 90:150] += 400 + 100 * s
        write_series(folder / name.replace(" ", "_"), volume, affine_from([-1, 0, 0], [0, -1, 0], (0.9, 0.9, 5.0),
                                                                           [115, 115, -60]), description=name,
                     series_number=s + 1)
    return folder


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    args = p.parse_args()
    from HLIPCore.analyze import AnalyzeOptions, Analyzer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = make_model_folder(tmp / "model")
        study = make_study(tmp / "study")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; study: 4 MR series of 24x256x256, "
              f"model grid 48x224x224")
        print("| precision | attention | load | preprocess | model | maps | write | total s | vs scoring |")
        print("|---|---|---|---|---|---|---|---|---|")
        for precision in args.precisions:
            totals = {}
            for attention in ("none", "top"):
                start = time.perf_counter()
                analyzer = Analyzer(AnalyzeOptions(model=str(model_dir), prompts="pub_brain_5", device="cpu",
                                                   precision=precision, attention=attention))
                setup = time.perf_counter() - start
                runs = [analyzer.analyze(study, tmp / f"out_{precision}_{attention}_{i}")["timings_s"]
                        for i in range(args.reps)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                totals[attention] = med["total"]
                ratio = med["total"] / totals["none"]
                print(f"| {precision} | {attention} | {med['load']:.2f} | {med['preprocess']:.2f} | {med['model']:.2f} | "
                      f"{med['maps']:.2f} | {med['write']:.2f} | {med['total']:.2f} | {ratio:.2f} |", flush=True)
            print(f"(model + text-embedding setup for {precision}: {setup:.1f} s, once per session)")


if __name__ == "__main__":
    main()
