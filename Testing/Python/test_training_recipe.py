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
