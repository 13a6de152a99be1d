"""load_pretrained: Swin-T (Microsoft and timm layouts) into Swin-Unet, coverage equal to the official loader."""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
import torch
from golden_weights import golden_tensor

from smaformer.errors import InputError
from smaformer.models import create_model
from smaformer.models.layers.window_attention import interpolate_rel_pos_table
from smaformer.models.registry import tiny_kwargs
from smaformer.models.swin_unet import SwinUnet
from smaformer.weights import CoverageReport, load_pretrained


def _index(w: int) -> torch.Tensor:
    """Microsoft's relative_position_index, written out independently: (dh + w-1)(2w-1) + (dw + w-1)."""
    hq, wq = torch.arange(w * w) // w, torch.arange(w * w) % w
    return (hq[:, None] - hq[None] + w - 1) * (2 * w - 1) + (wq[:, None] - wq[None] + w - 1)


def _mask(res: int, w: int = 7, s: int = 3) -> torch.Tensor:
    """Microsoft's attn_mask for a shifted block at resolution ``res``: 9 regions, 0 / -100."""
    region = torch.zeros(res, res)
    cuts = (slice(0, -w), slice(-w, -s), slice(-s, None))
    for i, hs in enumerate(cuts):
        for j, ws in enumerate(cuts):
            region[hs, ws] = 3 * i + j
    win = region.view(res // w, w, res // w, w).permute(0, 2, 1, 3).reshape(-1, w * w)
    return (win[:, None, :] != win[:, :, None]).float() * -100.0


@functools.lru_cache(maxsize=1)
def _swin_t(keys_path: Path) -> dict[str, torch.Tensor]:
    """A Swin-T checkpoint in the Microsoft layout, values by golden procedure A (buffers computed)."""
    sd = {}
    for name, shape, _dtype, _buffer in json.loads(keys_path.read_text(encoding="utf-8")):
        if name.endswith("relative_position_index"):
            sd[name] = _index(7)
        elif name.endswith("attn_mask"):
            sd[name] = _mask(int(shape[0] ** 0.5) * 7)
        else:
            sd[name] = golden_tensor(name, shape)
    return sd


def _assert_values(model: SwinUnet, report: CoverageReport, swin_t: dict[str, torch.Tensor]) -> None:
    """Every loaded parameter equals its Microsoft-layout source."""
    mapping, params = model.pretrained_mapping(), dict(model.named_parameters())
    for name in report.loaded:
        assert torch.equal(params[name], swin_t[mapping[name]]), name


@pytest.fixture
def swin_t(golden_dir) -> dict[str, torch.Tensor]:
    return _swin_t(golden_dir / "swin_tiny_imagenet" / "keys.json")


def test_official_layout_coverage_matches_official_loader(swin_t, golden_dir):
    expected = json.loads((golden_dir / "coverage.json").read_text(encoding="utf-8"))["swin_unet"]
    model = SwinUnet()
    report = load_pretrained(model, {"model": swin_t})
    assert isinstance(report, CoverageReport) and report.layout == "microsoft"
    assert report.tensors_loaded == expected["tensors_loaded_total_incl_buffers"] == 217
    assert len(report.loaded) == expected["tensors_loaded_parameters"]
    assert len(report.buffers_matched) == expected["tensors_loaded_buffers"]
    assert report.params_loaded == expected["params_covered"] == 25_082_820
    assert report.params_total == expected["params_total"] == 27_168_900
    assert report.parts["encoder"].params_loaded == 20_413_386
    assert report.parts["decoder"].params_loaded == 4_669_434
    assert sorted(report.not_loaded) == sorted(expected["params_not_loaded"])
    _assert_values(model, report, swin_t)
    params = dict(model.named_parameters())
    assert torch.equal(params["layers.2.blocks.1.mlp.fc1.weight"], swin_t["layers.2.blocks.1.mlp.fc1.weight"])
    assert torch.equal(params["layers_up.1.blocks.0.attn.qkv.weight"], swin_t["layers.2.blocks.0.attn.qkv.weight"])
    assert torch.equal(params["layers_up.3.blocks.1.norm2.bias"], swin_t["layers.0.blocks.1.norm2.bias"])
    assert torch.equal(params["layers.1.downsample.reduction.weight"], swin_t["layers.1.downsample.reduction.weight"])
    text = str(report)
    assert "encoder" in text and "decoder" in text and "25,082,820" in text and "217" in text


def test_timm_layout_gives_the_same_weights(swin_t):
    timm = {}
    for key, value in swin_t.items():
        if key.endswith(("relative_position_index", "attn_mask")):
            continue  # timm keeps these buffers out of the state dict
        m = re.match(r"layers\.(\d)\.downsample\.(.*)", key)
        key = f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}" if m else key.replace("head.", "head.fc.")
        timm[key] = value
    model = SwinUnet()
    report = load_pretrained(model, timm)
    assert report.layout == "timm"
    assert report.params_loaded == 25_082_820 and len(report.loaded) == 197
    assert report.buffers_matched == []
    _assert_values(model, report, swin_t)


def test_window_8_interpolates_bias_tables(swin_t):
    model = SwinUnet(img_size=256, window_size=8)
    report = load_pretrained(model, swin_t)
    tables = [n for n, _ in model.named_parameters() if n.endswith("relative_position_bias_table")]
    assert sorted(report.interpolated) == sorted(tables) and len(tables) == 14
    assert not report.not_loaded.keys() & set(tables)
    table = dict(model.named_parameters())["layers_up.2.blocks.1.attn.relative_position_bias_table"]
    assert table.shape == (225, 6)
    source = swin_t["layers.1.blocks.1.attn.relative_position_bias_table"]
    assert torch.equal(table, interpolate_rel_pos_table(source, 8))
    assert len(report.not_loaded) == 21  # the same parts stay unloaded as at 224
    assert len(report.buffers_matched) == 0  # a window-8 index/mask differs from the checkpoint's


def test_mismatched_shapes_and_models_without_mapping(swin_t):
    tiny = create_model("swin_unet", **tiny_kwargs("swin_unet"), num_classes=2, img_size=64)
    report = load_pretrained(tiny, swin_t)
    assert report.params_loaded == 0 and set(report.not_loaded.values()) >= {"shape mismatch"}
    with pytest.raises(InputError, match="pretrained_mapping"):
        load_pretrained(torch.nn.Linear(2, 2), swin_t)
