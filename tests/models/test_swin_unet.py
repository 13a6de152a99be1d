"""Swin-Unet: parameter count, golden parity with the official code, shapes, gradients, errors, checkpoints."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from golden_weights import golden_state_dict

from smaformer.errors import CheckpointError
from smaformer.models import create_model
from smaformer.models.registry import tiny_kwargs
from smaformer.models.swin_unet import SwinUnet
from smaformer.weights import load_official
from smaformer.weights.official import convert_official


def _tiny(**kw) -> SwinUnet:
    return create_model("swin_unet", **{**tiny_kwargs("swin_unet"), **kw})


def test_param_count_and_parts():
    model = SwinUnet()
    assert sum(p.numel() for p in model.parameters()) == 27_168_900
    names = [n for n, _ in model.named_parameters()]
    for name in names:
        assert sum(name.startswith(SwinUnet.parts[p]) for p in SwinUnet.parts) == 1, name
    assert sum(p.numel() for p in _tiny(num_classes=3).parameters()) < 1_000_000


def test_golden_parity(golden_dir):
    folder = golden_dir / "swin_unet"
    keys = json.loads((folder / "keys.json").read_text(encoding="utf-8"))
    model = SwinUnet(num_classes=9, img_size=224, drop_path_rate=0.0).eval()
    official = {"swin_unet." + k: v for k, v in golden_state_dict(keys).items()}  # as the official trainer saves it
    for name, shape, _dtype, is_buffer in keys:  # buffers in the file must be accepted and dropped
        if is_buffer:
            official["swin_unet." + name] = torch.zeros(shape)
    load_official(model, official)
    x = torch.from_numpy(np.load(folder / "input.npy"))
    ref = np.load(folder / "output.npy")
    with torch.no_grad():
        out = model(x).numpy()
    ratio = np.abs(out - ref).max() / np.abs(ref).max()
    assert ratio <= 1e-5, f"max|diff| / max|golden| = {ratio:.2e}"


def test_full_size_shapes_256_and_512():
    for img, chans in ((256, 1), (512, 3)):
        model = SwinUnet(num_classes=4, in_chans=chans, img_size=img, window_size=8).eval()
        with torch.no_grad():
            assert model(torch.randn(1, chans, img, img)).shape == (1, 4, img, img)


@pytest.mark.parametrize("img,chans", [(64, 1), (64, 3), (96, 1), ((64, 96), 3)])
def test_tiny_shapes_including_padded_windows(img, chans):
    model = _tiny(num_classes=3, in_chans=chans, img_size=img).eval()
    h, w = (img, img) if isinstance(img, int) else img
    with torch.no_grad():
        assert model(torch.randn(2, chans, h, w)).shape == (2, 3, h, w)


def test_one_channel_input_is_repeated_to_three():
    model = _tiny(num_classes=2, in_chans=1, img_size=64).eval()
    assert model.patch_embed.proj.in_channels == 3  # keeps the official 3-channel weights
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x.repeat(1, 3, 1, 1)))


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = _tiny(num_classes=3, in_chans=1, img_size=64, drop_path_rate=0.1).train()
    model(torch.randn(2, 1, 64, 64)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bad_size_and_unknown_model_errors():
    with pytest.raises(ValueError, match="img_size 250 is not divisible by 32; use 256"):
        create_model("swin_unet", img_size=250)
    with pytest.raises(ValueError, match="swin_unet"):
        create_model("no_such_model")
    model = _tiny(num_classes=2, img_size=64)
    with pytest.raises(ValueError, match="not divisible by 32"):
        model(torch.randn(1, 3, 60, 64))
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 2, 64, 64))


def test_convert_official_prefixes_and_unknown_keys():
    model = _tiny(num_classes=2, img_size=64)
    sd = model.state_dict()
    load_official(model, {"module.swin_unet." + k: v for k, v in sd.items()})
    assert convert_official(model, {"swin_unet." + k: v for k, v in sd.items()}).keys() == sd.keys()
    with pytest.raises(CheckpointError, match="cannot place.*bogus"):
        load_official(model, {**sd, "bogus.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="output.weight has shape"):
        load_official(model, {**sd, "output.weight": torch.zeros(5, 16, 1, 1)})
    partial = {k: v for k, v in sd.items() if not k.startswith("output.")}
    with pytest.raises(CheckpointError, match="missing.*output.weight"):
        load_official(model, partial)
