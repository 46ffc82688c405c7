"""`hlip models`: list the model catalog and the named configs; download a catalog model."""
import json


def add_parser(sub):
    p = sub.add_parser("models", help="list known models (catalog and configs); download one")
    p.add_argument("--download", metavar="ID", help="download this catalog model into the cache (checksum verified)")
    p.add_argument("--json", action="store_true", help="print the catalog as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..catalog import catalog_files, load_catalog
    from ..model.factory import get_model_config, list_configs

    if args.download:
        from ..model.resolve import resolve_model
        resolved = resolve_model(args.download, download=True)
        print(f"{resolved.model_id}: {resolved.checkpoint}")
        return 0
    entries = load_catalog()
    if args.json:
        print(json.dumps([{**e.__dict__, "local_path": str(e.local_path() or "")} for e in entries], indent=2))
        return 0
    print("Catalog models (id | config | modality | on this machine | title):")
    for e in entries:
        local = e.local_path()
        print(f"  {e.id:<30} {e.config:<26} {e.modality:<3} {'yes' if local else 'no ':<4} {e.title}")
    print("\nModel configs (use with --config):")
    for name in list_configs():
        print(f"  {name:<26} {get_model_config(name).get('description', '')}")
    print("\nCatalog files read, in order: " + ", ".join(str(p) for p in catalog_files() if p.is_file()))
    print("Add a local model: a JSON file {\"models\": [{\"id\": ..., \"config\": ..., \"path\": ...}]} in HLIP_MODELS.")
    return 0
