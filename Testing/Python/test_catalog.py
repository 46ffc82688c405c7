"""Model catalog, user catalogs, verified downloads (exercised on file:// URLs) and --model resolution."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from HLIPCore.catalog import get_entry, load_catalog
from HLIPCore.download import download_file
from HLIPCore.errors import CheckpointError, ConfigError, HLIPError
from HLIPCore.model.resolve import load_model, resolve_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HLIP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_released_models_are_listed_with_their_configs():
    from HLIPCore.model import list_configs
    entries = {e.id: e for e in load_catalog()}
    assert {"hlip-brainmri-h2-token1176", "hlip-chestct-h2-token2744", "hlip-headct-h2-token1176"} <= set(entries)
    for e in entries.values():
        assert e.config in list_configs() and (e.url or e.path) and e.license


def test_download_checks_sha256_and_never_leaves_partial_files(tmp_path):
    source = tmp_path / "weights.bin"
    source.write_bytes(b"x" * 5000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = download_file(source.as_uri(), tmp_path / "dl" / "w.bin", sha256=digest, progress=False)
    assert dest.read_bytes() == source.read_bytes()
    with pytest.raises(HLIPError, match="checksum mismatch"):
        download_file(source.as_uri(), tmp_path / "dl2" / "w.bin", sha256="0" * 64, progress=False)
    assert not any((tmp_path / "dl2").iterdir())  # nothing half-written or wrong left behind
    with pytest.raises(HLIPError, match="download failed"):
        download_file((tmp_path / "missing.bin").as_uri(), tmp_path / "dl3" / "w.bin", progress=False)


def test_user_catalog_entry_downloads_into_cache_and_resolves(tmp_path, cache, monkeypatch, tiny_model, tokenizer_dir):
    ckpt = tmp_path / "published" / "tiny_release.pt"
    ckpt.parent.mkdir()
    torch.save({"epoch": 1, "name": "tiny", "state_dict": {f"module.{k}": v for k, v in tiny_model.state_dict().items()}},
               ckpt)
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    user = tmp_path / "my_models.json"
    user.write_text(json.dumps({"models": [
        {"id": "tiny-remote", "config": "tiny_multiscan_h3", "url": ckpt.as_uri(), "sha256": digest,
         "tokenizer": str(tokenizer_dir), "prompts": "pub_brain_5"},
        {"id": "tiny-local", "config": "tiny_multiscan_h3", "path": str(ckpt), "tokenizer": str(tokenizer_dir)}]}))
    monkeypatch.setenv("HLIP_MODELS", str(user))
    with pytest.raises(CheckpointError, match="hlip models --download tiny-remote"):
        resolve_model("tiny-remote")  # not downloaded yet: says how
    resolved = resolve_model("tiny-remote", download=True, progress=False)
    assert resolved.checkpoint == cache / "models" / "tiny-remote" / "tiny_release.pt"
    assert resolve_model("tiny-local").checkpoint == ckpt
    model, tokenizer, _ = load_model("tiny-remote")
    x = torch.randn(1, 2, 1, 16, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), tiny_model.eval().encode_image(x))
    listing = subprocess.run([sys.executable, "-m", "HLIPCore.cli.main", "models"], cwd=ROOT, capture_output=True,
                             text=True, env={**__import__("os").environ})
    assert listing.returncode == 0 and "tiny-remote" in listing.stdout and "tiny-local" in listing.stdout


def test_unknown_model_and_bad_catalog_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        resolve_model("nope")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_model(str(tmp_path / "absent.pt"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": [{"id": "x"}]}))
    monkeypatch.setenv("HLIP_MODELS", str(bad))
    with pytest.raises(ConfigError, match="needs at least 'id' and 'config'"):
        get_entry("x")


def test_bare_checkpoint_config_is_inferred_or_asked_for(tmp_path, tiny_model):
    torch.save(tiny_model.state_dict(), tmp_path / "bare.pt")
    assert resolve_model(tmp_path / "bare.pt").config["vision_cfg"]["width"] == 48
    from HLIPCore.model import create_model
    torch.manual_seed(0)
    small = create_model("small_multiscan_h2")  # same shapes as small_multiscan_h3: the layout is not in weights
    torch.save({"name": "run_small_h3", "state_dict": small.state_dict()}, tmp_path / "small.pt")
    assert resolve_model(tmp_path / "small.pt").config["vision_cfg"]["attn_layout"][0] == "slice"  # from the name
    torch.save(small.state_dict(), tmp_path / "small_anon.pt")
    with pytest.raises(ConfigError, match="choose one with --config"):
        resolve_model(tmp_path / "small_anon.pt")


def test_a_catalog_model_folder_keeps_its_own_preprocessing():
    """The bundled demo model was trained with its own intensity clip (config.json); resolving it by catalog id
    must not fall back to the registry config the entry names, or the analysis would see other intensities."""
    folder = Path(__file__).resolve().parents[2] / "Resources" / "models" / "hlip-demo"
    trained = json.loads((folder / "config.json").read_text())["model_cfg"]["preprocess"]
    by_id, by_path = resolve_model("hlip-demo"), resolve_model(folder)
    assert list(by_id.preprocess["percentiles"]) == list(trained["percentiles"]) == [0.5, 99.99]
    assert by_id.preprocess == {**by_path.preprocess, "mode": "mri"} and by_id.config == by_path.config
