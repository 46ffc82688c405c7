#!/usr/bin/env python
"""HLIP worker: runs one analysis in a child process of Slicer (started with PythonSlicer), never in the GUI.

    PythonSlicer hlip_worker.py JOB.json

JOB.json (written by HLIPSlicerLib.process.write_job):
    version       1
    source        a list of NRRD/NIfTI files (the study's volumes, one per scan) or a DICOM folder / DICOMDIR / file
    out_dir       where report.json, maps/*.nii.gz (and for a folder source scans/*.nii.gz) are written
    core_dir      the folder that contains the HLIPCore package (added to sys.path)
    options       AnalyzeOptions fields: model, prompts, config, tokenizer, device, precision, attention,
                  attention_method, map_smooth_mm, num_slices, download, overview; selection: ScanSelection fields
    action        "analyze" (default) or "download" (fetch options.model into the cache; HLIP_RESULT is its path)
    write_scans   for a folder source: also write each used scan as scans/scanNN.nii.gz (to show them in Slicer)

Standard output carries machine-readable lines (anything else is log text):
    HLIP_PROGRESS <fraction 0..1> <stage>
    HLIP_RESULT <path of report.json>
    HLIP_ERROR <one-line message for the user>
Exit codes: 0 done; 2 bad job file; 3 input (study) error; 4 model, checkpoint or prompt-set error;
5 out of memory; 6 a required package is missing; 1 anything else.
"""
import json
import os
import sys
import time
import traceback
from pathlib import Path

EXIT_OK, EXIT_OTHER, EXIT_JOB, EXIT_INPUT, EXIT_MODEL, EXIT_MEMORY, EXIT_DEPENDENCY = 0, 1, 2, 3, 4, 5, 6
_PAUSE_S = float(os.environ.get("HLIP_WORKER_PAUSE_S", "0") or 0)  # test hook: wait after each progress line


def emit(kind: str, text: str) -> None:
    print(f"{kind} {' '.join(str(text).split())}", flush=True)


def progress(fraction: float, stage: str) -> None:
    emit("HLIP_PROGRESS", f"{max(0.0, min(1.0, fraction)):.3f} {stage}")
    if _PAUSE_S:
        time.sleep(_PAUSE_S)


def fail(code: int, message: str) -> int:
    emit("HLIP_ERROR", message)
    return code


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def write_scans(source, selection, load, out_dir: Path):
    """Folder source: read it once, write the used scans as NIfTI for Slicer; returns (files, skipped)."""
    from HLIPCore.data import load_study, select_scans
    from HLIPCore.report import write_map_nifti
    study = select_scans(load_study(source, load), selection)
    files, index = [], []
    for n, scan in enumerate(study.scans):
        path = out_dir / "scans" / f"scan{n:03d}.nii.gz"
        write_map_nifti(scan.array, scan.affine, path)  # float32 with the scan's own IJK->RAS affine
        files.append(str(path))
        index.append({"file": path.relative_to(out_dir).as_posix(), "description": scan.description,
                      "modality": scan.modality})
    (out_dir / "scans.json").write_text(json.dumps(index, indent=2))
    return files, [{"source": str(k.source), "reason": k.reason} for k in study.skipped]


def download(job: dict) -> int:
    """A catalog model into the cache (checksum checked, atomic move); HLIP_RESULT is the local path."""
    from HLIPCore.errors import HLIPError
    from HLIPCore.model.resolve import resolve_model
    model = job["options"]["model"]
    progress(0.05, f"downloading {model}")
    try:
        resolved = resolve_model(model, download=True, progress=False)
    except HLIPError as exc:
        return fail(EXIT_MODEL, str(exc))
    progress(1.0, "downloaded")
    emit("HLIP_RESULT", str(resolved.checkpoint))
    return EXIT_OK


def run(job: dict) -> int:
    sys.path.insert(0, job.get("core_dir") or str(Path(__file__).resolve().parents[2]))
    progress(0.0, "starting")
    try:
        import torch  # noqa: F401  (the PyTorch extension provides it inside Slicer)
        from HLIPCore.analyze import AnalyzeOptions, Analyzer
        from HLIPCore.data import LoadOptions, ScanSelection
        from HLIPCore.errors import CheckpointError, ConfigError, HLIPError, InputError
    except ImportError as exc:
        return fail(EXIT_DEPENDENCY, f"missing Python package '{exc.name}': install the PyTorch extension and "
                                     "let the HLIP module install its requirements, then try again")
    if job.get("action") == "download":
        return download(job)
    try:
        opts = dict(job.get("options") or {})
        selection = ScanSelection(**opts.pop("selection", {}))
        load = LoadOptions(**opts.pop("load", {}))
        options = AnalyzeOptions(selection=selection, load=load, **opts)
    except TypeError as exc:
        return fail(EXIT_JOB, f"bad job file: {exc}")
    out_dir = Path(job["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    source = job["source"]
    try:
        progress(0.02, "loading the model")
        analyzer = Analyzer(options)
        extra_skipped = []
        if job.get("write_scans") and not isinstance(source, list):
            progress(0.08, "reading the study")
            source, extra_skipped = write_scans(source, selection, load, out_dir)

        def on_progress(stage, fraction):
            progress(0.1 + 0.9 * fraction, stage)

        report = analyzer.analyze(source, out_dir, name=job.get("name"), progress=on_progress)
        if extra_skipped:
            from HLIPCore.report import write_report
            report["skipped"] = extra_skipped + report.get("skipped", [])
            write_report(report, out_dir)
    except (CheckpointError, ConfigError) as exc:
        return fail(EXIT_MODEL, str(exc))
    except InputError as exc:
        return fail(EXIT_INPUT, str(exc))
    except HLIPError as exc:
        return fail(EXIT_INPUT, str(exc))
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line for the user, traceback to the log
        traceback.print_exc(file=sys.stdout)
        if is_out_of_memory(exc):
            return fail(EXIT_MEMORY, f"out of memory on {options.device} ({type(exc).__name__}): use fewer slices, "
                                     "bf16 precision, the CPU, or close other programs")
        return fail(EXIT_OTHER, f"unexpected {type(exc).__name__}: {exc}")
    emit("HLIP_RESULT", str(out_dir / "report.json"))
    return EXIT_OK


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__)
        return fail(EXIT_JOB, "usage: hlip_worker.py JOB.json")
    try:
        job = json.loads(Path(argv[0]).read_text())
        if job.get("version") != 1 or "source" not in job or "out_dir" not in job:
            raise ValueError("needs version 1, 'source' and 'out_dir'")
    except (OSError, ValueError) as exc:
        return fail(EXIT_JOB, f"cannot read job file {argv[0]}: {exc}")
    return run(job)


if __name__ == "__main__":
    sys.exit(main())
