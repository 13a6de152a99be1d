"""``smaformer evaluate`` end to end: files written, metrics.json schema, failing cases skipped."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from smaformer import create_model
from smaformer.checkpoint import build_checkpoint, default_preprocessing, save_checkpoint
from smaformer.cli import main
from smaformer.errors import InputError
from smaformer.infer.evaluate import evaluate, volume_dice
from smaformer.io_utils import file_sha256
from smaformer.models.registry import tiny_kwargs

SIZE = 64


def _tiny_model(num_classes: int) -> torch.nn.Module:
    return create_model("unet", **tiny_kwargs("unet"), num_classes=num_classes, in_chans=1, img_size=SIZE)


def _train(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> None:
    """A few dozen Adam steps on (N,1,S,S) images (class-weighted CE), enough to find the left ventricle.

    One thread: on a loaded 2-core machine, 2 threads made these tiny steps ~15x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    weight = torch.tensor([0.2] + [1.0] * (model.model_kwargs["num_classes"] - 1))
    model.train()
    try:
        for step in range(steps):
            idx = torch.randint(0, len(images), (16,), generator=torch.Generator().manual_seed(step))
            loss = F.cross_entropy(model(images[idx]), labels[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()


@pytest.fixture(scope="module")
def acdc(shared_data_dir, tmp_path_factory):
    """(ACDC root, tiny U-Net checkpoint trained for 80 steps on 96 ACDC training slices at 64x64)."""
    from smaformer.data import open_dataset

    root = shared_data_dir / "acdc"
    train = open_dataset(root, split="train")
    names = train.cases()[:: max(1, len(train.cases()) // 96)][:96]
    imgs, labs = [], []
    for name in names:
        s = train.load_case(name)
        imgs.append(F.interpolate(torch.from_numpy(s.image)[None], size=(SIZE, SIZE), mode="bilinear")[0])
        labs.append(F.interpolate(torch.from_numpy(s.label)[None, None].float(), size=(SIZE, SIZE),
                                  mode="nearest")[0, 0].long())
    torch.manual_seed(0)
    model = _tiny_model(4)
    _train(model, torch.stack(imgs), torch.stack(labs), steps=80)
    pp = default_preprocessing((SIZE, SIZE), 1, "repeat", {"mode": "none"})
    path = tmp_path_factory.mktemp("acdc") / "tiny_acdc.pt"
    save_checkpoint(build_checkpoint(model, train.classes, pp), path)
    return root, path


def _check_schema(res: dict, out, n_cases: int, labels: list[str]) -> None:
    for name in ("metrics.json", "summary.csv", "report.html"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(res))
    assert res["format"] == "smaformer-evaluation" and len(res["checkpoint"]["sha256"]) == 64
    assert set(res["conventions"]) >= {"standard", "legacy", "slice", "hd95_unit"}
    assert len(res["metric_per_case"]) == n_cases and list(res["classes"]) == labels
    for case in res["metric_per_case"]:
        assert list(case["metrics"]) == labels
        for m in case["metrics"].values():
            assert set(m) >= {"tp", "fp", "fn", "n_pred", "n_ref", "empty", "standard", "legacy"}
            assert ("slice" in m) == (len(case["shape"]) == 3)
            assert set(m["standard"]) == {"dice", "iou", "hd95", "assd"} and set(m["legacy"]) == {"dice", "hd95"}
            assert m["tp"] + m["fp"] == m["n_pred"] and m["tp"] + m["fn"] == m["n_ref"]
    for k in labels:
        assert set(res["mean"][k]) == {"standard", "legacy", "slice", "counts"}
        assert res["mean"][k]["counts"]["n_cases"] == n_cases
    assert set(res["foreground_mean"]) == {"standard", "legacy", "slice"}
    with open(out / "summary.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == (n_cases + 1) * len(labels) and rows[-1]["case"] == "mean"
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<table>" in page and "http" not in page.replace("http-equiv", "")


def test_evaluate_synthetic_without_shared_data(tmp_path):
    from smaformer.data import SyntheticReader

    reader = SyntheticReader(2, shape=(6, 48, 48), num_classes=3, seed=5)
    model = _tiny_model(3)
    pp = default_preprocessing((SIZE, SIZE), 1, "repeat", {"mode": "minmax"})
    ckpt = save_checkpoint(build_checkpoint(model, reader.classes, pp), tmp_path / "tiny.pt")
    res = evaluate(ckpt, reader, tmp_path / "out", overlays=1, postprocess="lcc", progress=False)
    _check_schema(res, tmp_path / "out", 2, ["1", "2"])
    assert res["checkpoint"]["sha256"] == file_sha256(ckpt)
    assert res["config"]["postprocess"] == "lcc"
    assert "data:image/png;base64," in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


def test_evaluate_cli_on_acdc_volumes(acdc, tmp_path, capsys):
    root, ckpt = acdc
    from smaformer.data import open_dataset

    cases = open_dataset(root, split="val").cases()[:2]
    out = tmp_path / "eval"
    rc = main(["evaluate", "-c", str(ckpt), "-d", str(root), "-o", str(out), "--split", "val", "--cases", *cases,
               "no_such_case", "--overlays", "1", "--save-nifti", "--no-progress"])
    assert rc == 0
    res = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    _check_schema(res, out, 2, ["1", "2", "3"])
    assert [f["case"] for f in res["failed_cases"]] == ["no_such_case"]
    assert res["conventions"]["hd95_unit"] == "voxel"  # the h5 volumes carry no spacing
    assert res["classes"] == {"1": "RV", "2": "Myo", "3": "LV"}
    assert "foreground mean" in capsys.readouterr().out
    nib = pytest.importorskip("nibabel")
    for c in res["metric_per_case"]:
        pred = np.asarray(nib.load(str(out / "predictions" / f"{c['case']}.nii.gz")).dataobj)
        assert pred.dtype == np.uint8 and pred.T.shape == tuple(c["shape"])
        assert len(list((out / "overlays").glob(f"{c['case']}_z*.png"))) == 1
    # trained 80 steps: better than chance on the left ventricle
    assert res["mean"]["3"]["standard"]["dice"] > 0.2


def test_volume_dice_matches_evaluate(acdc, tmp_path):
    root, ckpt = acdc
    from smaformer import load_checkpoint
    from smaformer.data import open_dataset

    reader = open_dataset(root, split="val")
    case = reader.cases()[0]
    res = evaluate(ckpt, reader, tmp_path / "e", cases=[case], overlays=0, progress=False)
    model, info = load_checkpoint(ckpt)
    rows = volume_dice(model, [reader.load_case(case)], info["preprocessing"], 4)
    got = [res["metric_per_case"][0]["metrics"][k]["standard"]["dice"] for k in ("1", "2", "3")]
    assert rows.shape == (1, 3)
    assert np.allclose([math.nan if g is None else g for g in got], rows[0], equal_nan=True)


def test_evaluate_2d_images(tmp_path):
    """2D samples (C,H,W) are scored in 2D: no slice Dice, overlays still written."""
    from smaformer.data import make_phantom_2d

    class TwoD:
        classes = ["background", "organ1", "organ2"]

        def cases(self):
            return ["a", "b"]

        def load_case(self, case):
            return make_phantom_2d(0 if case == "a" else 1, (48, 48), 3)

    model = _tiny_model(3)
    pp = default_preprocessing((SIZE, SIZE), 1, "repeat", {"mode": "window", "lo": -125, "hi": 275})
    ckpt = save_checkpoint(build_checkpoint(model, TwoD.classes, pp), tmp_path / "tiny2d.pt")
    res = evaluate(ckpt, TwoD(), tmp_path / "out", overlays=1, progress=False)
    _check_schema(res, tmp_path / "out", 2, ["1", "2"])
    assert res["conventions"]["hd95_unit"] == "mm" and res["metric_per_case"][0]["shape"] == [48, 48]
    assert "slice" not in res["metric_per_case"][0]["metrics"]["1"]
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) >= 1


def test_bad_postprocess_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    from smaformer.cli import main

    out, data = tmp_path / "eval", tmp_path / "data"
    assert main(["evaluate", "-c", str(tmp_path / "x.pt"), "-d", str(data), "-o", str(out),
                 "--postprocess", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --postprocess takes") and err.count("\n") == 1
    assert main(["evaluate", "-c", str(tmp_path / "x.pt"), "-d", str(data), "-o", str(out)]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err and not out.exists()


def test_checkpoint_that_does_not_fit_the_data_is_refused(tmp_path, capsys, caplog):
    """A 3-class checkpoint on 5-class phantoms: a one-line error, exit 2, and nothing written."""
    from smaformer.data import SyntheticReader

    pp = default_preprocessing((SIZE, SIZE), 1, "repeat", {"mode": "minmax"})
    ckpt = save_checkpoint(build_checkpoint(_tiny_model(3), ["bg", "a", "b"], pp), tmp_path / "tiny.pt")
    reader = SyntheticReader(1, shape=(4, 48, 48), num_classes=5, seed=5)
    with pytest.raises(InputError, match=r"label value 4 is outside the checkpoint's classes 0..2 \(bg, a, b\)"):
        evaluate(ckpt, reader, tmp_path / "out", overlays=0, progress=False)
    assert "differ from the checkpoint's" in caplog.text
    assert not (tmp_path / "out").exists()


def test_evaluate_ensemble_with_tta_and_sliding_on_acdc_volumes(acdc, tmp_path, capsys):
    """An ensemble of the checkpoint with itself scores as the checkpoint; --tta and --inference sliding
    run on the real volumes (in-plane 256x216 and the like, model size 64) and keep their shapes."""
    root, ckpt = acdc
    from smaformer.data import open_dataset

    case = open_dataset(root, split="val").cases()[0]
    base = ["-d", str(root), "--split", "val", "--cases", case, "--overlays", "0", "--no-progress"]
    runs = {"single": ["-c", str(ckpt)], "pair": ["-c", str(ckpt), str(ckpt)],
            "tta": ["-c", str(ckpt), str(ckpt), "--tta"], "sliding": ["-c", str(ckpt), "--inference", "sliding"]}
    res = {}
    for name, args in runs.items():
        assert main(["evaluate", *args, *base, "-o", str(tmp_path / name)]) == 0
        res[name] = json.loads((tmp_path / name / "metrics.json").read_text(encoding="utf-8"))
    assert res["single"]["foreground_mean"] == res["pair"]["foreground_mean"]
    assert len(res["pair"]["ensemble"]) == 2 and res["tta"]["config"]["tta"] is True
    for r in res.values():
        assert r["data"]["n_cases"] == 1 and r["metric_per_case"][0]["warnings"] == []
    assert res["sliding"]["metric_per_case"][0]["shape"] == res["single"]["metric_per_case"][0]["shape"]
