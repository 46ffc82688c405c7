"""`hlip train --config FILE.yaml [--out DIR] [--set key=value ...] [--resume [CKPT]]`.

Without --resume a run continues from OUT/checkpoints/latest.pt when there is one (so re-running the same command
after a crash resumes it); `--fresh` refuses to start when a checkpoint exists. Launch with torchrun for several
processes: `torchrun --nproc_per_node 2 -m HLIPCore.cli.main train --config ...`.
"""


def add_parser(sub):
    p = sub.add_parser("train", help="train (or fine-tune) an HLIP model on study/report pairs")
    p.add_argument("--config", required=True, help="training config (YAML or JSON)")
    p.add_argument("--out", help="output folder (overrides output_dir)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (YAML syntax), e.g. --set steps=100 --set precision=bf16")
    p.add_argument("--resume", nargs="?", const="auto", default="auto", metavar="CKPT",
                   help="checkpoint to resume from (default: OUT/checkpoints/latest.pt when present)")
    p.add_argument("--fresh", action="store_true", help="start from scratch; error if OUT holds a checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..errors import ConfigError
    from ..training.config import load_config, parse_overrides
    from ..training.loop import Trainer

    overrides = parse_overrides(args.overrides)
    if args.out:
        overrides["output_dir"] = args.out
    cfg = load_config(args.config, overrides)
    latest = Path(cfg.output_dir) / "checkpoints" / "latest.pt"
    if args.fresh and latest.is_file():
        raise ConfigError(f"{latest} exists: remove it, choose another --out, or resume")
    trainer = Trainer(cfg, resume=None if args.fresh else args.resume, progress=not args.no_progress)
    try:
        trainer.train()
    finally:
        trainer.close()
    if trainer.rank == 0:
        last = trainer.history[-1] if trainer.history else None
        summary = f"step {trainer.step}/{trainer.total_steps}" + (f", loss {last['loss']:.4f}" if last else "")
        print(f"trained {summary}; model in {Path(cfg.output_dir) / 'final'}, log in {trainer.log_path}")
    return 0
