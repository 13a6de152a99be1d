"""Post-processing chosen on validation (nnU-Net's determine_postprocessing), stored in the checkpoint and
applied by predict; ensembles and mirroring from the command line."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from smaformer.checkpoint import build_checkpoint, default_preprocessing, load_checkpoint, save_checkpoint
from smaformer.cli import main
from smaformer.infer.postprocess import PostprocessingSearch, apply_postprocessing, rule_for_all_classes
from smaformer.models import create_model
from smaformer.models.registry import tiny_kwargs


def _cases(n: int = 3):
    """Class 1: one organ, predicted with a far-away false-positive speck (LCC helps). Class 2: two
    separate true parts (kidneys), predicted exactly (LCC hurts)."""
    out = []
    for i in range(n):
        ref = np.zeros((8, 40, 40), np.uint8)
        ref[2:6, 5:15, 5:15] = 1
        ref[2:6, 25:30, 5:10] = 2
        ref[2:6, 25:30, 30:35] = 2
        pred = ref.copy()
        pred[1, 36 - i:38, 36:38] = 1
        out.append((pred, ref))
    return out


def test_choice_picks_lcc_where_it_helps_and_refuses_it_where_it_hurts():
    search = PostprocessingSearch([1, 2])
    for pred, ref in _cases():
        search.add(pred, ref)
    d = search.decide()
    assert d["per_class"]["1"]["mode"] in ("lcc", "min_size")
    assert d["per_class"]["2"] == {"mode": "none"}
    assert d["dice_after"]["1"] > d["dice_before"]["1"]
    assert d["candidates"]["2"]["lcc"] < d["dice_before"]["2"] == 1.0
    for pred, ref in _cases():
        fixed = apply_postprocessing(pred, d)
        assert np.array_equal(fixed, ref)


def test_choice_keeps_raw_predictions_when_nothing_helps():
    search = PostprocessingSearch([1, 2])
    for _, ref in _cases():
        search.add(ref, ref)
    d = search.decide()
    assert d["per_class"] == {"1": {"mode": "none"}, "2": {"mode": "none"}}
    speckled = _cases()[0][0]
    assert apply_postprocessing(speckled, None) is speckled
    assert not apply_postprocessing(speckled, rule_for_all_classes("lcc"))[1].any()   # the speck goes


class _Fixed(torch.nn.Module):
    """Logits that reproduce a label map, whatever the input: lets a 'model' make a chosen mistake."""

    def __init__(self, labels: np.ndarray, k: int = 3):
        super().__init__()
        self.register_buffer("logits", 10 * torch.nn.functional.one_hot(torch.from_numpy(labels).long(), k)
                             .permute(0, 3, 1, 2).float())
        self.i = 0

    def forward(self, x):
        out = self.logits[self.i:self.i + x.shape[0]]
        self.i = (self.i + x.shape[0]) % len(self.logits)
        return out


@pytest.fixture
def tiny(tmp_path):
    torch.manual_seed(0)
    model = create_model("unet", **tiny_kwargs("unet"), num_classes=3, in_chans=1, img_size=32)
    pre = default_preprocessing((32, 32), 1, "repeat", {"mode": "minmax"})
    return save_checkpoint(build_checkpoint(model, ["background", "a", "b"], pre), tmp_path / "tiny.pt")


def test_evaluate_chooses_stores_and_predict_applies(tiny, tmp_path, capsys, monkeypatch, caplog):
    from smaformer.data.sample import Sample
    from smaformer.infer.evaluate import evaluate

    pred, ref = _cases(1)[0]
    samples = [Sample(np.random.default_rng(0).random(ref.shape).astype(np.float32), ref.astype(np.int64),
                      {"case": "c0", "is_volume": True})]
    import smaformer.infer.members as members

    monkeypatch.setattr(members, "load_predictor", lambda p, e, d, *_: (_Fixed(pred), load_checkpoint(p)[1]))
    res = evaluate(tiny, samples, tmp_path / "ev", overlays=0, progress=False, choose_postprocessing=True,
                   device="cpu", batch_size=8)
    with caplog.at_level("WARNING"):
        after = evaluate(tiny, samples, tmp_path / "ev2", overlays=0, progress=False, device="cpu", batch_size=8)
    assert "chosen on 1 of these 1 cases" in caplog.text               # optimistic: said so
    monkeypatch.undo()
    assert res["postprocessing"]["per_class"]["2"] == {"mode": "none"}
    assert res["postprocessing"]["stored_in"] == str(tiny)
    from smaformer.io_utils import file_sha256
    assert res["checkpoint"]["sha256"] == file_sha256(tiny)          # the file as it is after the choice
    assert load_checkpoint(tiny)[1]["postprocessing"]["chosen_on"]["cases"] == ["c0"]
    assert load_checkpoint(tiny)[1]["postprocessing"]["per_class"]["1"]["mode"] in ("lcc", "min_size")
    assert res["mean"]["1"]["standard"]["dice"] < 1.0
    assert after["mean"]["1"]["standard"]["dice"] == 1.0            # the stored choice is applied by default
    assert after["config"]["postprocess"] == "auto"

    vol = np.random.default_rng(1).random((4, 20, 24)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "v.nii.gz"))
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", "-i", str(tmp_path / "v.nii.gz"), "-o", str(out), "-c", str(tiny), "--quiet"]) == 0
    assert "post-processing 1: " in capsys.readouterr().out
    assert main(["predict", "-i", str(tmp_path / "v.nii.gz"), "-o", str(out), "-c", str(tiny), "--quiet",
                 "--postprocess", "none"]) == 0
    assert "post-processing none" in capsys.readouterr().out


def test_cli_ensemble_with_tta_keeps_geometry_and_refuses_other_classes(tiny, tmp_path, capsys):
    affine = np.array([[0.7, 0, 0, -10], [0, 0.8, 0, 5], [0, 0, 3.0, 2], [0, 0, 0, 1]])
    vol = np.random.default_rng(2).integers(-50, 200, (20, 24, 5)).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / "ct.nii.gz"))
    torch.manual_seed(1)
    other = create_model("unet", **tiny_kwargs("unet"), num_classes=3, in_chans=3, img_size=48)
    second = save_checkpoint(build_checkpoint(other, ["background", "a", "b"],
                                              default_preprocessing((48, 48), 3, "repeat", {"mode": "zscore"})),
                             tmp_path / "second.pt")
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", "-i", str(tmp_path / "ct.nii.gz"), "-o", str(out), "-c", str(tiny), str(second),
                 "--tta", "--quiet"]) == 0
    seg = nib.load(str(out))
    assert seg.shape == vol.shape and np.array_equal(seg.affine, nib.load(str(tmp_path / "ct.nii.gz")).affine)
    assert "2 model(s)" in capsys.readouterr().out

    wrong = save_checkpoint(build_checkpoint(other, ["background", "liver", "spleen"],
                                             default_preprocessing((48, 48), 3, "repeat", {"mode": "zscore"})),
                            tmp_path / "wrong.pt")
    assert main(["predict", "-i", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "x.nii.gz"), "-c", str(tiny),
                 str(wrong), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wrong.pt" in err[0] and "same classes" in err[0]
    assert not (tmp_path / "x.nii.gz").exists()


def test_cross_validation_summary_pools_the_folds(tiny, tmp_path, capsys):
    import json

    from smaformer.data.sample import Sample
    from smaformer.infer.evaluate import evaluate

    rng = np.random.default_rng(3)
    cases = [Sample(rng.random((3, 24, 24)).astype(np.float32), rng.integers(0, 3, (3, 24, 24)),
                    {"case": f"p{i}", "is_volume": True}) for i in range(4)]
    runs = [tmp_path / "f0", tmp_path / "f1"]
    for run, part in zip(runs, (cases[:3], cases[3:]), strict=True):
        evaluate(tiny, part, run / "validation", overlays=0, progress=False, device="cpu")
        (run / "splits.json").write_text(json.dumps([{"train": ["p3"], "val": ["p0", "p1", "p2"]},
                                                     {"train": ["p0", "p1", "p2"], "val": ["p3"]}]))
    out = tmp_path / "cv"
    assert main(["evaluate", "--cross-validation", *map(str, runs), "-o", str(out)]) == 0
    pooled = json.loads((out / "metrics.json").read_text())
    assert pooled["n_cases"] == 4 and [r["case"] for r in pooled["metric_per_case"]] == ["p0", "p1", "p2", "p3"]
    dice = [r["metrics"]["1"]["standard"]["dice"] for r in pooled["metric_per_case"]]
    assert abs(pooled["mean"]["1"]["standard"]["dice"] - np.mean(dice)) < 1e-9
    assert (out / "summary.csv").is_file() and "4 validation cases of 2 folds" in capsys.readouterr().out

    assert main(["evaluate", "--cross-validation", str(runs[0]), str(runs[0]), "-o", str(out)]) == 2
    assert "folds must be disjoint" in capsys.readouterr().err
    assert main(["evaluate", "--cross-validation", str(tmp_path / "nope"), "-o", str(out)]) == 2
    assert "metrics.json: not found" in capsys.readouterr().err


def test_choosing_on_the_test_split_is_refused(tiny, tmp_path):
    from smaformer.data.sample import Sample, SampleList
    from smaformer.errors import InputError
    from smaformer.infer.evaluate import evaluate

    test = SampleList([Sample(np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8), np.int64), {"case": "t"})],
                      split="test")
    with pytest.raises(InputError, match="test split"):
        evaluate(tiny, test, tmp_path / "e", choose_postprocessing=True, progress=False, device="cpu")
