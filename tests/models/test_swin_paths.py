"""Window attention paths (explicit matmul-softmax vs fused 4-D SDPA), the rule that picks one, and the
gather-based window partition/reverse against the roll + permute formulation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import smaformer.models.layers.window_attention as window_attention
from smaformer.models.layers.swin import LAYOUT_CACHE, SwinBlock
from smaformer.models.layers.window_attention import attention_path, explicit_attention


def _roll_permute_forward(block: SwinBlock, x: torch.Tensor) -> torch.Tensor:
    """SwinBlock.forward as written before the gather: pad, roll, view/permute partition, reverse, roll back."""
    b, h, w, c = x.shape
    window, shift = block.geometry(h, w)
    y = block.norm1(x)
    pad_h, pad_w = (-h) % window, (-w) % window
    y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    if shift:
        y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
    win = y.reshape(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    win = block.attn(win.reshape(-1, window * window, c), window, block.window_mask(h, w))
    y = win.reshape(b, hp // window, wp // window, window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
    if shift:
        y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
    y = x + y[:, :h, :w]
    return y + block.mlp(block.norm2(y))


def _block(shift: bool, dim: int = 16, heads: int = 2, window: int = 4) -> SwinBlock:
    torch.manual_seed(0)
    block = SwinBlock(dim, heads, window, shift=shift).eval()
    torch.nn.init.normal_(block.attn.relative_position_bias_table, std=1.0)
    return block


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("hw", [(8, 8), (10, 13), (3, 3)])
def test_gather_partition_is_exact(shift, hw):
    block = _block(shift)
    x = torch.randn(2, *hw, 16)
    with torch.no_grad():
        for path in ("explicit", "fused"):
            with attention_path(path):
                assert torch.equal(block(x), _roll_permute_forward(block, x)), path


@pytest.mark.parametrize("shift", [False, True])
def test_explicit_and_fused_agree(shift):
    block = _block(shift)
    x = torch.randn(3 * 4, 16, 16)
    mask = block.window_mask(8, 8)
    with torch.no_grad():
        with attention_path("explicit"):
            ref = block.attn(x, 4, mask)
        with attention_path("fused"):
            out = block.attn(x, 4, mask)
        with attention_path("fused"), torch.autocast("cpu", dtype=torch.bfloat16):
            low = block.attn(x, 4, mask).float()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(low, ref, atol=0.1, rtol=0.05)


def test_path_rule(monkeypatch):
    block = _block(True)
    q = block.attn.qkv(torch.randn(4, 16, 16))
    assert explicit_attention(q)                     # CPU training in fp32: explicit
    assert not explicit_attention(q.detach())        # inference: fused
    with torch.no_grad():
        assert not explicit_attention(block.attn.qkv(torch.randn(4, 16, 16)))
    low = q.bfloat16()
    monkeypatch.setattr(window_attention, "cpu_bf16_units", lambda: None)
    assert not explicit_attention(low)               # emulated bf16 bmm is slow: fused
    monkeypatch.setattr(window_attention, "cpu_bf16_units", lambda: "amx_bf16")
    assert explicit_attention(low)                   # bf16 matrix units: explicit, as the official
    with attention_path("fused"):
        assert not explicit_attention(q)
    with pytest.raises(ValueError, match="unknown attention path"), attention_path("flash"):
        pass


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_tracing_takes_the_explicit_path():
    block = _block(True)
    seen = []
    original = block.attn._explicit

    def spy(*args):
        seen.append(torch.jit.is_tracing())
        return original(*args)

    block.attn._explicit = spy
    x = torch.randn(1, 8, 8, 16)
    with torch.no_grad():
        traced = torch.jit.trace(block, x, check_trace=False)
        torch.testing.assert_close(traced(x), block(x), atol=1e-5, rtol=1e-5)
    assert seen == [True]


def test_layout_cache_is_bounded():
    block = SwinBlock(8, 1, 4, shift=True)
    mask = block.window_mask(8, 8)
    assert block.window_mask(8, 8) is mask
    for side in range(12, 12 + 4 * (LAYOUT_CACHE + 2), 4):
        block.window_mask(side, side)
    assert len(block._layouts) == LAYOUT_CACHE
    assert block.window_mask(8, 8) is not mask and torch.equal(block.window_mask(8, 8), mask)


def test_layout_made_in_inference_mode_serves_training():
    """The cached token order is used by index_select, which saves it for backward: it must not be an
    inference tensor even when the first forward ran under torch.inference_mode (validation, then training)."""
    block = _block(True).train()
    x = torch.randn(1, 8, 8, 16)
    with torch.inference_mode():
        block(x)
    block(x).sum().backward()
    assert block.attn.relative_position_bias_table.grad is not None
