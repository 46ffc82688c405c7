"""The hierarchical trunk against plain-ViT computations done independently with timm's stock blocks."""
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from HLIPCore.model.vision import HLIPVisionTransformer, parse_layout

IMG, PATCH, WIDTH = (16, 32, 32), (8, 16, 16), 48  # 2 slices x 2 x 2 tokens per scan


def make_trunk(layout, scans=40, **kw):
    torch.manual_seed(0)
    trunk = HLIPVisionTransformer(layout, img_size=IMG, patch_size=PATCH, max_num_scans=scans, embed_dim=WIDTH,
                                  num_heads=2, **kw).eval()
    with torch.no_grad():  # larger weights than the ViT init so that mixing between tokens is visible
        for p in trunk.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    return trunk


def plain_vit_like(trunk) -> VisionTransformer:
    """timm's stock ViT (stock Attention, fused or not) with the trunk's weights: the independent reference."""
    vit = VisionTransformer(img_size=32, patch_size=16, in_chans=1, embed_dim=WIDTH, depth=len(trunk.blocks),
                            num_heads=2, num_classes=0, pos_embed="none", no_embed_class=True).eval()
    state = {k: v for k, v in trunk.state_dict().items() if not k.startswith(("spatial", "sequential", "patch_embed"))}
    vit.load_state_dict(state, strict=False)
    return vit


def embedded_tokens(trunk, x):
    """Patch + position embedding as [B, N, D', H'*W', C] (no class token)."""
    tokens = trunk.patch_embed(x)
    b, n, d, h, w, c = tokens.shape
    tokens = tokens + trunk.study_pos_embed(n, (d, h, w))
    return tokens.reshape(b, n, d, h * w, c)


def run_plain(vit, cls, tokens):
    """Class token + tokens through the stock blocks; returns the pre-norm sequence."""
    return vit.blocks(torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1))


@pytest.mark.parametrize("scans", [1, 3])
def test_study_layout_equals_plain_vit_on_all_tokens(scans):
    trunk = make_trunk(["study"] * 3)
    vit = plain_vit_like(trunk)
    x = torch.randn(2, scans, 1, *IMG)
    with torch.no_grad():
        tokens = embedded_tokens(trunk, x).flatten(1, 3)
        expected = vit.norm(run_plain(vit, trunk.cls_token, tokens))
        got = trunk.forward_features(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trunk(x), expected[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("level", ["slice", "scan"])
def test_windowed_layout_equals_independent_windows(level):
    trunk = make_trunk([level] * 3)
    vit = plain_vit_like(trunk)
    x = torch.randn(2, 3, 1, *IMG)
    with torch.no_grad():
        tokens = embedded_tokens(trunk, x)  # [B, N, D, L, C]
        b, n, d, l, c = tokens.shape
        windows = tokens.reshape(b * n * d, l, c) if level == "slice" else tokens.reshape(b * n, d * l, c)
        out = run_plain(vit, trunk.cls_token, windows)  # each window alone
        per_study = out.shape[0] // b
        cls = out[:, :1].reshape(b, per_study, 1, c).mean(dim=1)  # copies averaged at the study merge
        expected = vit.norm(torch.cat([cls, out[:, 1:].reshape(b, -1, c)], dim=1))
        got = trunk.forward_features(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_scan_layout_does_not_mix_scans_but_study_does():
    x = torch.randn(1, 2, 1, *IMG)
    x_changed = x.clone()
    x_changed[:, 1] += 1.0
    for layout, mixes in ((["scan"] * 3, False), (["scan", "study", "scan"], True)):
        trunk = make_trunk(layout)
        with torch.no_grad():
            a, b = trunk.forward_features(x), trunk.forward_features(x_changed)
        first_scan = slice(1, 1 + 8)  # tokens of scan 0 (after the class token)
        assert torch.allclose(a[:, first_scan], b[:, first_scan], atol=1e-6) != mixes


def test_eval_output_independent_of_batch():
    trunk = make_trunk("slice scan study")
    studies = torch.randn(3, 4, 1, *IMG)
    with torch.no_grad():
        batched = trunk(studies)
        alone = torch.cat([trunk(studies[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_training_mode_samples_scan_positions_eval_does_not():
    trunk = make_trunk("scan study")
    emb_eval = [trunk.study_pos_embed(3, (2, 2, 2)) for _ in range(3)]
    assert all(torch.equal(emb_eval[0], e) for e in emb_eval)
    trunk.train()
    torch.manual_seed(1)
    emb_train = [trunk.study_pos_embed(3, (2, 2, 2)) for _ in range(5)]
    assert any(not torch.equal(emb_train[0], e) for e in emb_train)


def test_position_embeddings_resample_to_other_grids_and_scan_counts():
    trunk = make_trunk("scan study")
    with torch.no_grad():
        out = trunk(torch.randn(1, 45, 1, 24, 48, 32))  # more scans than the table, other grid
    assert out.shape == (1, WIDTH) and torch.isfinite(out).all()


def test_single_scan_model_rejects_several_scans():
    trunk = make_trunk("slice study", scans=1)
    assert trunk.sequential_posemb is None
    with pytest.raises(ValueError, match="single-scan"):
        trunk(torch.randn(1, 2, 1, *IMG))


def test_patch_embed_equals_conv3d():
    trunk = make_trunk("study")
    x = torch.randn(2, 3, 1, 17, 33, 35)  # not a whole number of patches: the remainder is dropped
    with torch.no_grad():
        got = trunk.patch_embed(x)
        conv = trunk.patch_embed.proj(x.flatten(0, 1)).permute(0, 2, 3, 4, 1)
    torch.testing.assert_close(got.flatten(0, 1), conv, atol=1e-4, rtol=1e-4)  # 2048-term sums in another order


def test_recorded_attention_path_equals_fused_path():
    trunk = make_trunk("slice scan study")
    x = torch.randn(1, 2, 1, *IMG)
    with torch.no_grad():
        fused = trunk.forward_features(x)
        for block in trunk.blocks:
            block.attn.record = "probs"
        explicit = trunk.forward_features(x)
        probs = trunk.blocks[-1].attn.attn_probs
        pooled_explicit = trunk(x)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    assert probs.shape == (1, 2, 1 + 2 * 8, 1 + 2 * 8)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    # the pooled forward computes the last (study) block for the class token alone: its single row per head
    row = trunk.blocks[-1].attn.attn_probs
    assert row.shape == (1, 2, 1, 1 + 2 * 8)
    torch.testing.assert_close(row[:, :, 0], probs[:, :, 0])
    torch.testing.assert_close(pooled_explicit, fused[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["scan study", "slice scan study", "study slice", "scan scan"])
def test_class_token_only_last_block_equals_full_forward(layout):
    trunk = make_trunk(layout)
    x = torch.randn(2, 3, 1, *IMG)
    with torch.no_grad():
        torch.testing.assert_close(trunk(x), trunk.forward_features(x)[:, 0], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_same_gradients():
    x = torch.randn(2, 2, 1, *IMG)
    grads = []
    for checkpointing in (False, True):
        trunk = make_trunk("slice scan study").train()
        trunk.set_grad_checkpointing(checkpointing)
        torch.manual_seed(3)
        trunk(x).square().sum().backward()
        grads.append(trunk.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_layout_parsing_rejects_unknown_levels():
    assert parse_layout("slice, scan study") == ("slice", "scan", "study")
    with pytest.raises(ValueError, match="one of"):
        parse_layout(["slice", "series"])


def test_bf16_autocast_close_to_fp32():
    from HLIPCore.model import create_model
    from HLIPCore.model.precision import autocast
    torch.manual_seed(0)
    model = create_model("small_multiscan_h2")
    x = torch.randn(1, 2, 1, 32, 128, 128)
    with torch.no_grad():
        ref = model.encode_image(x)
        with autocast("cpu", "bf16"):
            low = model.encode_image(x)
    assert low.dtype == torch.bfloat16
    assert F.cosine_similarity(ref, low.float()).item() >= 0.999
