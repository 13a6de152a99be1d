"""HBFormer: golden parity (procedures A and B, decoder stages), official keys, Swin-T coverage, sizes."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from golden_weights import golden_file_state_dict

from smaformer.errors import CheckpointError
from smaformer.models import create_model
from smaformer.models.hbformer import HBFormer, pick_window
from smaformer.models.layers.window_attention import interpolate_rel_pos_table
from smaformer.models.registry import tiny_kwargs
from smaformer.weights import load_official, load_pretrained
from smaformer.weights.official import convert_official

OFFICIAL_PARAMS = 36_712_129  # official HBFormer, 9 classes, 256
DEAD_PARAMS = 295_296 + 1_536  # proj_enc4 and MWAencoder.backbone.norm: no gradient path to the output
ENCODER = "MWAencoder.backbone."


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def model():
    return HBFormer().eval()


def _stages(model: HBFormer) -> tuple[dict[str, torch.Tensor], list]:
    """Forward hooks at the points ``stages.npz`` names (module outputs)."""
    caps: dict[str, torch.Tensor] = {}
    points = {"enc3_out": model.MWAencoder.backbone.layers[3], "dec4_out": model.MFF_decoder4,
              "dec3_out": model.MFF_decoder3, "dec2_out": model.MFF_decoder2,
              "dec4_dspp_expert_w": model.MFF_decoder4.Med_DSPP.expert_attention}
    hooks = [m.register_forward_hook(lambda _m, _i, o, k=k: caps.__setitem__(k, o)) for k, m in points.items()]
    return caps, hooks


@pytest.mark.parametrize("proc", ["A", "B"])
def test_golden_parity_and_stages(model, golden_dir, proc):
    folder = golden_dir / "hbformer"
    ref_dir = folder if proc == "A" else folder / "procedure_B"
    load_official(model, golden_file_state_dict(folder / "keys.json", proc))
    x = torch.from_numpy(np.load(folder / "input.npy"))
    caps, hooks = _stages(model)
    try:
        with torch.no_grad():
            y = model(x).numpy()
    finally:
        for h in hooks:
            h.remove()
    ref = np.load(ref_dir / "output.npy")
    assert y.shape == ref.shape == (1, 9, 256, 256)
    assert np.abs(y - ref).max() / np.abs(ref).max() <= 1e-5  # measured A 5.8e-7, B 6.1e-7
    stages, meta = np.load(ref_dir / "stages.npz"), json.loads((ref_dir / "stages.json").read_text("utf-8"))
    checked = []
    for key in stages.files:
        name = key.removesuffix("_crop")
        if name not in caps:
            continue
        golden = stages[key].astype(np.float32)
        ours = caps[name].numpy()[tuple(slice(0, s) for s in golden.shape)]  # the crops are top-left
        tol = 2e-3 if meta[key]["dtype_saved"] == "float16" else 1e-5  # measured <= 3.5e-4 / 1.2e-6
        assert np.abs(ours - golden).max() / np.abs(golden).max() <= tol, key
        checked.append(name)
    assert {"dec4_out", "dec3_out"} <= set(checked)  # deep-path errors show only here (README)


def test_param_counts_and_dead_parameters():
    with torch.device("meta"):
        native, full = HBFormer(), HBFormer(keep_dead=True)
    assert n_params(full) == OFFICIAL_PARAMS
    assert n_params(native) == OFFICIAL_PARAMS - DEAD_PARAMS == 36_415_297
    assert not any(k.startswith(("proj_enc4.", ENCODER + "norm.")) for k in native.state_dict())
    counts = {"stem": 12, "encoder": 27_525_546, "decoder": 8_852_434, "head": 37_305}
    for part, prefixes in HBFormer.parts.items():
        assert sum(p.numel() for n, p in native.named_parameters() if n.startswith(prefixes)) == counts[part]


def test_official_checkpoint_with_dead_keys_loads_both_ways(golden_dir):
    keys = json.loads((golden_dir / "hbformer" / "keys.json").read_text("utf-8"))
    sd = golden_file_state_dict(golden_dir / "hbformer" / "keys.json")
    assert len(keys) == 480 and "proj_enc4.weight" in sd
    with torch.device("meta"):
        native, full = HBFormer(), HBFormer(keep_dead=True)
    assert set(convert_official(native, sd)) == set(native.state_dict()) - {
        k for k in native.state_dict() if k.endswith("num_batches_tracked")}
    assert set(convert_official(full, sd)) >= {"proj_enc4.weight", ENCODER + "norm.bias"}
    with pytest.raises(CheckpointError, match="bogus"):
        convert_official(native, {**sd, "bogus.weight": torch.zeros(1)})
    with torch.device("meta"):
        window7 = HBFormer(img_size=224)
    with pytest.raises(CheckpointError, match="window 8; build with window_size=8"):
        convert_official(window7, sd)


def _timm_layout(swin_t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Microsoft Swin-T keys as timm names them: PatchMerging at the start of the next stage, ``head.fc``."""
    out = {}
    for key, value in swin_t.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        key = f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}" if m else key.replace("head.", "head.fc.")
        out[key] = value
    return out


@pytest.mark.parametrize(("layout", "keep_dead"), [("microsoft", False), ("timm", True)])
def test_pretrained_swin_t_loads_the_whole_encoder(golden_dir, layout, keep_dead):
    swin_t = golden_file_state_dict(golden_dir / "swin_tiny_imagenet" / "keys.json")
    official = json.loads((golden_dir / "coverage.json").read_text("utf-8"))["hbformer"]
    model = HBFormer(keep_dead=keep_dead)
    report = load_pretrained(model, swin_t if layout == "microsoft" else _timm_layout(swin_t))
    enc = report.parts["encoder"]
    assert report.layout == layout
    assert enc.params_loaded == enc.params_total == 27_525_546 + 1_536 * keep_dead
    assert enc.tensors_loaded == enc.tensors_total == 169 + 2 * keep_dead
    assert len(report.interpolated) == 12  # every bias table, window 7 -> 8
    # the official loader: 94.36% of the backbone and 70.75% of the model (PatchMerging never loaded)
    assert official["backbone_params_loaded"] == 25_973_418 and official["backbone_coverage_pct"] == 94.3559
    total = OFFICIAL_PARAMS - DEAD_PARAMS * (not keep_dead)
    assert report.params_total == total
    assert f"{100 * report.coverage:.2f}" == ("74.98" if keep_dead else "75.59")
    params = dict(model.named_parameters())
    for k in (1, 2, 3):  # timm stage k's PatchMerging is Microsoft stage k-1's
        got = params[f"{ENCODER}layers.{k}.downsample.reduction.weight"]
        assert torch.equal(got, swin_t[f"layers.{k - 1}.downsample.reduction.weight"])
    table = "layers.2.blocks.5.attn.relative_position_bias_table"
    assert torch.equal(params[ENCODER + table], interpolate_rel_pos_table(swin_t[table], 8))
    assert "encoder" in str(report) and "100.00%" in str(report)


def test_window_rule_and_sizes():
    assert [pick_window((s, s)) for s in (224, 256, 288, 512)] == [7, 8, 8, 8]
    assert pick_window((224, 256)) == 8  # must divide both 1/4 sides
    with pytest.raises(ValueError, match="not divisible by 32.*use 256"):
        HBFormer(img_size=250)
    for size in (224, 512):  # full depth and windows, narrow width to keep CPU time down
        model = HBFormer(img_size=size, embed_dim=24, feature_size=12, num_heads=(1, 2, 4, 8)).eval()
        assert model.window_size == pick_window((size, size))
        with torch.no_grad():
            assert model(torch.randn(1, 3, size, size)).shape == (1, 9, size, size)
    model = create_model("hbformer", **tiny_kwargs("hbformer"), img_size=(64, 96), num_classes=2, in_chans=1)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 64, 96)).shape == (2, 2, 64, 96)
    with pytest.raises(ValueError, match="embed_dim 96 must be 2 \\* feature_size"):
        HBFormer(feature_size=32)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = create_model("hbformer", **tiny_kwargs("hbformer"), img_size=64, num_classes=4)
    assert n_params(model) < 1_000_000
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []  # no dead parameter (structure)
