"""Forward-pass benchmark of the HLIP visual tower (ViT-B, multiscan_h2_token1176, random weights).

For studies of 1, 4 and 10 scans at 48x224x224, in fp32 and bf16, it reports the median forward time of
several runs, the peak resident memory of a process that does only that, the FLOPs the layout needs and the
rate achieved against a GEMM peak measured in the same run, and the ratio against the same model with every
block attending to the whole study (plain full attention). Each measurement runs in its own child process so
peak RSS is per configuration.

    python benchmarks/bench_model.py                   # full table (several minutes on 2 cores)
    python benchmarks/bench_model.py --scans 4 --reps 3
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIG = "multiscan_h2_token1176"


def build_visual(all_study: bool):
    from HLIPCore.model.clip import HLIPVisual
    from HLIPCore.model.factory import get_model_config
    from HLIPCore.model.vision import HLIPVisionTransformer
    cfg = get_model_config(CONFIG)
    v = cfg["vision_cfg"]
    layout = ["study"] * len(v["attn_layout"]) if all_study else v["attn_layout"]
    torch.manual_seed(0)
    trunk = HLIPVisionTransformer(layout, img_size=v["img_size"], patch_size=v["patch_size"],
                                  max_num_scans=v["max_num_scans"], embed_dim=v["width"], num_heads=v["heads"])
    return HLIPVisual(trunk, cfg["embed_dim"]), v


def layout_flops(v: dict, scans: int, all_study: bool) -> float:
    """Multiply-adds x2 of patch embedding, every block's linear layers and attention, at this study size."""
    c = v["width"]
    grid = [i // p for i, p in zip(v["img_size"], v["patch_size"])]
    per_scan = grid[0] * grid[1] * grid[2]
    patch_vol = v["patch_size"][0] * v["patch_size"][1] * v["patch_size"][2]
    flops = 2.0 * scans * per_scan * patch_vol * c
    layout = ["study"] * len(v["attn_layout"]) if all_study else v["attn_layout"]
    for index, level in enumerate(layout):
        windows = {"slice": scans * grid[0], "scan": scans, "study": 1}[level]
        length = scans * per_scan // windows + 1  # tokens per window with its class token
        tokens = windows * length
        if index == len(layout) - 1 and level == "study":  # computed for the class token only (token pooling)
            flops += 2.0 * tokens * 2 * c * c + 2.0 * (c * c + c * c + 2 * 4 * c * c) + 4.0 * length * c
            continue
        flops += 2.0 * tokens * (3 * c * c + c * c + 2 * 4 * c * c)  # qkv, proj, mlp
        flops += 4.0 * windows * length * length * c  # q k^T and attn v
    return flops


def child(args) -> None:
    from HLIPCore.model.precision import autocast, prepare_for_inference
    torch.set_num_threads(args.threads)
    visual, v = build_visual(args.all_study)
    prepare_for_inference(visual, args.precision)
    x = torch.randn(1, args.scans[0], 1, *v["img_size"])
    times = []
    with torch.inference_mode(), autocast("cpu", args.precision):
        visual(x)  # warm-up
        for _ in range(args.reps):
            start = time.perf_counter()
            visual(x)
            times.append(time.perf_counter() - start)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"times": times, "rss_mb": rss_mb, "flops": layout_flops(v, args.scans[0], args.all_study)}))


def accuracy_child(args) -> None:
    """Cosine between bf16 and fp32 image embeddings of the same study."""
    from HLIPCore.model.precision import autocast, prepare_for_inference
    torch.set_num_threads(args.threads)
    visual, v = build_visual(False)
    torch.manual_seed(1)
    x = torch.randn(1, args.scans[0], 1, *v["img_size"])
    with torch.inference_mode():
        ref = visual.eval()(x)
        prepare_for_inference(visual, "bf16")
        with autocast("cpu", "bf16"):
            low = visual(x).float()
    print(json.dumps({"cosine": torch.nn.functional.cosine_similarity(ref, low).item()}))


def gemm_peak(dtype, threads: int, n: int = 3072, reps: int = 5) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def run_child(extra: list) -> dict:
    cmd = [sys.executable, __file__, *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"benchmark child failed: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scans", type=int, nargs="+", default=[1, 4, 10])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--no-baseline", action="store_true", help="skip the all-study baseline")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--accuracy", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--all-study", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args) if not args.accuracy else accuracy_child(args)

    peaks = {"fp32": gemm_peak(torch.float32, args.threads), "bf16": gemm_peak(torch.bfloat16, args.threads)}
    print(f"torch {torch.__version__}, {args.threads} threads; GEMM peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    header = "| scans | precision | layout | median s | peak RSS MB | TFLOP | GFLOP/s | % GEMM peak | time vs all-study |"
    print(header + "\n|" + "---|" * 9)
    for scans in args.scans:
        for precision in args.precisions:
            base = ["--child", "--scans", str(scans), "--precision", precision, "--reps", str(args.reps),
                    "--threads", str(args.threads)]
            rows = {"hierarchical": run_child(base)}
            if not args.no_baseline:
                rows["all-study"] = run_child(base + ["--all-study"])
            for layout, r in rows.items():
                med = statistics.median(r["times"])
                ratio = med / statistics.median(rows["all-study"]["times"]) if "all-study" in rows else float("nan")
                rate = r["flops"] / med
                print(f"| {scans} | {precision} | {layout} | {med:.2f} | {r['rss_mb']:.0f} | {r['flops'] / 1e12:.2f} | "
                      f"{rate / 1e9:.0f} | {100 * rate / peaks[precision]:.0f}% | {ratio:.2f} |", flush=True)
    if "bf16" in args.precisions:
        acc = run_child(["--child", "--accuracy", "--scans", "4", "--threads", str(args.threads)])
        print(f"bf16 vs fp32 image embedding cosine (4 scans): {acc['cosine']:.6f}")


if __name__ == "__main__":
    main()
