"""Official checkpoint layouts load strictly; conversion round-trips; bad checkpoints give one clear error."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from HLIPCore.errors import CheckpointError, ConfigError
from HLIPCore.model import create_model, create_tokenizer, get_model_config, list_configs
from HLIPCore.model.checkpoint import convert_checkpoint, load_checkpoint
from HLIPCore.model.clip import HLIPModel

RELEASED = ["singlescan_h2_token2744", "multiscan_h2_token1176", "multiscan_h2_token588", "multiscan_h3_token1176"]
ROOT = Path(__file__).resolve().parents[2]


def official_state_shapes(grid, patch, scans, width=768, depth=12, embed=512, text_layers=12, vocab=30522) -> dict:
    """Key -> shape of a v1.0 HLIP checkpoint, written from the published layout, not from our model."""
    t, mlp = "module.visual.trunk.", 4 * width
    shapes = {"module.logit_scale": (), t + "cls_token": (1, 1, width), t + "spatial_posemb": (1, *grid, width),
              t + "patch_embed.proj.weight": (width, 1, *patch), t + "patch_embed.proj.bias": (width,),
              t + "norm.weight": (width,), t + "norm.bias": (width,), "module.visual.head.proj.weight": (embed, width),
              "module.text.proj.weight": (embed, 768)}
    if scans > 1:
        shapes[t + "sequential_posemb"] = (1, scans, width)
    for i in range(depth):
        b = f"{t}blocks.{i}."
        shapes.update({b + "norm1.weight": (width,), b + "norm1.bias": (width,), b + "norm2.weight": (width,),
                       b + "norm2.bias": (width,), b + "attn.qkv.weight": (3 * width, width), b + "attn.qkv.bias": (3 * width,),
                       b + "attn.proj.weight": (width, width), b + "attn.proj.bias": (width,),
                       b + "mlp.fc1.weight": (mlp, width), b + "mlp.fc1.bias": (mlp,),
                       b + "mlp.fc2.weight": (width, mlp), b + "mlp.fc2.bias": (width,)})
    e = "module.text.transformer.embeddings."
    shapes.update({e + "word_embeddings.weight": (vocab, 768), e + "position_embeddings.weight": (512, 768),
                   e + "token_type_embeddings.weight": (2, 768), e + "LayerNorm.weight": (768,),
                   e + "LayerNorm.bias": (768,), e + "position_ids": (1, 512)})  # saved by older transformers
    for i in range(text_layers):
        lay = f"module.text.transformer.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes.update({lay + name + ".weight": (768, 768), lay + name + ".bias": (768,)})
        shapes.update({lay + "intermediate.dense.weight": (3072, 768), lay + "intermediate.dense.bias": (3072,),
                       lay + "output.dense.weight": (768, 3072), lay + "output.dense.bias": (768,)})
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes.update({lay + name + ".weight": (768,), lay + name + ".bias": (768,)})
    return shapes


@pytest.mark.parametrize("name", RELEASED)
def test_official_key_layout_loads_strictly_into_each_released_config(name):
    from HLIPCore.model.checkpoint import extract_state_dict
    cfg = get_model_config(name)["vision_cfg"]
    grid = [i // p for i, p in zip(cfg["img_size"], cfg["patch_size"])]
    shapes = official_state_shapes(grid, cfg["patch_size"], cfg["max_num_scans"])
    with torch.device("meta"):  # shapes only, so all four ViT-B + BERT models cost no memory
        model = HLIPModel(**get_model_config(name))
        release = {"epoch": 20, "name": name, "optimizer": {}, "state_dict": {k: torch.empty(s) for k, s in shapes.items()}}
    state = extract_state_dict(release)
    assert "text.transformer.embeddings.position_ids" not in state
    result = model.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_release_format_file_loads_and_reproduces_outputs(tmp_path, tiny_model):
    """A v1.0-style file (DDP prefix, optimizer state) of the tiny config loads with weights_only and matches."""
    state = {f"module.{k}": v for k, v in tiny_model.state_dict().items()}
    torch.save({"epoch": 3, "name": "run_tiny", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}},
               tmp_path / "release.pt")
    fresh = create_model("tiny_multiscan_h3", tmp_path / "release.pt")
    x = torch.randn(1, 2, 1, 16, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode_image(x), tiny_model.encode_image(x))


def test_wrong_config_error_names_the_config_that_fits(tmp_path, tiny_model):
    torch.save(tiny_model.state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(CheckpointError) as err:
        create_model("small_multiscan_h2", tmp_path / "tiny.pt")
    message = str(err.value)
    assert "tiny.pt" in message and "shape mismatch" in message and "tiny_multiscan_h3" in message
    assert "\n" not in message


@pytest.mark.parametrize("content, reason", [(b"", "not a PyTorch checkpoint"), (b"\x00garbage" * 50, "random or truncated")])
def test_corrupt_checkpoint_gives_clear_error(tmp_path, content, reason):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason):
        create_model("tiny_multiscan_h3", path)
    bad_st = tmp_path / "broken.safetensors"
    bad_st.write_bytes(content)
    with pytest.raises(CheckpointError, match="safetensors"):
        create_model("tiny_multiscan_h3", bad_st)


class Payload:  # anything that is not a tensor/container must be refused by weights_only loading
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "pickle.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused for safety"):
        create_model("tiny_multiscan_h3", path)


def test_convert_then_reload_gives_identical_outputs(tmp_path, tiny_model, tokenizer_dir):
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_model.state_dict().items()}}, tmp_path / "ckpt.pt")
    out = convert_checkpoint(tmp_path / "ckpt.pt", "tiny_multiscan_h3", tmp_path / "converted", tokenizer=tokenizer_dir)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert json.loads((out / "config.json").read_text())["model_cfg"] == get_model_config("tiny_multiscan_h3")
    reloaded = create_model(out)
    tokenizer = create_tokenizer(out)
    ids = tokenizer(["This MRI study shows: glioma.", "Acute stroke"])
    x = torch.randn(2, 3, 1, 16, 64, 64)
    with torch.no_grad():
        assert torch.equal(reloaded.encode_image(x), tiny_model.encode_image(x))
        assert torch.equal(reloaded.encode_text(ids), tiny_model.encode_text(ids))


def test_half_precision_export_reloads_in_fp32(tmp_path, tiny_model):
    torch.save(tiny_model.state_dict(), tmp_path / "ckpt.pt")
    out = convert_checkpoint(tmp_path / "ckpt.pt", "tiny_multiscan_h3", tmp_path / "half", half=True)
    reloaded = create_model(out)
    assert reloaded.visual.trunk.cls_token.dtype == torch.float32
    x = torch.randn(1, 2, 1, 16, 64, 64)
    with torch.no_grad():
        a, b = tiny_model.eval().encode_image(x), reloaded.encode_image(x)
    assert torch.nn.functional.cosine_similarity(a, b).item() > 0.999


def test_hlip_convert_cli_in_a_child_process(tmp_path, tiny_model, tokenizer_dir):
    torch.save(tiny_model.state_dict(), tmp_path / "bare.pt")
    cmd = [sys.executable, "-m", "HLIPCore.cli.main", "convert", str(tmp_path / "bare.pt"), "--out", str(tmp_path / "m"),
           "--tokenizer", str(tokenizer_dir)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "model.safetensors" in done.stdout  # config guessed: the only registry config these weights fit
    # a model folder (what training exports) converts as it is: its config, tokenizer and id come along
    done = subprocess.run(cmd[:4] + [str(tmp_path / "m"), "--out", str(tmp_path / "half"), "--fp16"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "half" / "tokenizer_config.json").is_file()
    before, after = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("m", "half"))
    assert after["model_cfg"] == before["model_cfg"] and after["model_id"] == before["model_id"]
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < (tmp_path / "m" / "model.safetensors").stat().st_size
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    done = subprocess.run(cmd[:4] + [str(broken), "--out", str(tmp_path / "x")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "broken.pt" in done.stderr and "Traceback" not in done.stderr


def test_unknown_config_lists_known_ones():
    with pytest.raises(ConfigError) as err:
        get_model_config("vit_giant")
    assert all(name in str(err.value) for name in list_configs())


def test_tokenizer_from_local_folder_offline(tokenizer_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = create_tokenizer("tiny_multiscan_h3", tokenizer_dir)
    ids = tokenizer(["This  MRI study shows:\n glioma."])
    assert ids[0, 0].item() == tokenizer.tokenizer.cls_token_id and ids.shape[1] <= 64
    with pytest.raises(ConfigError, match="tokenizer"):
        create_tokenizer("tiny_multiscan_h3", tokenizer_dir / "missing")


def test_truncated_checkpoint_names_the_file_and_the_problem(tmp_path, tiny_model):
    full = tmp_path / "full.pt"
    torch.save(tiny_model.state_dict(), full)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # an interrupted download or copy
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a PyTorch checkpoint.*truncated"):
        create_model("tiny_multiscan_h3", cut)
