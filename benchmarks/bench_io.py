"""Read + preprocess a 4-series DICOM study (4 x 160 slices of 256x256), next to SimpleITK's series reader.

Usage: python benchmarks/bench_io.py [--folder DIR] [--series 4] [--slices 160] [--size 256] [--repeat 2]
Writes the study once (to a temporary folder unless --folder names one), then times, on the same files:
  hlip      HLIPCore.data.load_study (every series) + preprocess_study (MRI path, 48x224x224)
  hlip-read load_study only
  sitk      SimpleITK: GDCM series IDs + file names + ImageSeriesReader per series (reading only)
MB/s counts the bytes of the DICOM files. The best of --repeat runs is reported (file cache warm for both).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Testing", "Python"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def write_study(folder, series, slices, size):
    from data_fixtures import AXIAL, affine_from, write_series
    rng = np.random.default_rng(0)
    for s in range(series):
        vol = rng.integers(0, 2000, size=(slices, size, size)).astype(np.float32)
        write_series(os.path.join(folder, f"series{s}"), vol, affine_from(*AXIAL, (0.9, 0.9, 1.0), (0, 0, 0)),
                     series_number=s + 1, description=f"series {s}")


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)


def run_hlip(folder, preprocess=True):
    from HLIPCore.data import PreprocessConfig, load_study, preprocess_study
    study = load_study(folder)
    if preprocess:
        return preprocess_study(study, PreprocessConfig(mode="mri")).tensor.shape
    return [s.shape for s in study.scans]


def run_sitk(folder):
    import SimpleITK as sitk
    shapes = []
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # GDCM warns about folders without series
    for root, dirs, files in sorted(os.walk(folder)):
        if not files:
            continue
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(root) or ():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(root, uid))
            shapes.append(sitk.GetArrayViewFromImage(reader.Execute()).shape)
    return shapes


def best_time(fn, repeat):
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", default=None)
    p.add_argument("--series", type=int, default=4)
    p.add_argument("--slices", type=int, default=160)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or tmp
        if not any(os.scandir(folder)) if os.path.isdir(folder) else True:
            os.makedirs(folder, exist_ok=True)
            write_study(folder, args.series, args.slices, args.size)
        mb = folder_bytes(folder) / 1e6
        print(f"study: {args.series} series x {args.slices} x {args.size}x{args.size}, {mb:.1f} MB, "
              f"{os.cpu_count()} CPU(s)")
        rows = [("sitk (read)", *best_time(lambda: run_sitk(folder), args.repeat)),
                ("hlip (read)", *best_time(lambda: run_hlip(folder, preprocess=False), args.repeat)),
                ("hlip (read + preprocess)", *best_time(lambda: run_hlip(folder), args.repeat))]
        for name, seconds, result in rows:
            print(f"{name:26s} {seconds:7.2f} s  {mb / seconds:7.1f} MB/s   {result}")
        ratio = rows[2][1] / rows[0][1]
        print(f"hlip read+preprocess / sitk read: {ratio:.2f}x ({'not slower' if ratio <= 1.0 else 'slower'})")


if __name__ == "__main__":
    main()
