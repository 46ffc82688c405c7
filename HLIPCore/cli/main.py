"""`hlip` command line: one sub-command per module `cmd_<name>.py` in this package.

Each command module defines `add_parser(subparsers)` (registers its parser and sets `func`) and is listed in
COMMANDS. Errors derived from HLIPError are printed as one line without a traceback; `--debug` shows it.
"""
import argparse
import importlib
import logging
import sys

from ..errors import HLIPError

COMMANDS = ("models", "convert", "inspect", "analyze", "phantoms", "train", "eval", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hlip", description="HLIP for raw 3D CT/MRI studies")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".cmd_{name}", __package__)
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name and exc.name.endswith(f"cmd_{name}"):
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except HLIPError as exc:
        if args.debug:
            raise
        print(f"hlip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hlip {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
