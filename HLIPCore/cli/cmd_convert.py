"""`hlip convert CKPT --config NAME --out DIR`: any accepted checkpoint -> model.safetensors + config.json."""


def add_parser(sub):
    p = sub.add_parser("convert", help="convert a checkpoint (.pt/.bin/.safetensors) to a safetensors model folder")
    p.add_argument("checkpoint", help="checkpoint file (v1.0 .pt, state dict, safetensors) or model folder")
    p.add_argument("--config", help="model config name or JSON file (default: the only config the weights fit)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tokenizer", help="tokenizer folder or hub name to copy into the folder")
    p.add_argument("--id", dest="model_id", help="model id recorded in config.json")
    p.add_argument("--fp16", action="store_true", help="store the weights as float16 (half the file size)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    from ..model.checkpoint import convert_checkpoint
    from ..model.factory import get_model_config
    from ..model.resolve import _config_for_file

    ckpt = Path(args.checkpoint)
    tokenizer, model_id = args.tokenizer, args.model_id
    if ckpt.is_dir():  # a model folder (e.g. training's final/): its own config, tokenizer and id come along
        config = get_model_config(args.config or ckpt)
        if tokenizer is None and (ckpt / "tokenizer_config.json").is_file():
            tokenizer = str(ckpt)
        if model_id is None and (ckpt / "config.json").is_file():
            model_id = json.loads((ckpt / "config.json").read_text()).get("model_id")
    else:
        config = _config_for_file(ckpt, args.config)
    out = convert_checkpoint(ckpt, config, args.out, tokenizer=tokenizer, model_id=model_id, half=args.fp16)
    print(f"wrote {out / 'model.safetensors'} and {out / 'config.json'}" + (" and tokenizer files" if tokenizer else ""))
    return 0
