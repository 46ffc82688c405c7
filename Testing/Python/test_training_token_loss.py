"""The token loss: per-token targets from series masks, aligned with the images; a training-only head that
trains, resumes exactly and never reaches the exported model."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from HLIPCore.errors import ConfigError
from HLIPCore.losses import token_class_loss
from HLIPCore.training.config import TrainConfig
from HLIPCore.training.loop import Trainer

PREPROCESS = {"mode": "mri", "img_size": [16, 64, 64], "resize_hw": 64}
LABELS = ("normal", "glioma", "stroke", "glioma")
LESION = {"glioma": (0.0, -0.4, -0.4), "stroke": (0.0, 0.4, 0.4)}


def _scan(rng, label, shape):
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    head = (x ** 2 + y ** 2 + z ** 2 < 0.85)
    lesion = np.zeros(shape, bool)
    if label in LESION:
        cz, cy, cx = LESION[label]
        lesion = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 < 0.2
    vol = 100.0 * head + 200.0 * lesion + rng.normal(0, 3, shape)
    return vol.astype(np.float32), lesion.astype(np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 studies of 2 NIfTI scans (different shapes and spacings) with one lesion mask per scan."""
    root = tmp_path_factory.mktemp("token_data")
    rng = np.random.default_rng(1)
    lines = []
    for i, label in enumerate(LABELS):
        folder = root / f"s{i}"
        folder.mkdir()
        files, masks = [], []
        for j, (shape, spacing) in enumerate((((12, 40, 48), (1.5, 1.5, 4.0)), ((20, 36, 36), (2.0, 2.0, 2.5)))):
            vol, lesion = _scan(rng, label, shape)
            affine = np.diag([*spacing, 1.0])
            nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), affine), folder / f"{j:02d}_scan.nii.gz")
            nib.save(nib.Nifti1Image(lesion.transpose(2, 1, 0), affine), folder / f"{j:02d}_mask.nii.gz")
            files.append(f"s{i}/{j:02d}_scan.nii.gz")
            masks.append(f"s{i}/{j:02d}_mask.nii.gz")
        lines.append({"study": f"s{i}", "nifti": files, "series_masks": masks, "label": label,
                      "report": f"Impression: {label}."})
    (root / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def _config(data, out, **changes):
    base = dict(model="tiny_multiscan_h3", tokenizer="build", train_manifest=str(data / "manifest.jsonl"),
                cache_dir=str(data / "cache"), output_dir=str(out), preprocess=PREPROCESS, steps=4, batch_size=2,
                lr=1e-3, warmup=1, save_every_steps=100, seed=5, token_loss_weight=1.0, token_loss_threshold=0.2,
                study_loss_weight=1.0)
    base.update(changes)
    return TrainConfig(**base)


def test_token_loss_averages_lesion_and_normal_tokens_separately():
    logits = torch.randn(2, 6, 3)
    targets = torch.tensor([[0, 0, 0, 0, 2, -1], [1, 0, 0, 0, 0, 0]])
    ce = F.cross_entropy(logits.reshape(-1, 3), targets.clamp(min=0).reshape(-1), reduction="none").view(2, 6)
    lesion = (ce[0, 4] + ce[1, 0]) / 2
    normal = ce[targets == 0].mean()
    torch.testing.assert_close(token_class_loss(logits, targets, normal_index=0), (lesion + normal) / 2)
    assert token_class_loss(logits, torch.full((2, 6), -1), 0).item() == 0.0


def test_token_targets_sit_where_the_lesion_is_in_the_model_input(data, tmp_path):
    """The mask goes through the image's own geometric steps: token fractions equal the share of bright
    (lesion) voxels of the preprocessed image in each token."""
    trainer = Trainer(_config(data, tmp_path / "run"), resume=None, progress=False)
    entry = trainer.entries[1]  # glioma
    both = trainer.cache.token_targets(entry).float()
    assert both.shape == (2, 2, 2, 4, 4)  # scans, (abnormal, lesion core), token grid
    torch.testing.assert_close(both[:, 0], both[:, 1])  # these masks are 0/1: all of the abnormality is lesion
    fractions = both[:, 0]
    images = trainer.cache.load(entry)[:, 0]
    grid = trainer.model.visual.trunk.patch_embed.patch_size
    bright = F.avg_pool3d((images > images.amax(dim=(1, 2, 3), keepdim=True) * 0.8).float()[:, None], grid)[:, 0]
    assert fractions.shape == bright.shape == (2, 2, 4, 4)
    for scan in range(2):
        assert fractions[scan].max() > 0.2
        peak = fractions[scan].flatten().argmax()  # (ties between depth tokens of a centred lesion allowed)
        assert abs(bright[scan].flatten()[peak] - bright[scan].max()) < 0.03
        assert np.corrcoef(fractions[scan].flatten(), bright[scan].flatten())[0, 1] > 0.9
    assert trainer.cache.token_targets(trainer.entries[0]).max() == 0  # normal study: no lesion token
    # the dataset turns fractions into class targets for the scans it sampled, in their sampled order
    trainer.dataset.enable_token_targets(trainer.token_classes, "normal", (2, 4, 4), 0.2)
    scans, _, targets, study, core = trainer.dataset[(1, 2, 0)]
    glioma, normal = trainer.token_classes.index("glioma"), trainer.token_classes.index("normal")
    assert study.item() == glioma
    assert set(targets.unique().tolist()) == {-1, normal, glioma}
    for k in range(2):  # each sampled scan's targets follow that scan's own lesion
        match = [s for s in range(2) if torch.allclose(scans[k, 0].mean(), images[s].mean(), atol=0.5)
                 and torch.equal(targets[k] == glioma, fractions[s] >= 0.2)
                 and torch.equal(targets[k] == normal, fractions[s] == 0)]  # partly lesion: neither (-1)
        assert match
        # the attention target: that scan's lesion-core fraction
        assert any(torch.allclose(core[k], both[s, 1]) for s in match)
    # with a core threshold, tokens holding a small part of the lesion core are lesion too; the rest unchanged
    low = float(both[:, 1][both[:, 1] > 0].min()) * 1.01  # just above the smallest core fraction present
    trainer.dataset.enable_token_targets(trainer.token_classes, "normal", (2, 4, 4), 0.2, core_threshold=low)
    scans2, _, targets2, _, core2 = trainer.dataset[(1, 2, 0)]
    assert torch.equal(scans2, scans) and torch.equal(core2, core)
    expect = (targets == glioma) | (core >= low)
    assert torch.equal(targets2 == glioma, expect)
    assert int(expect.sum()) > int((targets == glioma).sum())  # some partly-lesion tokens became lesion
    assert torch.equal(targets2 == normal, targets == normal)   # lesion-free tokens stay normal


def test_token_head_trains_resumes_exactly_and_is_not_exported(data, tmp_path):
    whole = Trainer(_config(data, tmp_path / "whole"), progress=False)
    whole_rows = whole.train()
    first = Trainer(_config(data, tmp_path / "split"), progress=False)
    part = first.train(stop_after=2)
    second = Trainer(_config(data, tmp_path / "split"), progress=False)
    assert second.step == 2
    rest = second.train()
    assert [r["loss"] for r in part + rest] == [r["loss"] for r in whole_rows]
    for name, value in whole.token_net.heads_state_dict().items():
        assert torch.equal(value, second.token_net.heads_state_dict()[name]), name
    assert all(r.get("token_loss") for r in whole_rows)
    from HLIPCore.model import create_model
    from HLIPCore.model.checkpoint import load_state_dict
    exported = load_state_dict(tmp_path / "whole" / "final" / "model.safetensors")
    assert set(exported) == set(create_model("tiny_multiscan_h3").state_dict())


def test_token_and_study_losses_train_the_trunk(data, tmp_path):
    trainer = Trainer(_config(data, tmp_path / "fit", steps=25, augment=False, batch_size=4), progress=False)
    losses = [float(r["token_loss"]) for r in trainer.train()]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    # the study head, reading the exported embedding, has learnt the study labels (from chance: ln 3)
    images = torch.stack([trainer.cache.load(e) for e in trainer.entries])
    with torch.no_grad():
        logits = trainer.token_net.study_head(trainer.model.eval().encode_image(images, normalize=True)) * 10
    labels = torch.tensor([trainer.token_classes.index(e.label) for e in trainer.entries])
    assert F.cross_entropy(logits, labels) < 0.75 * np.log(3)


def test_token_loss_needs_series_masks(tmp_path):
    manifest = tmp_path / "m.jsonl"
    Path(tmp_path / "a.nii.gz").write_bytes(b"")
    manifest.write_text(json.dumps({"study": "a.nii.gz", "report": "x", "label": "normal"}) + "\n")
    cfg = TrainConfig(train_manifest=str(manifest), steps=1, token_loss_weight=1.0, output_dir=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="series_masks"):
        Trainer(cfg, progress=False)


def test_series_that_do_not_show_the_finding_get_no_lesion_targets(data, tmp_path):
    """`series_shows` false: that scan's lesion tokens are left out (-1); its other tokens stay normal."""
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    rows[1]["series_shows"] = [False, True]                      # the glioma is seen on the second scan only
    manifest = tmp_path / "shows.jsonl"
    for r in rows:                                               # the manifest now lives elsewhere: absolute paths
        r.update(nifti=[str(data / f) for f in r["nifti"]], series_masks=[str(data / f) for f in r["series_masks"]])
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer = Trainer(_config(data, tmp_path / "run", train_manifest=str(manifest), augment=False), resume=None,
                      progress=False)
    assert trainer.entries[1].series_shows == [False, True] and trainer.entries[0].series_shows == []
    trainer.dataset.enable_token_targets(trainer.token_classes, "normal", (2, 4, 4), 0.2)
    _, _, targets, _, core = trainer.dataset[(1, 2, 0)]
    fractions = trainer.cache.token_targets(trainer.entries[1]).float()[:, 0]
    glioma, normal = trainer.token_classes.index("glioma"), trainer.token_classes.index("normal")
    for k in range(2):  # without augmentation the scans come in file order
        lesion = fractions[k] >= 0.2
        assert lesion.any() and bool((targets[k][lesion] == (glioma if k == 1 else -1)).all()), k
        assert bool((targets[k][fractions[k] == 0] == normal).all())
        assert (core[k].sum() > 0) == (k == 1)  # nothing to look at on the series that does not show it


def test_series_shows_must_match_the_scan_files(data, tmp_path):
    from HLIPCore.errors import InputError
    from HLIPCore.training.dataset import read_manifest
    row = json.loads((data / "manifest.jsonl").read_text().splitlines()[0])
    row["series_shows"] = [True]
    (tmp_path / "bad.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(InputError, match="series_shows"):
        read_manifest(tmp_path / "bad.jsonl")


def test_attention_loss_is_the_cross_entropy_to_the_lesion_tokens():
    from HLIPCore.losses import attention_target_loss
    attention = torch.softmax(torch.randn(3, 6), dim=1)
    targets = torch.tensor([[0, 2, 2, 0, 0, -1], [0, 0, 0, 0, 0, 0], [1, -1, 0, 0, 0, 0]])
    expected = (-(torch.log(attention[0, 1]) + torch.log(attention[0, 2])) / 2 - torch.log(attention[2, 0])) / 2
    torch.testing.assert_close(attention_target_loss(attention, targets, normal_index=0), expected)
    assert attention_target_loss(attention, torch.zeros(3, 6, dtype=torch.long), 0).item() == 0.0
    # with weights (the lesion core's share of each token) the target follows them; all-zero weights fall back
    weights = torch.tensor([[0, 3.0, 1.0, 0, 0, 0], [0] * 6, [0] * 6])
    weighted = (-(0.75 * torch.log(attention[0, 1]) + 0.25 * torch.log(attention[0, 2])) - torch.log(attention[2, 0])) / 2
    torch.testing.assert_close(attention_target_loss(attention, targets, 0, weights), weighted)


def test_attention_loss_moves_the_class_token_onto_the_lesion(data, tmp_path):
    """Trained with the attention loss alone (with CLIP), the explained block's class token attends more to the
    lesion tokens, in the model that is exported (the loss reads the same attention the maps explain)."""
    cfg = _config(data, tmp_path / "attn", steps=30, augment=False, batch_size=4, token_loss_weight=0.0,
                  study_loss_weight=0.0, attention_loss_weight=1.0, lr=2e-3)
    trainer = Trainer(cfg, progress=False)

    def lesion_share():
        net = trainer.token_net.eval()
        shares = []
        with torch.no_grad():
            for i, entry in enumerate(trainer.entries):
                if entry.label == "normal":
                    continue
                scans, text, targets, _, _ = trainer.dataset[(i, 2, 0)]
                out = net(scans[None], trainer.tokenizer([text]))
                lesion = (targets.reshape(1, -1) > 0) & (targets.reshape(1, -1) != trainer.token_classes.index("normal"))
                shares.append(float(out["class_attention"][lesion].sum()))
        return np.mean(shares)

    before = lesion_share()
    rows = trainer.train()
    assert all(r.get("attention_loss") for r in rows)
    assert lesion_share() > 2 * before, (before, lesion_share())
    from HLIPCore.model.checkpoint import load_state_dict
    exported = load_state_dict(tmp_path / "attn" / "final" / "model.safetensors")
    assert set(exported) == set(trainer.model.state_dict())


def test_attention_loss_needs_a_study_level_block(data, tmp_path):
    from HLIPCore.model.factory import get_model_config
    model = get_model_config("tiny_multiscan_h3")
    model["vision_cfg"]["attn_layout"] = ["slice", "scan", "scan"]
    with pytest.raises(ConfigError, match="study-level block"):
        Trainer(_config(data, tmp_path / "x", model=model, attention_loss_weight=1.0), progress=False)


# -- the stem loss: the conv stem's finest cells told where the lesion core is ----------------------------------

def _conv_stem_model() -> dict:
    from HLIPCore.model.factory import get_model_config
    mcfg = json.loads(json.dumps(get_model_config("tiny_multiscan_h3")))
    mcfg["vision_cfg"]["stem"] = {"layers": [[8, [2, 4, 4], [2, 4, 4]], [16, 2, 3], [16, 2, 3]], "norm": "batch"}
    return mcfg


def test_stem_loss_averages_core_and_other_cells_separately():
    from HLIPCore.losses import cell_core_loss
    logits = torch.randn(2, 3, 4)
    targets = torch.tensor([[[1, 0, 0, -1]] * 3, [[0, 0, 0, 0]] * 3])
    bce = F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0).float(), reduction="none")
    expected = (bce[targets == 1].mean() + bce[targets == 0].mean()) / 2
    torch.testing.assert_close(cell_core_loss(logits, targets), expected)
    assert cell_core_loss(logits, torch.full_like(targets, -1)).item() == 0.0


def test_stem_loss_per_scan_weighs_a_small_lesion_as_much_as_a_large_one():
    from HLIPCore.losses import cell_core_loss
    logits = torch.randn(2, 1, 10)
    targets = torch.zeros(2, 1, 10, dtype=torch.long)
    targets[0, 0, :8] = 1           # a large lesion: 8 core cells
    targets[1, 0, 0] = 1            # a small one: 1 cell
    targets[1, 0, 9] = -1
    bce = F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0).float(), reduction="none")
    per_scan = (bce[0, 0, :8].mean() + bce[1, 0, 0]) / 2
    expected = (per_scan + bce[targets == 0].mean()) / 2
    torch.testing.assert_close(cell_core_loss(logits, targets, per_scan=True), expected)
    pooled = (bce[targets == 1].mean() + bce[targets == 0].mean()) / 2
    torch.testing.assert_close(cell_core_loss(logits, targets), pooled)
    assert not torch.isclose(expected, pooled)
    assert cell_core_loss(logits, torch.full_like(targets, -1), per_scan=True).item() == 0.0


def test_a_yes_no_setting_must_be_a_boolean():
    from HLIPCore.errors import ConfigError
    from HLIPCore.training.config import TrainConfig
    with pytest.raises(ConfigError, match="'stem_loss_per_scan': must be true or false, got 'yes'"):
        TrainConfig(train_manifest="m.jsonl", stem_loss_per_scan="yes")


def test_stem_cells_refine_the_token_targets_and_the_stem_loss_trains(data, tmp_path):
    """Cell targets are the same mask at the stem layer's stride (averaged back over a token they give the
    token's fraction); cells with a little core get no target; the stem head learns them and is not exported."""
    from HLIPCore.attention_maps import refine_geometry
    cfg = _config(data, tmp_path / "stem", model=_conv_stem_model(), stem_loss_weight=1.0, steps=20, lr=3e-3,
                  augment=False, batch_size=4, stem_loss_core_threshold=0.5)
    trainer = Trainer(cfg, resume=None, progress=False)
    stem = trainer.model.visual.trunk.patch_embed
    assert refine_geometry(stem) == (8, (2, 4, 4)) and trainer.cache.cell_grid == (2, 4, 4)
    entry = trainer.entries[1]  # glioma
    cells, tokens = trainer.cache.cell_targets(entry).float(), trainer.cache.token_targets(entry).float()
    assert cells.shape == (2, 2, 8, 16, 16)
    torch.testing.assert_close(F.avg_pool3d(cells[:, 1], (4, 4, 4)), tokens[:, 1], atol=2e-3, rtol=0)
    item = trainer.dataset[(1, 2, 0)]
    assert len(item) == 6 and item[5].shape == (2, 8, 16, 16)
    core = cells[:, 1]  # without augmentation the scans come in file order
    assert torch.equal(item[5] == 1, core >= 0.5) and torch.equal(item[5] == 0, core == 0)
    assert bool((item[5] == -1).any())  # the lesion's rim: partly core, no target
    assert int(trainer.dataset[(0, 2, 0)][5].max()) == 0  # normal study: every cell "not core"
    rows = trainer.train()
    losses = [float(r["stem_loss"]) for r in rows]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert {"cell_head.weight", "cell_head.bias"} <= set(trainer.token_net.heads_state_dict())
    from HLIPCore.model.checkpoint import load_state_dict
    exported = load_state_dict(tmp_path / "stem" / "final" / "model.safetensors")
    assert not any("cell_head" in name for name in exported)


def test_stem_loss_needs_a_conv_stem(data, tmp_path):
    with pytest.raises(ConfigError, match="stem_loss_weight.*convolutional stem"):
        Trainer(_config(data, tmp_path / "lin", stem_loss_weight=1.0), resume=None, progress=False)


def test_stem_pretraining_teaches_the_cells_first_and_is_not_repeated_on_resume(data, tmp_path):
    """`stem_pretrain_steps`: the stem's first stage and the cell head learn the cell targets before the first
    joint step; the global RNG is left alone (runs stay reproducible) and a resumed run does not pretrain again."""
    cfg = _config(data, tmp_path / "pre", model=_conv_stem_model(), stem_loss_weight=1.0, steps=2, augment=False,
                  stem_loss_core_threshold=0.5, stem_pretrain_steps=40, stem_pretrain_lr=1e-2, stem_pretrain_batch=4)
    trainer = Trainer(cfg, resume=None, progress=False)
    stem = trainer.model.visual.trunk.patch_embed
    first, later = stem.convs[0].weight.detach().clone(), stem.convs[-3].weight.detach().clone()
    trainer.prepare_data()
    rng = torch.get_rng_state()
    losses = trainer.pretrain_stem()
    assert torch.equal(torch.get_rng_state(), rng)
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert not torch.equal(stem.convs[0].weight, first)       # the first stage trained,
    assert torch.equal(stem.convs[-3].weight, later)          # the coarser layers did not
    trainer.train(stop_after=1)
    resumed = Trainer(cfg, progress=False)
    assert resumed.step == 1
    resumed.train()
    assert not hasattr(resumed, "stem_pretrain_losses") and (tmp_path / "pre" / "final").is_dir()


def test_stem_pretraining_needs_the_stem_loss(data, tmp_path):
    with pytest.raises(ConfigError, match="'stem_pretrain_steps'.*stem_loss_weight > 0"):
        _config(data, tmp_path / "x", model=_conv_stem_model(), stem_pretrain_steps=10)
    with pytest.raises(ConfigError, match="'stem_pretrain_lr': must be a positive number"):
        _config(data, tmp_path / "x", model=_conv_stem_model(), stem_loss_weight=1.0, stem_pretrain_lr=0)
