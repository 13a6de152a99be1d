"""SimMIM self-pretraining (issue 29): the loss counts hidden pixels only, the mask ratio holds, the encoder
loads through the coverage report, the val/test cases are never opened, resume is exact, bad input is one line."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import quiet
from tiny_models import nifti_cases

from smaformer.cli import main as cli_main
from smaformer.config import load_config
from smaformer.models import create_model
from smaformer.models.registry import tiny_kwargs
from smaformer.train.pretrain import pretrain
from smaformer.train.simmim import SimMIM, random_masks
from smaformer.weights import load_pretrained

SMALL = "{embed_dim: 8, depths: [2, 2, 2, 2], num_heads: [1, 2, 4, 8], window_size: 4}"


def test_mask_ratio_holds_exactly():
    g = torch.Generator().manual_seed(0)
    masks = random_masks(50, (4, 5), 0.6, g)
    assert masks.shape == (50, 4, 5)
    assert (masks.sum((1, 2)) == math.ceil(0.6 * 20)).all()          # 12 of 20 in every image
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(masks[0], masks[1])                      # random per image


def test_loss_counts_hidden_pixels_only():
    torch.manual_seed(0)
    model = create_model("swin_unet", **tiny_kwargs("swin_unet"), num_classes=2, img_size=64)
    simmim = SimMIM(model, mask_patch=16).eval()
    x = torch.rand(2, 3, 64, 64)
    mask = random_masks(2, simmim.grid((64, 64)), 0.5, torch.Generator().manual_seed(1))
    rec = simmim(x, mask)
    assert rec.shape == x.shape
    pix = mask.repeat_interleave(16, 1).repeat_interleave(16, 2).bool()       # (2,64,64)
    want = (rec - x).abs().permute(1, 0, 2, 3)[:, pix].mean()
    assert simmim.loss(x, mask).item() == pytest.approx(want.item(), rel=1e-5)
    assert (rec - x).abs().mean().item() != pytest.approx(want.item(), rel=1e-3)   # all pixels: another value
    with pytest.raises(ValueError, match="has no Swin encoder"):
        SimMIM(create_model("unet", **tiny_kwargs("unet"), num_classes=2))


def _cfg(*extra):
    return load_config("acdc_swin_unet_scratch", ["data.layout=synthetic", "data.root=null", "data.img_size=64",
                                                  f"model.kwargs={SMALL}", "train.batch_size=2", "data.num_workers=0",
                                                  "train.device=cpu", "train.deterministic=true", "train.log_every=3",
                                                  "pretrain.mask_patch=16", *extra])


def test_resume_is_exact_and_encoder_loads_with_coverage(tmp_path):
    a = pretrain(_cfg("train.max_iterations=9"), run_dir=tmp_path / "a", progress_bar=False, log=quiet)
    b = pretrain(_cfg("train.max_iterations=9"), run_dir=tmp_path / "b", progress_bar=False, log=quiet, stop_after=4)
    assert b.stopped == "stop_after" and b.iterations == 4
    b = pretrain(None, resume=tmp_path / "b", progress_bar=False, log=quiet)
    assert a.iterations == b.iterations == 9 and a.loss == b.loss
    assert not torch.are_deterministic_algorithms_enabled()          # train.deterministic is put back
    ea, eb = (torch.load(tmp_path / r / "latest.pt", weights_only=True) for r in "ab")
    for k, v in ea["model"].items():
        assert torch.equal(v, eb["model"][k]), k
    model = create_model("swin_unet", num_classes=4, img_size=64, embed_dim=8, depths=[2, 2, 2, 2],
                         num_heads=[1, 2, 4, 8], window_size=4)
    report = load_pretrained(model, tmp_path / "a" / "latest.pt")
    assert "encoder          119/119" in str(report) and "100.00%" in str(report)
    assert torch.equal(model.layers[2].blocks[1].attn.qkv.weight, ea["model"]["layers.2.blocks.1.attn.qkv.weight"])
    # train takes it through model.pretrained
    from smaformer.train.loop import trainer_session
    cfg = _cfg("train.max_iterations=1", f"model.pretrained={tmp_path / 'a' / 'latest.pt'}")
    with trainer_session(cfg, run_dir=tmp_path / "student", progress_bar=False, log=quiet) as tr:
        assert torch.equal(tr.model.patch_embed.proj.weight, ea["model"]["patch_embed.proj.weight"])


def test_never_opens_validation_or_held_out_cases(tmp_path, monkeypatch, data_dir):
    """On the real ACDC layout, with fold 0 holding patients out of the training split: only training slices of
    the other folds are opened; no validation volume, no held-out patient."""
    import h5py

    acdc = data_dir / "acdc"
    opened = []
    real = h5py.File

    def spy(path, *a, **k):
        opened.append(Path(path))
        return real(path, *a, **k)

    monkeypatch.setattr(h5py, "File", spy)
    cfg = load_config("acdc_swin_unet_scratch", [f"data.root={acdc}", "data.img_size=64", f"model.kwargs={SMALL}",
                                                 "train.batch_size=2", "data.num_workers=0", "train.device=cpu",
                                                 "train.max_iterations=2", "pretrain.mask_patch=16", "data.fold=0"])
    pretrain(cfg, run_dir=tmp_path / "p", progress_bar=False, log=quiet)
    from smaformer.data.sample import case_key, volume_key
    from smaformer.train.data import build_data
    held = {case_key(c) for c in build_data(cfg).splits.val}
    assert opened and all(p.parent.name == "slices" for p in opened)
    assert not any(case_key(p.stem) in held for p in opened)
    val = set((acdc / "val.list").read_text().split())                 # volumes; their patients are not in train
    assert val and not any(volume_key(p.stem) in val or case_key(p.stem) in {case_key(v) for v in val}
                           for p in opened)


def test_unlabelled_folder_skips_a_bad_file_in_one_line(tmp_path, capsys):
    folder = nifti_cases(tmp_path / "scans", ("a", "b"), (40, 48, 3))   # NIfTI x,y,z: 3 slices each
    (folder / "broken.nii.gz").write_bytes(b"not a nifti")
    rc = cli_main(["pretrain", "--config", "acdc_swin_unet_scratch", "--images", str(folder), "--set",
                   "data.img_size=64", "--set", f"model.kwargs={SMALL}", "--set", "train.batch_size=2", "--set",
                   "data.num_workers=0", "--set", "train.device=cpu", "--set", "train.max_iterations=2", "--set",
                   "pretrain.mask_patch=16", "--out", str(tmp_path / "run"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "on 6 slices of 2 unlabelled scan(s)" in out
    warn = [ln for ln in out.splitlines() if ln.startswith("WARNING")]
    assert len(warn) == 1 and "broken.nii.gz" in warn[0]
    assert (tmp_path / "run" / "latest.pt").is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    rc = cli_main(["pretrain", "--config", "acdc_swin_unet", "--set", "model.name=unet", "--set",
                   "data.layout=synthetic", "--set", "data.root=null", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "has no Swin encoder" in err[0], err
    rc = cli_main(["pretrain", "--config", "acdc_swin_unet", "--images", str(tmp_path / "nothing"), "--out",
                   str(tmp_path / "r2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nothing: input not found" in err[0], err
    np.testing.assert_equal((tmp_path / "r").exists() or (tmp_path / "r2").exists(), False)
