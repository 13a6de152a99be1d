"""TransUNet: golden parity (procedure A, stages), the Google npz layout (224 and the 256 resize), sizes."""
from __future__ import annotations

import functools
import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from golden_weights import golden_file_state_dict

from smaformer.errors import CheckpointError
from smaformer.models import create_model
from smaformer.models.registry import tiny_kwargs
from smaformer.models.transunet import TransUNet
from smaformer.weights import load_official, load_pretrained
from smaformer.weights.google_npz import resize_position_embedding

OFFICIAL_PARAMS = 105_277_081  # R50-ViT-B/16, 224, 9 classes
PARTS = {"resnet": 11_894_848, "embeddings": 937_728, "encoder": 85_056_000, "decoder": 7_387_200, "head": 1_305}


@functools.lru_cache(maxsize=1)
def _npz_arrays(npz_keys: Path) -> dict[str, np.ndarray]:
    """The synthetic R50+ViT-B_16.npz of the golden README, from ``npz_keys.json`` alone."""
    out = {}
    for entry in json.loads(npz_keys.read_text("utf-8"))["keys"]:
        key, shape = entry["key"], tuple(entry["shape"])
        t = torch.randn(shape, generator=torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8"))),
                        dtype=torch.float32)
        out[key] = (1 + 0.1 * t if len(shape) == 1 and key.endswith("/scale") else 0.02 * t).numpy()
    return out


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory, golden_dir_module) -> Path:
    path = tmp_path_factory.mktemp("npz") / "R50+ViT-B_16.npz"
    np.savez(path, **_npz_arrays(golden_dir_module / "transunet" / "npz_keys.json"))
    return path


@pytest.fixture(scope="module")
def golden_dir_module() -> Path:
    """``../shared/golden`` for module-scoped fixtures; skips, saying why, when absent."""
    shared = Path(os.environ.get("SMAFORMER_SHARED", Path(__file__).resolve().parents[3] / "shared"))
    if not (shared / "golden").exists():
        pytest.skip(f"{shared / 'golden'} is absent (set SMAFORMER_SHARED to the shared folder)")
    return shared / "golden"


@pytest.fixture(scope="module")
def model():
    return TransUNet().eval()


def _run(model: TransUNet, x: torch.Tensor) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    caps: dict[str, torch.Tensor] = {}
    points = {"vit_encoded": model.transformer.encoder, "conv_more": model.decoder.conv_more,
              "block3": model.transformer.embeddings.hybrid_model.body.block3,
              "dec3_crop": model.decoder.blocks[3], "dec2_crop": model.decoder.blocks[2]}
    hooks = [m.register_forward_hook(lambda _m, _i, o, k=k: caps.__setitem__(k, o)) for k, m in points.items()]
    try:
        with torch.no_grad():
            return model(x).numpy(), caps
    finally:
        for h in hooks:
            h.remove()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_param_counts():
    with torch.device("meta"):
        model = TransUNet()
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS
    for part, prefixes in TransUNet.parts.items():
        assert sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes)) == PARTS[part]


def test_golden_parity_then_npz(model, golden_dir_module, npz_path):
    folder = golden_dir_module / "transunet"
    load_official(model, golden_file_state_dict(folder / "keys.json"))
    x = torch.from_numpy(np.load(folder / "input.npy"))
    y, caps = _run(model, x)
    assert _rel(y, np.load(folder / "output.npy")) <= 1e-5  # measured 1.1e-6 (f32 vs f64 drift 7.3e-7)
    stages = np.load(folder / "stages.npz")
    # measured 3.1e-5; our float64 run gives 4.2e-5 (the golden's own float32 drift); GELU tanh shows 1.3e-4
    assert _rel(caps["vit_encoded"].numpy(), stages["vit_encoded"]) <= 7e-5
    assert _rel(caps["dec3_crop"].numpy()[:, :, :32, :32], stages["dec3_crop"]) <= 1e-5
    for key in ("block3", "conv_more", "dec2_crop"):  # float16 entries
        golden = stages[key].astype(np.float32)
        assert _rel(caps[key].numpy()[tuple(slice(0, s) for s in golden.shape)], golden) <= 2e-3, key

    report = load_pretrained(model, str(npz_path))  # on top of procedure A, as the golden
    assert report.layout == "google-npz" and "R50+ViT-B/16" in str(report)
    assert len(report.loaded) == 353 and report.unused_checkpoint_keys == [] and report.interpolated == []
    assert (report.params_loaded, report.params_total) == (97_888_576, OFFICIAL_PARAMS)
    for part, total in PARTS.items():
        p = report.parts[part]
        assert (p.params_loaded, p.params_total) == ((0 if part in ("decoder", "head") else total), total), part
    y, _ = _run(model, x)
    assert _rel(y, np.load(folder / "pretrained_npz" / "output.npy")) <= 1e-5
    arrays = _npz_arrays(folder / "npz_keys.json")
    params = dict(model.named_parameters())
    q = arrays["Transformer/encoderblock_3/MultiHeadDotProductAttention_1/query/kernel"]
    assert torch.equal(params["transformer.encoder.layer.3.attn.query.weight"], torch.from_numpy(q).reshape(768, 768).T)
    conv = arrays["block3/unit9/conv2/kernel"]
    got = params["transformer.embeddings.hybrid_model.body.block3.unit9.conv2.weight"]
    assert torch.equal(got, torch.from_numpy(conv).permute(3, 2, 0, 1))


def test_npz_at_256_resizes_the_position_embedding(golden_dir_module, npz_path):
    folder = golden_dir_module / "transunet"
    model = TransUNet(img_size=256).eval()
    load_official(model, golden_file_state_dict(folder / "keys.json") | {
        "transformer.embeddings.position_embeddings": torch.zeros(1, 256, 768)})  # the npz overwrites it
    report = load_pretrained(model, npz_path)
    assert report.interpolated == ["transformer.embeddings.position_embeddings"]
    ref = folder / "pretrained_npz_256"
    assert _rel(model.transformer.embeddings.position_embeddings.detach().numpy(),
                np.load(ref / "position_embeddings.npy")) <= 1e-6
    y, _ = _run(model, torch.from_numpy(np.load(golden_dir_module / "hbformer" / "input.npy")))
    assert _rel(y[:, :, :64, :64], np.load(ref / "output_crop_tl64.npy")) <= 1e-5
    assert _rel(y[:, :, -64:, -64:], np.load(ref / "output_crop_br64.npy")) <= 1e-5


def test_position_embedding_resize_rule():
    grid = torch.randn(1, 1 + 4 * 4, 8)
    assert torch.equal(resize_position_embedding(grid, (4, 4)), grid[:, 1:])  # class token dropped
    out = resize_position_embedding(grid, (7, 5))  # non-square target
    assert out.shape == (1, 35, 8)
    corners = out[0].reshape(7, 5, 8)[[0, 0, -1, -1], [0, -1, 0, -1]]  # align_corners=True keeps the corners
    assert torch.allclose(corners, grid[0, 1:].reshape(4, 4, 8)[[0, 0, -1, -1], [0, -1, 0, -1]])


def test_official_keys_and_errors(golden_dir_module):
    sd = golden_file_state_dict(golden_dir_module / "transunet" / "keys.json")
    with torch.device("meta"):
        model = TransUNet(img_size=256)
    with pytest.raises(CheckpointError, match="196 position embeddings; build with img_size"):
        load_official(model, sd)
    with pytest.raises(CheckpointError, match="bogus"):
        load_official(TransUNet(**tiny_kwargs("transunet")), {"bogus.weight": torch.zeros(1)})


def test_sizes_classes_and_channels():
    kw = tiny_kwargs("transunet")
    for size in (256, (320, 256), (224, 224), (80, 48)):
        model = create_model("transunet", **kw, img_size=size, num_classes=4, in_chans=1).eval()
        h, w = (size, size) if isinstance(size, int) else size
        with torch.no_grad():
            assert model(torch.randn(2, 1, h, w)).shape == (2, 4, h, w)
            assert model(torch.randn(1, 3, h, w)).shape == (1, 4, h, w)  # 1-channel models also take 3
    with pytest.raises(ValueError, match="not divisible by 16.*use 256"):
        TransUNet(img_size=250)
    with pytest.raises(ValueError, match="built for img_size"):
        create_model("transunet", **kw, img_size=64)(torch.randn(1, 3, 96, 64))
    with torch.device("meta"):
        a, b = TransUNet(num_classes=2, n_skip=1), TransUNet()
    assert a.segmentation_head[0].out_channels == 2 and a.decoder.blocks[1].conv1[0].in_channels == 256
    assert b.decoder.blocks[1].conv1[0].in_channels == 512  # nothing shared between instances

