#!/usr/bin/env python
"""Analyse many studies headless, with the same outputs as `hlip analyze`.

    Slicer --no-splash --no-main-window --python-script HLIPSlicer/Scripts/hlip_batch.py \
        --input STUDIES_DIR_OR_LIST --output OUT_DIR [--model hlip-demo] [--prompts pub_brain_5] [...]

(also runs with PythonSlicer or any Python that has HLIPCore's requirements). --input is a folder whose
subfolders are studies, a folder that is itself one study, a text file listing one study path per line, or
several paths. Any other option is passed to `hlip analyze` (--device, --dtype, --attention, --num-slices,
--max-scans, --download, --force, ...). OUT_DIR/<study>/report.json and maps, OUT_DIR/scores.csv.
Exit code: 0 all studies analysed, 1 some failed (the others are done), 2 usage or model error.
"""
import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for candidate in (HERE.parent, HERE.parent.parent):  # installed: next to HLIPSlicer.py; source: the repository
    if (candidate / "HLIPCore" / "__init__.py").is_file():
        sys.path.insert(0, str(candidate))
        break

STUDY_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr")


def expand_inputs(inputs):
    studies = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_file() and path.suffix.lower() in (".txt", ".lst", ".list"):
            studies += [line.strip() for line in path.read_text().splitlines()
                        if line.strip() and not line.startswith("#")]
        elif path.is_dir():
            entries = [p for p in sorted(path.iterdir()) if not p.name.startswith(".")]
            subdirs = [p for p in entries if p.is_dir()]
            files = [p for p in entries if p.is_file() and p.name.upper() != "DICOMDIR"]
            volumes = [p for p in files if p.name.lower().endswith(STUDY_SUFFIXES)]
            if subdirs and not files:
                studies += [str(p) for p in subdirs]        # a folder of study folders
            elif volumes and len(volumes) == len(files) and not subdirs:
                studies += [str(p) for p in volumes]        # a folder of NIfTI/NRRD studies, one file each
            else:
                studies.append(str(path))                  # the folder is one study
        else:
            studies.append(str(path))                      # a file; missing paths fail in the batch, by name
    return studies


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hlip_batch.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, metavar="DIR_OR_LIST")
    parser.add_argument("--output", required=True, metavar="DIR")
    args, rest = parser.parse_known_args(argv)
    studies = expand_inputs(args.input)
    if not studies:
        print("hlip_batch: no study found in --input", file=sys.stderr)
        return 2
    from HLIPCore.cli.main import main as hlip_main
    cli = ["analyze", *studies, "--out", args.output, *rest]
    print(f"hlip_batch: {len(studies)} stud{'y' if len(studies) == 1 else 'ies'} -> {args.output}", flush=True)
    try:
        return int(hlip_main(cli) or 0)
    except SystemExit as exc:  # argparse errors inside hlip analyze
        return int(exc.code or 0) if isinstance(exc.code, int) else 2


def exit_with(code: int) -> None:
    try:
        import slicer
        if getattr(slicer, "app", None) is not None:  # running inside Slicer: leave the application with the code
            slicer.util.exit(code)
            return
    except ImportError:
        pass
    sys.exit(code)


if __name__ == "__main__":
    # Slicer passes the arguments after the script path in sys.argv as well
    exit_with(main(sys.argv[1:]))
