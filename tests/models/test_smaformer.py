"""SMAFormer V2.3: official parity (compatibility mode), parameter counts, pretrained coverage, native sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from golden_weights import golden_file_state_dict
from torch.utils.flop_counter import FlopCounterMode

from smaformer.errors import CheckpointError
from smaformer.models import create_model
from smaformer.models.layers.window_attention import attention_path
from smaformer.models.registry import tiny_kwargs
from smaformer.models.smaformer import SMAFormer, auto_window
from smaformer.weights import load_official, load_pretrained
from smaformer.weights.official import convert_official

OFFICIAL_PARAMS = 41_432_027  # official SMAFormerV2 V2.3, 9 classes
DEAD_SMA3 = 2 * 768 * 48 + 98  # sma_encoder[3], computed and discarded by the official forward


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def compat():
    return SMAFormer(resize_to=224).eval()


@pytest.fixture(scope="module")
def native():
    return SMAFormer(img_size=256).eval()


@pytest.fixture
def swin_t(golden_dir):
    """An official-layout Swin-T state dict filled by procedure A with the Swin-T names."""
    return golden_file_state_dict(golden_dir / "swin_tiny_imagenet" / "keys.json")


def test_param_counts(compat):
    assert n_params(compat) == OFFICIAL_PARAMS
    with torch.device("meta"):
        assert n_params(SMAFormer(img_size=224)) == OFFICIAL_PARAMS - DEAD_SMA3  # native drops the dead SMA
        assert n_params(SMAFormer(img_size=224, use_sma=False)) == OFFICIAL_PARAMS - 123_566


def test_golden_parity_and_flops_compat(compat, golden_dir):
    folder = golden_dir / "smaformer_v23"
    load_official(compat, golden_file_state_dict(folder / "keys.json"))
    x = torch.from_numpy(np.load(folder / "input.npy"))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), attention_path("explicit"), counter:  # the fused SDPA kernel has no FLOP formula
        y = compat(x).numpy()
    with torch.no_grad():
        fused = compat(x).numpy()  # the inference path (fused SDPA); the count above ran the explicit one
    ref = np.load(folder / "output.npy")
    assert y.shape == ref.shape == (1, 9, 256, 256)
    for out in (y, fused):
        assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-4  # measured 1.4e-6
    gmac = counter.get_total_flops() / 2e9
    assert abs(gmac - 9.06) / 9.06 < 0.03  # official 9.06 GMAC (ptflops); ours 9.06 (matmul/conv/attention)


def test_official_keys_native_and_errors(golden_dir):
    sd = golden_file_state_dict(golden_dir / "smaformer_v23" / "keys.json")
    with torch.device("meta"):
        model = SMAFormer(img_size=224)
    ours = convert_official(model, sd)
    assert not any(k.startswith("sma_encoder.3.") for k in ours)
    assert set(ours) == set(model.state_dict())
    with pytest.raises(CheckpointError, match="bogus"):
        convert_official(model, {**sd, "bogus.weight": torch.zeros(1)})
    with torch.device("meta"):
        window8 = SMAFormer(img_size=256)
    with pytest.raises(CheckpointError, match="relative_position_bias_table.*need resize_to=224"):
        convert_official(window8, sd)


def test_pretrained_coverage_compat(compat, swin_t):
    report = load_pretrained(compat, swin_t)
    enc, dec = report.parts["encoder"], report.parts["decoder"]
    assert (enc.params_loaded, enc.params_total) == (27_519_354, 27_519_354)
    assert (dec.params_loaded, dec.params_total) == (11_775_402, 13_712_778)
    assert (report.params_loaded, report.params_total) == (39_294_756, OFFICIAL_PARAMS)
    assert f"{100 * report.coverage:.2f}" == "94.84"
    missing = set(report.not_loaded)
    assert "decoder_layers.0.upsample.expand.weight" in missing and "decoder_layers.2.skip_fusion.bias" in missing
    assert torch.equal(compat.decoder_layers[0].blocks[5].attn.qkv.weight, swin_t["layers.2.blocks.5.attn.qkv.weight"])
    assert torch.equal(compat.decoder_layers[2].blocks[1].mlp.fc2.bias, swin_t["layers.0.blocks.1.mlp.fc2.bias"])
    assert "encoder_layers.0.blocks.0.norm1.weight" in report.loaded


def test_pretrained_coverage_native_256(native, swin_t):
    report = load_pretrained(native, swin_t)
    enc, dec = report.parts["encoder"], report.parts["decoder"]
    assert native.window_size == 8
    assert len(report.interpolated) == 22  # every bias table, 13x13 -> 15x15
    assert (enc.tensors_loaded, enc.tensors_total, dec.tensors_loaded, dec.tensors_total) == (171, 171, 130, 145)
    assert enc.params_loaded == enc.params_total
    assert dec.params_total - dec.params_loaded == 13_712_778 - 11_775_402  # same tensors as at 224


def test_native_shapes(native):
    assert (auto_window((224, 224)), auto_window((256, 256)), auto_window((512, 512))) == (7, 8, 8)
    with torch.no_grad():
        assert native(torch.randn(1, 3, 256, 256)).shape == (1, 9, 256, 256)
        for size in (224, 512):  # full depth and windows, narrow width to keep CPU time down
            model = SMAFormer(img_size=size, embed_dim=24, num_heads=(1, 2, 4, 8)).eval()
            assert model.window_size == auto_window((size, size))
            assert model(torch.randn(1, 3, size, size)).shape == (1, 9, size, size)


def test_size_validation_and_padding():
    with pytest.raises(ValueError, match="not divisible by 32; use 256 or pass pad=True"):
        SMAFormer(img_size=250)
    model = create_model("smaformer", **tiny_kwargs("smaformer"), img_size=70, pad=True, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 70, 70)).shape == (2, 3, 70, 70)


def test_every_parameter_gets_a_gradient_native():
    torch.manual_seed(0)
    model = create_model("smaformer", **tiny_kwargs("smaformer"), img_size=64, num_classes=4, in_chans=1)
    assert n_params(model) < 1_000_000
    model(torch.randn(2, 1, 64, 64)).logsumexp(1).mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_parts_cover_every_parameter():
    with torch.device("meta"):
        model = SMAFormer(resize_to=224)
    prefixes = [p for group in SMAFormer.parts.values() for p in group]
    assert all(name.startswith(tuple(prefixes)) for name, _ in model.named_parameters())
