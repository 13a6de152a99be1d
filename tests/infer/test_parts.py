"""Cases split over processes: ``--num-parts/--part-id`` and torchrun (2 CPU processes, gloo) for predict and
evaluate cover every case once, with the outputs and metrics of one process."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchrun import TORCHRUN_ENV, torchrun

from smaformer.checkpoint import build_checkpoint, default_preprocessing, save_checkpoint
from smaformer.cli import main
from smaformer.data.synthetic import INTENSITY, make_phantom, phantom_classes
from smaformer.errors import InputError
from smaformer.infer.parts import interleave, resolve_part
from smaformer.models import create_model
from smaformer.models.registry import tiny_kwargs

N_CASES = 5


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch):
    for k in TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """(nnU-Net raw dataset of 5 phantoms (4x32x32), tiny untrained U-Net checkpoint at 32x32)."""
    root = tmp_path_factory.mktemp("parts") / "Dataset001_phantom"
    classes = phantom_classes(3)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    for i in range(N_CASES):
        s = make_phantom(i, shape=(4, 32, 32), num_classes=3)
        nib.save(nib.Nifti1Image(s.image.T.astype(np.int16), affine), str(root / "imagesTr" / f"case{i}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(s.label.T.astype(np.uint8), affine), str(root / "labelsTr" / f"case{i}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                   "labels": {c: k for k, c in enumerate(classes)},
                                                   "numTraining": N_CASES}), encoding="utf-8")
    torch.manual_seed(0)
    model = create_model("unet", **tiny_kwargs("unet"), num_classes=3, in_chans=1, img_size=32)
    _fit(model, [make_phantom(i, shape=(4, 32, 32), num_classes=3) for i in range(N_CASES)])
    pre = default_preprocessing((32, 32), 1, "repeat", INTENSITY)
    return root, save_checkpoint(build_checkpoint(model, classes, pre), root.parent / "tiny.pt")


def _fit(model: torch.nn.Module, samples: list) -> None:
    """60 class-weighted Adam steps on the phantoms' slices (one thread): the scores compared are not all zero."""
    lo, hi = INTENSITY["lo"], INTENSITY["hi"]
    x = torch.from_numpy(np.concatenate([(np.clip(s.image, lo, hi) - lo) / (hi - lo) for s in samples]))
    y = torch.from_numpy(np.concatenate([s.label for s in samples])).long()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    try:
        for _ in range(60):
            loss = F.cross_entropy(model(x[:, None].float()), y, weight=torch.tensor([0.1, 1.0, 1.0]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()


def test_dealing_covers_every_item_once_and_interleave_undoes_it():
    items = list(range(11))
    for n in (1, 2, 3, 4, 11, 13):
        parts = [resolve_part(n, k).take(items) for k in range(n)]
        assert sorted(x for p in parts for x in p) == items
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert interleave(parts) == items
    assert resolve_part().take(items) == items and not resolve_part().split


@pytest.mark.parametrize(("n", "k", "msg"), [(0, 0, "--num-parts 0: must be at least 1"),
                                             (2, 2, "--part-id 2: must be in 0..1"),
                                             (3, -1, "--part-id -1: must be in 0..2")])
def test_bad_parts_are_one_line_errors(n, k, msg, dataset, tmp_path, capsys):
    with pytest.raises(InputError, match=msg):
        resolve_part(n, k)
    root, ckpt = dataset
    code = main(["predict", "-i", str(root / "imagesTr"), "-o", str(tmp_path / "o"), "-c", str(ckpt),
                 "--num-parts", str(n), "--part-id", str(k), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and msg in err and len(err.splitlines()) == 1


def test_torchrun_environment_gives_the_part(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    part = resolve_part(torchrun=True)
    assert (part.part_id, part.num_parts, part.torchrun, part.local_rank) == (3, 4, True, 1)
    assert part.suffix() == "_part3_of_4" and part.device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(InputError, match="under torchrun"):
        resolve_part(2, 1, torchrun=True)
    assert not resolve_part().split      # the API reads the environment only when asked (DDP's rank-0 evaluate)


def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asanyarray(nib.load(str(p)).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


def _predict(dataset, out: Path, *extra: str) -> None:
    root, ckpt = dataset
    assert main(["predict", "-i", str(root / "imagesTr"), "-o", str(out), "-c", str(ckpt), "--quiet",
                 "--device", "cpu", *extra]) == 0


@pytest.fixture(scope="module")
def single_predict(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    _predict(dataset, out)
    return _labels(out)


def _summary_cases(path: Path) -> list[str]:
    return [Path(c["source"]).name for c in json.loads(path.read_text(encoding="utf-8"))["cases"]]


def test_predict_parts_cover_every_case_once(dataset, single_predict, tmp_path):
    out = tmp_path / "segs"
    for k in (0, 1):
        _predict(dataset, out, "--num-parts", "2", "--part-id", str(k))
    assert _summary_cases(out / "predict_part0_of_2.json") == [f"case{i}_0000.nii.gz" for i in (0, 2, 4)]
    assert _summary_cases(out / "predict_part1_of_2.json") == [f"case{i}_0000.nii.gz" for i in (1, 3)]
    assert not (out / "predict.json").exists()
    got = _labels(out)
    assert list(got) == list(single_predict) and len(got) == N_CASES
    assert all(np.array_equal(got[name], single_predict[name]) for name in got)


@pytest.mark.slow
def test_torchrun_predict_equals_one_process(dataset, single_predict, tmp_path):
    root, ckpt = dataset
    out = tmp_path / "segs"
    torchrun("predict", "-i", str(root / "imagesTr"), "-o", str(out), "-c", str(ckpt), "--quiet", "--device", "cpu")
    parts = [_summary_cases(out / f"predict_part{k}_of_2.json") for k in (0, 1)]
    assert sorted(parts[0] + parts[1]) == [f"case{i}_0000.nii.gz" for i in range(N_CASES)]
    got = _labels(out)
    assert list(got) == list(single_predict)
    assert all(np.array_equal(got[name], single_predict[name]) for name in got)


def _evaluate(dataset, out: Path, *extra: str) -> list[str]:
    root, ckpt = dataset
    return ["evaluate", "-c", str(ckpt), "-d", str(root), "--split", "train", "-o", str(out), "--overlays", "1",
            "--no-progress", "--device", "cpu", *extra]


def _comparable(metrics: Path) -> dict:
    """metrics.json without what differs between runs (creation time, seconds per case, part count)."""
    m = json.loads(metrics.read_text(encoding="utf-8"))
    for row in m["metric_per_case"]:
        row.pop("seconds")
    m["data"].pop("parts", None)
    return {k: v for k, v in m.items() if k != "created"}


@pytest.fixture(scope="module")
def single_metrics(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_single")
    assert main(_evaluate(dataset, out)) == 0
    return _comparable(out / "metrics.json")


def test_evaluate_parts_then_merge_equal_one_process(dataset, single_metrics, tmp_path):
    out = tmp_path / "eval"
    for k in (1, 0):
        assert main(_evaluate(dataset, out, "--num-parts", "2", "--part-id", str(k))) == 0
    assert not (out / "metrics.json").exists()
    part1 = json.loads((out / "metrics_part1_of_2.json").read_text(encoding="utf-8"))
    assert [r["case"] for r in part1["metric_per_case"]] == ["case1", "case3"]
    assert main(["evaluate", "--merge-parts", "-o", str(out)]) == 0
    merged = _comparable(out / "metrics.json")
    assert [r["case"] for r in merged["metric_per_case"]] == [f"case{i}" for i in range(N_CASES)]
    assert 0.2 < merged["foreground_mean"]["standard"]["dice"] < 1     # a trained model: not all-zero scores
    assert merged == single_metrics
    assert (out / "summary.csv").is_file() and "case3" in (out / "report.html").read_text(encoding="utf-8")


def test_merge_needs_every_part(dataset, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(_evaluate(dataset, out, "--num-parts", "3", "--part-id", "1")) == 0
    capsys.readouterr()
    assert main(["evaluate", "--merge-parts", "-o", str(out)]) == 2
    assert "need each of 0..2 of 3 once" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_evaluate_writes_one_metrics_json(dataset, single_metrics, tmp_path):
    out = tmp_path / "eval"
    r = torchrun(*_evaluate(dataset, out))
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "overlays", "report.html", "summary.csv"]
    assert len(list((out / "overlays").glob("*.png"))) == N_CASES
    merged = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert merged["data"]["parts"] == 2
    assert _comparable(out / "metrics.json") == single_metrics
    assert r.stdout.count("foreground mean") == 1        # rank 0 reports, once


def test_choosing_postprocessing_needs_every_case(dataset, tmp_path):
    from smaformer.infer.evaluate import evaluate

    root, ckpt = dataset
    with pytest.raises(InputError, match="needs every validation case in one process"):
        evaluate(ckpt, root, tmp_path / "o", split="train", num_parts=2, part_id=0, choose_postprocessing=True)
    assert not (tmp_path / "o").exists()
