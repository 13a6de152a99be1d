"""SMAFormer V2.1 (paper modules): parameter counts, options that really change the network, edge filters."""
from __future__ import annotations

import pytest
import torch

from smaformer.models import create_model
from smaformer.models.registry import tiny_kwargs
from smaformer.models.smaformer_v21 import SMAFormerV21
from smaformer.weights import load_pretrained

DIMS = (96, 192, 384, 768)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_count(**kwargs) -> int:
    """Parameter count of a full-size build, without allocating or initialising weights."""
    with torch.device("meta"):
        return n_params(SMAFormerV21(**kwargs))


def sma_params(d: int) -> int:
    """Closed form of the full SMA: pixel conv, channel MLP (hidden max(d//16, 8)), spatial 7x7, fusion, conv+BN."""
    return 3 * d * d + 3 * d + 2 * d * max(d // 16, 8) + 98 + 2 * d


def swin_block_params(d: int, heads: int, window: int) -> int:
    return 12 * d * d + 13 * d + (2 * window - 1) ** 2 * heads


def test_param_count_default():
    assert meta_count() == 42_667_835  # 256 input: window 8
    assert meta_count(img_size=224) == 42_660_107  # window 7, as the Swin-T checkpoint


def test_options_change_the_param_count_as_expected():
    base = meta_count(img_size=224)
    d0 = DIMS[0]
    # use_sma=False: the 4 encoder SMAs, and in each decoder block its SMA and the LayerNorm before it
    no_sma = sum(sma_params(d) for d in DIMS) + 2 * sum(sma_params(d) + 2 * d for d in DIMS[:3])
    assert base - meta_count(img_size=224, use_sma=False) == no_sma
    # plain conv1x1 classifier instead of the edge head (edge filters 9*d0, refine conv+BN)
    assert base - meta_count(img_size=224, use_edge_enhancement=False) == 9 * d0 + 2 * d0 * d0 + d0 + 2 * d0
    # Sobel x/y: a second filter per channel and one more d0-wide input to the refine conv
    assert meta_count(img_size=224, edge="sobel") - base == 9 * d0 + d0 * d0
    # two more encoder blocks in stage 2
    assert meta_count(img_size=224, depths=(2, 2, 8, 2)) - base == 2 * swin_block_params(384, 12, 7)
    # narrower network: every part shrinks
    assert meta_count(img_size=224, embed_dims=(64, 128, 256, 512), num_heads=(2, 4, 8, 16)) < base // 2
    block = lambda d: 4 * d + sma_params(d) + 24 * d * d + 49 * d  # noqa: E731 - norms, SMA, E-MLP
    assert meta_count(img_size=224, decoder_blocks=3) - base == sum(block(d) for d in DIMS[:3])


def test_invalid_options():
    with pytest.raises(ValueError, match="double per stage"):
        SMAFormerV21(embed_dims=(96, 160, 384, 768))
    with pytest.raises(ValueError, match="edge must be one of"):
        SMAFormerV21(**tiny_kwargs("smaformer_v21"), img_size=64, edge="canny")
    with pytest.raises(ValueError, match="not divisible by 32"):
        SMAFormerV21(**tiny_kwargs("smaformer_v21"), img_size=100)


@pytest.mark.parametrize("options", [{}, {"use_sma": False, "use_edge_enhancement": False}, {"edge": "sobel"}])
def test_every_parameter_gets_a_gradient(options):
    torch.manual_seed(0)
    model = create_model("smaformer_v21", **tiny_kwargs("smaformer_v21"), img_size=64, num_classes=3, in_chans=1,
                         **options)
    assert n_params(model) < 1_000_000
    out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 3, 64, 64)
    out.logsumexp(1).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_native_sizes_and_padding():
    model = create_model("smaformer_v21", **tiny_kwargs("smaformer_v21"), img_size=64, pad=True).eval()
    with torch.no_grad():
        for h, w in ((64, 64), (96, 128), (50, 70)):
            assert model(torch.randn(1, 3, h, w)).shape == (1, 9, h, w)


def test_edge_filters():
    lap = SMAFormerV21(**tiny_kwargs("smaformer_v21"), img_size=64).output.edge_conv.weight
    assert lap.shape == (8, 1, 3, 3) and lap[0, 0, 1, 1] == 1.0 and lap[0, 0].sum() == 0
    sobel = SMAFormerV21(**tiny_kwargs("smaformer_v21"), img_size=64, edge="sobel").output.edge_conv
    step = torch.zeros(1, 8, 8, 8)
    step[..., 4:] = 1.0  # a vertical edge: Sobel-x responds, Sobel-y does not
    with torch.no_grad():
        resp = sobel(step)
    assert resp.shape == (1, 16, 8, 8)
    assert resp[0, 0, 2:6, 3:5].abs().min() > 0 and resp[0, 1, 1:7].abs().max() == 0


def test_pretrained_mapping_fills_the_encoder():
    model = SMAFormerV21(**tiny_kwargs("smaformer_v21"), img_size=64)
    fake = {src: torch.randn(p.shape) for (name, p) in model.named_parameters()
            for src in [model.pretrained_mapping().get(name)] if src}
    assert "layers.0.downsample.reduction.weight" in fake  # Microsoft layout: merging at the end of stage 0
    report = load_pretrained(model, fake)
    enc = report.parts["encoder"]
    assert enc.params_loaded == enc.params_total > 0
    assert report.parts["decoder"].params_loaded == 0
