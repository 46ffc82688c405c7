"""Attention maps: rollout through the hierarchy against explicit full matrices; gradient maps' shape and use."""
import numpy as np
import pytest
import torch

from HLIPCore import attention_maps
from HLIPCore.model import create_model

IMG = (16, 64, 64)  # tiny config: 2 slices x 4 x 4 tokens per scan


def _model(layout):
    from HLIPCore.model.factory import get_model_config
    cfg = get_model_config("tiny_multiscan_h3")
    cfg["vision_cfg"]["attn_layout"] = layout
    torch.manual_seed(0)
    model = create_model(cfg)
    with torch.no_grad():
        for p in model.visual.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    return model


def brute_force_rollout(layout, means, scans, slices, tokens):
    """Row vector through explicit matrices over (class-token copies of the level) + all patch tokens."""
    per = {"slice": scans * slices, "scan": scans, "study": 1}

    def block_matrix(a, windows):  # block-diagonal Â in the (copies..., tokens...) index space
        size = windows + tokens
        full = np.zeros((size, size))
        per_window = tokens // windows
        for w in range(windows):
            idx = [w] + [windows + w * per_window + t for t in range(per_window)]
            m = 0.5 * a[w] + 0.5 * np.eye(len(idx))
            full[np.ix_(idx, idx)] = m / m.sum(axis=1, keepdims=True)
        return full

    def regroup(src, dst):  # forward x_dst = G x_src over (copies + tokens)
        g = np.zeros((dst + tokens, src + tokens))
        g[dst:, src:] = np.eye(tokens)
        for d in range(dst):
            for s in range(src):
                if src >= dst and s // (src // dst) == d:  # merge: average the copies
                    g[d, s] = dst / src
                if src < dst and d // (dst // src) == s:  # split: copy
                    g[d, s] = 1.0
        return g

    r = np.zeros(1 + tokens)
    r[0] = 1.0
    r = r @ regroup(per[layout[-1]], 1)
    for b in range(len(layout) - 1, -1, -1):
        r = r @ block_matrix(means[b], per[layout[b]])
        if b > 0:
            r = r @ regroup(per[layout[b - 1]], per[layout[b]])
    return r[per[layout[0]]:]


@pytest.mark.parametrize("layout", [["study", "study"], ["scan", "study", "scan"], ["slice", "scan", "study"],
                                    ["study", "slice", "slice"]])
def test_rollout_equals_explicit_matrix_product(layout):
    model = _model(layout)
    x = torch.randn(1, 2, 1, *IMG)
    _, ours = attention_maps.rollout(model, x)
    trunk = model.visual.trunk
    for block in trunk.blocks:
        block.attn.record = "mean"
    with torch.no_grad():
        trunk.forward_features(x)  # every block in full (rollout itself computes the last one for the class token)
    means = [block.attn.attn_probs.float().numpy() for block in trunk.blocks]
    expected = brute_force_rollout(layout, means, scans=2, slices=2, tokens=2 * 2 * 16)
    np.testing.assert_allclose(ours.flatten().numpy(), expected, rtol=1e-4, atol=1e-6)


def test_gradcam_maps_are_per_class_and_on_the_token_grid():
    from types import SimpleNamespace
    model = _model(["slice", "scan", "study"])
    feats_dim = model.visual.head.proj.out_features
    torch.manual_seed(1)
    weights = torch.nn.functional.normalize(torch.randn(3, feats_dim), dim=-1)

    class Classifier:  # linear class scores on the image features
        def class_score(self, features, task, cls):
            return features @ weights[int(cls)]

    x = torch.randn(1, 3, 1, *IMG)
    feats, maps = attention_maps.gradcam(model, Classifier(), x, lambda f: [("t", "0"), ("t", "1")])
    assert feats.shape == (1, feats_dim) and not feats.requires_grad
    assert set(maps) == {("t", "0"), ("t", "1")}
    for m in maps.values():
        assert m.shape == (3, 2, 4, 4) and (m >= 0).all()
    assert not torch.allclose(maps[("t", "0")], maps[("t", "1")])
    assert all(b.attn.record is None and b.attn.attn_probs is None for b in model.visual.trunk.blocks)
    with torch.no_grad():
        torch.testing.assert_close(feats, model.visual(x), atol=1e-5, rtol=1e-5)  # same features as plain inference
    up = attention_maps.upsample_to_grid(maps[("t", "0")], IMG)
    assert up.shape == (3, *IMG)
    norm = attention_maps.normalise({"a": up})["a"]
    assert norm.min() == 0 and norm.max() == 1


def _conv_stem_model(layers=((8, (2, 4, 4), (2, 4, 4)), (16, 2, 3), (16, (2, 2, 2), 3))):
    from HLIPCore.model.factory import get_model_config
    cfg = get_model_config("tiny_multiscan_h3")
    cfg["vision_cfg"]["attn_layout"] = ["scan", "study", "scan", "study"]
    cfg["vision_cfg"]["stem"] = {"layers": [list(layer) for layer in layers], "norm": "batch"}
    torch.manual_seed(0)
    return create_model(cfg).eval()


def test_the_refined_map_reads_the_last_layer_of_the_finest_stage():
    """A patchify stem stage alone: its own activation. A stage with stride-1 convolutions after the patchify
    layer (cells that see their neighbours): the last of them, still on the finest grid."""
    plain = _conv_stem_model().visual.trunk.patch_embed
    assert attention_maps.refine_layer(plain) is plain.convs[2]
    assert attention_maps.refine_geometry(plain) == (8, (2, 4, 4))
    model = _conv_stem_model(((8, (2, 4, 4), (2, 4, 4)), (12, 1, 3), (16, 2, 3), (16, (2, 2, 2), 3)))
    stem = model.visual.trunk.patch_embed
    assert attention_maps.refine_layer(stem) is stem.convs[5]
    assert attention_maps.refine_geometry(stem) == (12, (2, 4, 4))

    class Classifier:
        def class_score(self, features, task, cls):
            return features.sum(dim=-1)

    _, maps = attention_maps.gradcam(model, Classifier(), torch.randn(1, 2, 1, *IMG), lambda f: [("t", "0")],
                                     refine=True)
    assert maps[("t", "0")].shape == (2, 8, 16, 16) and not stem.convs[5]._forward_hooks


def test_method_auto_means_refined_for_a_conv_stem_and_gradcam_otherwise():
    from HLIPCore.cli.cmd_analyze import ATTENTION_METHODS
    assert ATTENTION_METHODS == attention_maps.METHODS  # the CLIs offer exactly the module's methods
    assert attention_maps.resolve_method(_conv_stem_model(), "auto") == "refined"
    linear = _model(["scan", "study"])
    assert attention_maps.resolve_method(linear, "auto") == "gradcam"
    assert attention_maps.resolve_method(linear, "rollout") == "rollout"
    with pytest.raises(ValueError, match="convolutional stem"):
        attention_maps.resolve_method(linear, "refined")
    with pytest.raises(ValueError, match="one of"):
        attention_maps.resolve_method(linear, "lrp")


def test_refined_map_is_gradcam_times_the_stem_layercam_on_the_finer_grid():
    """Checked against an independent computation: autograd of the class score with respect to the stem layer's
    activation (captured by our own hook) and to the explained block's attention."""
    model = _conv_stem_model()
    feats_dim = model.visual.head.proj.out_features
    weights = torch.nn.functional.normalize(torch.randn(2, feats_dim, generator=torch.Generator().manual_seed(2)), dim=-1)

    class Classifier:
        def class_score(self, features, task, cls):
            return features @ weights[int(cls)]

    x = torch.randn(1, 2, 1, *IMG)
    _, coarse = attention_maps.gradcam(model, Classifier(), x, lambda f: [("t", "0")])
    _, refined = attention_maps.gradcam(model, Classifier(), x, lambda f: [("t", "0")], refine=True)
    m = refined[("t", "0")]
    assert m.shape == (2, 8, 16, 16) and (m >= 0).all()  # the stem's first stage: stride (2, 4, 4)
    assert all(b.attn.record is None for b in model.visual.trunk.blocks)
    assert not model.visual.trunk.patch_embed.convs[2]._forward_hooks  # the hook is removed again

    seen = []
    handle = model.visual.trunk.patch_embed.convs[2].register_forward_hook(lambda mod, i, o: seen.append(o))
    trunk, attn = model.visual.trunk, model.visual.trunk.blocks[-1].attn
    attn.record = "probs"
    try:
        xin = x.clone().requires_grad_(True)
        feats = model.visual.head(trunk.forward_head(trunk.forward_features(xin, class_token_only=True)))
        score = Classifier().class_score(feats, "t", "0").sum()
        g_attn, g_act = torch.autograd.grad(score, [attn.attn_probs, seen[0]])
        token = (g_attn * attn.attn_probs).clamp(min=0).mean(1)[:, 0, 1:].reshape(2, 2, 4, 4)
        layercam = (g_act.clamp(min=0) * seen[0]).sum(1)
    finally:
        attn.record, attn.attn_probs = None, None
        handle.remove()
    torch.testing.assert_close(coarse[("t", "0")], token.detach(), rtol=1e-4, atol=1e-8)
    expected = attention_maps.upsample_to_grid(token.detach(), (8, 16, 16)) * layercam.detach()
    torch.testing.assert_close(m, expected, rtol=1e-4, atol=1e-8)
    assert float(m.max()) > 0


def test_smoothing_moves_the_peak_of_a_shell_to_its_centre_and_is_isotropic_in_mm():
    """A refined map that lights the oedema around a small lesion (a shell) peaks on the shell; smoothed, at the
    lesion. The sigma is in mm, so on an anisotropic grid a point spreads equally far along every axis."""
    spacing = (5.0, 1.6, 1.6)
    d, h, w = np.meshgrid(*(np.arange(n) * s for n, s in zip((32, 128, 128), spacing)), indexing="ij")
    centre = (80.0, 100.0, 110.0)
    r = np.sqrt((d - centre[0]) ** 2 + (h - centre[1]) ** 2 + (w - centre[2]) ** 2)
    rng = np.random.default_rng(0)
    shell = ((r > 8) & (r < 18)).astype(np.float32) * rng.uniform(0.5, 1.0, r.shape).astype(np.float32)
    raw_peak = np.unravel_index(int(np.argmax(shell)), shell.shape)
    assert r[raw_peak] > 8  # the noisy shell's hottest voxel is on the shell
    smoothed = attention_maps.smooth(shell, spacing, 8.0)
    peak = np.unravel_index(int(np.argmax(smoothed)), smoothed.shape)
    assert r[peak] < 5.0
    assert attention_maps.smooth(shell, spacing, 0) is shell
    point = np.zeros((32, 128, 128), np.float32)
    point[16, 64, 64] = 1
    blurred = attention_maps.smooth(point, spacing, 6.0)
    profile = [blurred[16 + 2, 64, 64], blurred[16, 64 + 6, 64]]  # 10 mm along d, 9.6 mm along h
    assert abs(profile[0] / profile[1] - np.exp(-(100 - 9.6 ** 2) / (2 * 36))) < 0.02
    assert attention_maps.default_smoothing("refined") == 8.0 and attention_maps.default_smoothing("gradcam") == 0
