"""``predict/evaluate --compile``: the torch members run through torch.compile and predict what eager predicts."""
import functools

import nibabel as nib
import numpy as np
import torch

import smaformer.compiled
from smaformer.checkpoint import build_checkpoint, default_preprocessing, save_checkpoint
from smaformer.cli import main
from smaformer.compiled import CompiledModule
from smaformer.infer.members import load_members
from smaformer.models import create_model
from smaformer.models.registry import tiny_kwargs


def test_predict_compile_flag_gives_the_eager_labels(tmp_path, monkeypatch):
    # aot_eager: dynamo traces our model, no C++ is generated (inductor takes minutes on 2 shared cores)
    monkeypatch.setattr(smaformer.compiled.torch, "compile",
                        functools.partial(torch.compile, backend="aot_eager"))
    torch.manual_seed(0)
    model = create_model("unet", **tiny_kwargs("unet"), num_classes=3, in_chans=3, img_size=32)
    ckpt = save_checkpoint(build_checkpoint(model, ["bg", "a", "b"], default_preprocessing((32, 32), 3, "repeat")),
                           tmp_path / "tiny.pt")
    vol = np.random.default_rng(0).random((40, 36, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "case.nii.gz")
    members = load_members([ckpt], device="cpu", compile_model=True)
    assert isinstance(members[0][0], CompiledModule)
    labels = []
    for extra in ([], ["--compile"]):
        out = tmp_path / f"out{len(extra)}.nii.gz"
        assert main(["predict", "-i", str(tmp_path / "case.nii.gz"), "-o", str(out), "-c", str(ckpt),
                     "--device", "cpu", "--quiet", *extra]) == 0
        labels.append(np.asarray(nib.load(out).dataobj))
    assert np.array_equal(labels[0], labels[1])
