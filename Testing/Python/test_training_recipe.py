"""The shipped demo recipe parses, names a registered model, and that model builds with the parts the recipe needs."""
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_demo_recipe_builds_its_model():
    from HLIPCore.model import create_model
    from HLIPCore.model.factory import get_model_config
    from HLIPCore.training.config import load_config
    cfg = load_config(ROOT / "Resources/training/demo_phantoms.yaml")
    assert cfg.token_loss_weight and cfg.attention_loss_weight and cfg.study_loss_weight
    assert all(Path(m).parent.parent == ROOT for m in cfg.train_manifest)  # next to the checkout
    mcfg = get_model_config(cfg.model)
    assert mcfg["preprocess"]["mri_spacing"] and mcfg["vision_cfg"]["stem"]
    assert mcfg["vision_cfg"]["attn_layout"][-1] == "study"  # the attention loss reads the last study block
    model = create_model(cfg.model)
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())


def test_text_phase_recipe_starts_from_the_first_phase_and_trains_text_only():
    from HLIPCore.training.config import load_config
    first = load_config(ROOT / "Resources/training/demo_phantoms.yaml")
    cfg = load_config(ROOT / "Resources/training/demo_phantoms_text_phase.yaml")
    assert cfg.lock_image and cfg.text_word_dropout > 0
    assert Path(cfg.model) == Path(first.output_dir) / "final" == Path(cfg.tokenizer)
    assert cfg.train_manifest == first.train_manifest and cfg.prompts == first.prompts
    assert not (cfg.token_loss_weight or cfg.study_loss_weight or cfg.attention_loss_weight or cfg.stem_loss_weight)


def test_a_model_written_as_a_relative_path_is_taken_from_the_config_even_before_it_exists(tmp_path):
    import pytest
    from HLIPCore.errors import ConfigError
    from HLIPCore.model.factory import get_model_config
    from HLIPCore.training.config import load_config
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "phase2.yaml"
    recipe.write_text("model: ../run/final\ntokenizer: org/tokenizer\ntrain_manifest: m.jsonl\nsteps: 1\n")
    cfg = load_config(recipe)
    assert Path(cfg.model) == tmp_path / "run" / "final"      # the first phase has not written it yet
    assert cfg.tokenizer == "org/tokenizer"                    # a hub name stays a name
    with pytest.raises(ConfigError, match="run/final: model folder not found"):
        get_model_config(cfg.model)
    with pytest.raises(ConfigError, match="unknown model config 'tiny_multiscan'"):
        get_model_config("tiny_multiscan")
