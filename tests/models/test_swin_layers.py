"""Swin building blocks: shapes, windows/shift geometry, masks, attention against a plain reference, orders."""
from __future__ import annotations

import pytest
import torch

from smaformer.models.layers.swin import (
    DropPath,
    FinalPatchExpandX4,
    PatchEmbed,
    PatchExpand,
    PatchMerging,
    SwinBlock,
    SwinStage,
)
from smaformer.models.layers.window_attention import (
    WindowAttention,
    interpolate_rel_pos_table,
    relative_position_index,
)


def _reference_attention(attn: WindowAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The official formulation: q*scale, q@k^T + bias (+ mask), softmax, @v."""
    b_, n, c = x.shape
    h = attn.num_heads
    qkv = attn.qkv(x).reshape(b_, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * attn.scale, qkv[1], qkv[2]
    scores = q @ k.transpose(-2, -1)
    w = attn.window_size
    bias = attn.relative_position_bias_table[relative_position_index(w).reshape(-1)].reshape(n, n, h)
    scores = scores + bias.permute(2, 0, 1)[None]
    if mask is not None:
        nw = mask.shape[0]
        scores = (scores.view(b_ // nw, nw, h, n, n) + mask[None, :, None]).view(b_, h, n, n)
    return attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b_, n, c))


def test_relative_position_index_formula():
    idx = relative_position_index(7)
    assert idx.shape == (49, 49)
    # query (h=1, w=2) = token 9, key (h=4, w=0) = token 28: dh = -3, dw = 2
    assert idx[9, 28] == (-3 + 6) * 13 + (2 + 6)
    assert idx.min() == 0 and idx.max() == 13 * 13 - 1


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_matches_reference(shifted):
    torch.manual_seed(0)
    block = SwinBlock(16, 2, 4, shift=shifted)
    mask = block.window_mask(8, 8)
    assert (mask is not None) == shifted
    x = torch.randn(2 * 4, 16, 16)
    with torch.no_grad():
        torch.nn.init.normal_(block.attn.relative_position_bias_table, std=1.0)
        out = block.attn(x, 4, mask)
        ref = _reference_attention(block.attn, x, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_shift_mask_values_and_cache():
    block = SwinBlock(8, 1, 4, shift=True)
    mask = block.window_mask(8, 8)
    assert mask.shape == (4, 16, 16)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert torch.count_nonzero(mask[0]) == 0  # the top-left window holds one region only
    assert block.window_mask(8, 8) is mask  # computed once per (resolution, window, shift, device)
    assert block.window_mask(12, 12) is not mask


def test_small_maps_use_whole_window_without_shift():
    block = SwinBlock(8, 2, 7, shift=True)
    assert block.geometry(7, 7) == (7, 0)
    assert block.geometry(5, 9) == (5, 0)
    assert block.geometry(14, 14) == (7, 3)
    assert block.window_mask(7, 7) is None
    x = torch.randn(1, 5, 9, 8)
    assert block(x).shape == x.shape


@pytest.mark.parametrize("hw", [(16, 16), (10, 13), (3, 3)])
def test_block_pads_and_crops(hw):
    block = SwinBlock(12, 3, 4, shift=True).eval()
    x = torch.randn(2, *hw, 12)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_unshifted_block_keeps_windows_independent():
    """An unshifted block treats windows independently: changing one window leaves the others untouched."""
    torch.manual_seed(0)
    block = SwinBlock(8, 2, 4, shift=False).eval()
    x = torch.randn(1, 8, 8, 8)
    x2 = x.clone()
    x2[:, :4, :4] += 1.0
    with torch.no_grad():
        y, y2 = block(x), block(x2)
    assert torch.equal(y[:, 4:, 4:], y2[:, 4:, 4:])
    assert not torch.allclose(y[:, :4, :4], y2[:, :4, :4])


def test_patch_merging_order():
    merge = PatchMerging(1)
    x = torch.arange(16.0).reshape(1, 4, 4, 1)
    with torch.no_grad():
        merge.norm.weight.fill_(1.0)
        merge.norm.bias.zero_()
    gathered = []
    merge.norm.register_forward_hook(lambda m, i, o: gathered.append(i[0]))
    assert merge(x).shape == (1, 2, 2, 2)
    # (h, w) offsets (0,0), (1,0), (0,1), (1,1) of the top-left 2x2 cell: values 0, 4, 1, 5
    assert gathered[0][0, 0, 0].tolist() == [0.0, 4.0, 1.0, 5.0]
    assert merge(torch.randn(2, 5, 7, 1)).shape == (2, 3, 4, 2)  # odd sizes are padded


@pytest.mark.parametrize("cls,scale,out_div", [(PatchExpand, 2, 2), (FinalPatchExpandX4, 4, 1)])
def test_expand_channel_order(cls, scale, out_div):
    dim = 8
    layer = cls(dim)
    c = dim // out_div
    x = torch.randn(1, 2, 3, dim)
    y = layer(x)
    assert y.shape == (1, 2 * scale, 3 * scale, c)
    # channels split as (p1 p2 c): output pixel (p1, p2) of token (0, 0) is channel chunk p1*p + p2
    expanded = layer.expand(x)[0, 0, 0]
    p1, p2 = scale - 1, 0
    chunk = expanded[(p1 * scale + p2) * c:(p1 * scale + p2 + 1) * c]
    torch.testing.assert_close(y[0, p1, p2], layer.norm(chunk))


def test_patch_embed_and_stage_shapes():
    assert PatchEmbed(1, 16)(torch.randn(2, 1, 32, 48)).shape == (2, 8, 12, 16)
    stage = SwinStage(16, 2, 2, 4, [0.0, 0.1], downsample=True)
    assert [b.shift for b in stage.blocks] == [False, True]
    assert stage(torch.randn(1, 16, 16, 16)).shape == (1, 8, 8, 32)
    up = SwinStage(16, 2, 2, 4, 0.0, upsample=True)
    assert up(torch.randn(1, 8, 8, 16)).shape == (1, 16, 16, 8)
    with pytest.raises(ValueError, match="drop_path"):
        SwinStage(16, 2, 2, 4, [0.1])


def test_relative_index_buffer_is_not_persistent():
    attn = WindowAttention(8, 2, 7)
    assert "relative_position_index" not in attn.state_dict()
    assert set(attn.state_dict()) == {"relative_position_bias_table", "qkv.weight", "qkv.bias",
                                      "proj.weight", "proj.bias"}


def test_interpolate_table_exact_when_window_unchanged():
    table = torch.randn(169, 3)
    assert torch.equal(interpolate_rel_pos_table(table, 7), table)
    bigger = interpolate_rel_pos_table(table, 8)
    assert bigger.shape == (225, 3)
    const = interpolate_rel_pos_table(torch.full((169, 2), 0.5), 8)
    torch.testing.assert_close(const, torch.full((225, 2), 0.5))
    with pytest.raises(ValueError):
        interpolate_rel_pos_table(torch.randn(170, 3), 8)


def test_drop_path():
    x = torch.ones(1000, 4)
    dp = DropPath(0.5)
    assert torch.equal(dp.eval()(x), x)
    y = dp.train()(x)
    kept = y[:, 0] != 0
    assert 300 < int(kept.sum()) < 700
    assert torch.all(y[kept] == 2.0) and torch.all(y[~kept] == 0.0)
