"""The convolutional tokenizer option of the trunk: same token grid as the patch embedding, computed per scan."""
import pytest
import torch
import torch.nn as nn

from HLIPCore.model.patch_embed import ConvStem3D
from HLIPCore.model.vision import HLIPVisionTransformer

IMG, PATCH, WIDTH = (16, 32, 32), (8, 16, 16), 48
LAYERS = [[8, [2, 4, 4], [2, 4, 4]], [16, 2, 3], [16, [2, 2, 2], 3]]


def make_trunk(**stem):
    torch.manual_seed(0)
    return HLIPVisionTransformer(["scan", "study"], img_size=IMG, patch_size=PATCH, embed_dim=WIDTH, num_heads=2,
                                 stem={"layers": LAYERS, **stem}).eval()


def test_conv_stem_gives_the_patch_grid_and_the_trunk_runs():
    trunk = make_trunk()
    assert isinstance(trunk.patch_embed, ConvStem3D)
    x = torch.randn(2, 3, 1, *IMG)
    tokens = trunk.patch_embed(x)
    assert tokens.shape == (2, 3, 2, 2, 2, WIDTH)
    assert trunk.forward_features(x).shape == (2, 1 + 3 * 8, WIDTH)
    # a larger grid (more slices at test time) gives proportionally more tokens, as the linear embedding does
    assert trunk.patch_embed(torch.randn(1, 1, 1, 32, 48, 64)).shape == (1, 1, 4, 3, 4, WIDTH)


@pytest.mark.parametrize("norm,mode", [("batch", "eval"), ("group", "eval"), ("group", "train")])
def test_each_scan_is_tokenized_alone(norm, mode):
    """A scan's tokens do not depend on the other scans or studies it is batched with: in evaluation always
    (BatchNorm's running statistics), in training too with GroupNorm."""
    trunk = make_trunk(norm=norm).train(mode == "train")
    x = torch.randn(2, 3, 1, *IMG)
    with torch.no_grad():
        together = trunk.patch_embed(x)
        alone = trunk.patch_embed(x[1:, 2:])
    torch.testing.assert_close(together[1:, 2:], alone, atol=1e-5, rtol=1e-5)


def test_conv_stem_sees_local_structure_the_layer_order_says():
    """The first layer is a patchify conv (kernel = stride, no padding), then padded 3x3x3 convs."""
    stem = make_trunk().patch_embed
    convs = [m for m in stem.convs if isinstance(m, nn.Conv3d)]
    assert [c.kernel_size for c in convs] == [(2, 4, 4), (3, 3, 3), (3, 3, 3)]
    assert [c.padding for c in convs] == [(0, 0, 0), (1, 1, 1), (1, 1, 1)]
    assert all(isinstance(m, nn.BatchNorm3d) for m in stem.convs if isinstance(m, (nn.GroupNorm, nn.BatchNorm3d)))
    assert isinstance(make_trunk(norm="group").patch_embed.convs[1], nn.GroupNorm)


def test_conv_stem_strides_must_make_the_patch_size():
    with pytest.raises(ValueError, match="strides multiply to"):
        make_trunk(layers=[[8, [2, 4, 4], [2, 4, 4]], [16, 2, 3]])
    with pytest.raises(ValueError, match="norm"):
        make_trunk(norm="layer")


def test_conv_stem_weights_round_trip_and_do_not_fit_the_linear_configs(tmp_path):
    from HLIPCore.model.checkpoint import load_checkpoint
    from HLIPCore.errors import CheckpointError
    trunk = make_trunk()
    torch.save(trunk.state_dict(), tmp_path / "stem.pt")
    again = make_trunk()
    with torch.no_grad():
        for p in again.parameters():
            p.zero_()
    load_checkpoint(again, tmp_path / "stem.pt")
    x = torch.randn(1, 2, 1, *IMG)
    torch.testing.assert_close(again(x), trunk(x))
    linear = HLIPVisionTransformer(["scan", "study"], img_size=IMG, patch_size=PATCH, embed_dim=WIDTH, num_heads=2)
    with pytest.raises(CheckpointError, match="patch_embed"):
        load_checkpoint(linear, tmp_path / "stem.pt")
