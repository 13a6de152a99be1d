"""Cross-validation folds: patient-grouped, disjoint, seeded; split files honoured or refused in one line;
``train --fold`` in the plan, and a fold run's splits.json, checkpoint record and validation metrics."""
import json

import h5py
import numpy as np
import pytest

from smaformer.checkpoint import load_checkpoint, read_checkpoint
from smaformer.cli import main
from smaformer.config import load_config
from smaformer.data.sample import case_key
from smaformer.errors import InputError
from smaformer.train.data import StackedCases, build_data
from smaformer.train.folds import fold_split, make_folds, read_splits, write_splits
from smaformer.train.loop import train


def acdc_names(patients=range(1, 31), frames=("01", "12"), slices=3) -> list[str]:
    return [f"patient{p:03d}_frame{f}_slice_{s}" for p in patients for f in frames for s in range(slices)]


def test_folds_are_grouped_disjoint_balanced_and_cover_all():
    names = acdc_names()
    folds = make_folds(names, 5, seed=3)
    assert len(folds) == 5
    seen = []
    for f in folds:
        assert sorted(f["train"] + f["val"]) == sorted(names)
        assert not {case_key(n) for n in f["train"]} & {case_key(n) for n in f["val"]}
        assert len({case_key(n) for n in f["val"]}) == 6          # 30 patients / 5 folds
        seen += f["val"]
    assert sorted(seen) == sorted(names)                          # every name validates exactly once
    for p in range(1, 31):   # both frames and every slice of a patient in one fold
        fold_of = {k for k, f in enumerate(folds) for n in f["val"] if case_key(n) == f"patient{p:03d}"}
        assert len(fold_of) == 1


def test_folds_deterministic_from_the_seed():
    names = acdc_names()
    assert make_folds(names, 5, seed=3) == make_folds(list(reversed(names)), 5, seed=3)
    assert make_folds(names, 5, seed=3) != make_folds(names, 5, seed=4)
    sizes = [len({case_key(n) for n in f["val"]}) for f in make_folds(acdc_names(range(1, 13)), 5, seed=0)]
    assert sorted(sizes) == [2, 2, 2, 3, 3]  # 12 groups: sizes differ by at most one


def test_too_few_cases_or_folds_refused():
    with pytest.raises(InputError, match="cannot make 5 folds"):
        make_folds(acdc_names(range(1, 4)), 5)
    for bad, msg in (("data.folds=1", "data.folds"), ("data.fold=5", "out of range"), ("data.fold=-1", "fold index"),
                     ("data.fold=true", "fold index")):
        with pytest.raises(InputError, match=msg):
            load_config(None, [bad])
    with pytest.raises(InputError, match="val_cases"):
        load_config(None, ["data.fold=0", "data.val_cases=[a]"])


def _write_acdc(root, train_patients, test_patients=(), size=16):
    """A tiny acdc_h5 folder: 2 frames x 2 slices per training patient, one volume per test patient."""
    g = np.random.default_rng(0)
    (root / "slices").mkdir(parents=True)
    (root / "volumes").mkdir()
    names = acdc_names(train_patients, slices=2)
    for n in names:
        with h5py.File(root / "slices" / f"{n}.h5", "w") as f:
            f["image"] = g.random((size, size)).astype(np.float32)
            f["label"] = (g.random((size, size)) * 4).astype(np.uint8)
    (root / "train_slices.list").write_text("\n".join(names) + "\n")
    vols = [f"patient{p:03d}_frame01" for p in test_patients]
    for v in vols:
        with h5py.File(root / "volumes" / f"{v}.h5", "w") as f:
            f["image"] = g.random((2, size, size)).astype(np.float32)
            f["label"] = (g.random((2, size, size)) * 4).astype(np.uint8)
    (root / "test.list").write_text("\n".join(vols) + "\n")
    return names


def _cfg(root, *extra):
    return load_config(None, ["data.layout=acdc_h5", f"data.root={root}", "data.val_split=null", "data.img_size=16",
                              "model.name=unet", "model.kwargs={base: 4, depth: 2}", "data.num_workers=0", *extra])


def test_build_data_uses_the_fold_and_never_the_test_split(tmp_path):
    names = _write_acdc(tmp_path, range(1, 7), test_patients=(40,))
    data = build_data(_cfg(tmp_path, "data.fold=1", "data.folds=3"))
    assert isinstance(data.val, StackedCases) and data.splits.fold == 1 and data.splits.folds == 3
    val_groups = {case_key(n) for n in data.val.cases()}
    train_names = data.train.reader.cases()
    assert len(val_groups) == 2 and not val_groups & {case_key(n) for n in train_names}
    # one validation volume per frame (2 patients x 2 frames), each stacking that frame's 2 slices only
    assert len(data.val.cases()) == 4 and all(c.endswith(("_frame01", "_frame12")) for c in data.val.cases())
    vol = data.val.load_case(data.val.cases()[1])
    assert vol.image.shape == (2, 16, 16) and vol.case == data.val.cases()[1]
    assert sorted(train_names + data.splits.val) == sorted(names)
    assert "patient040" not in {case_key(n) for f in data.splits.splits for n in f["train"] + f["val"]}
    # a training patient that is also in the test split is refused, folds or not
    (tmp_path / "test.list").write_text("patient002_frame01\n")
    with h5py.File(tmp_path / "volumes" / "patient002_frame01.h5", "w") as f:
        f["image"], f["label"] = np.zeros((2, 16, 16), np.float32), np.zeros((2, 16, 16), np.uint8)
    with pytest.raises(InputError, match="test split"):
        build_data(_cfg(tmp_path, "data.fold=0", "data.folds=3"))


def test_user_splits_file_is_honoured(tmp_path):
    names = _write_acdc(tmp_path / "d", range(1, 5))
    splits = [{"train": ["patient001", "patient002"], "val": ["patient003_frame01_slice_0", "patient004"]},
              {"train": ["patient003", "patient004"], "val": ["patient001", "patient002"]}]
    path = tmp_path / "my_splits.json"
    path.write_text(json.dumps(splits))
    data = build_data(_cfg(tmp_path / "d", "data.fold=0", f"data.splits_file={path}"))
    assert data.splits.seed is None and data.splits.source == str(path) and data.splits.folds == 2
    assert data.splits.val == sorted(["patient003_frame01_slice_0"] + [n for n in names if "patient004" in n])
    assert {case_key(n) for n in data.train.reader.cases()} == {"patient001", "patient002"}
    write_splits(data.splits.splits, tmp_path / "again.json")     # what a run writes reads back the same
    assert read_splits(tmp_path / "again.json", names) == data.splits.splits


@pytest.mark.parametrize(("content", "fault"), [
    (None, "not found"),
    ("{not json", "not valid JSON"),
    ('{"train": []}', "non-empty JSON list"),
    ('[{"train": ["patient001"]}]', "fold 0 is not"),
    ('[{"train": ["patient001"], "val": ["patient099"]}]', "not in the training split"),
    ('[{"train": ["patient001", "patient002"], "val": ["patient002_frame01_slice_0"]}]', "in both train and val"),
    ('[{"train": ["patient001"], "val": ["patient002"]}, {"train": ["patient003"], "val": ["patient030"]}]',
     "test split"),
    ('[{"train": ["patient001"], "val": ["patient002"]}]', "out of range"),
])
def test_bad_splits_files_refused_in_one_line(tmp_path, content, fault):
    path = tmp_path / "splits.json"
    if content is not None:
        path.write_text(content)
    d = {"fold": 1, "folds": 5, "splits_file": str(path)}
    with pytest.raises(InputError, match=fault) as e:
        fold_split(d, 0, acdc_names(range(1, 5)), test_names=["patient030_frame01"])
    assert "\n" not in str(e.value) and "splits.json" in str(e.value)


def test_train_fold_dry_run_from_the_cli(tmp_path, capsys):
    _write_acdc(tmp_path, range(1, 11))
    args = ["--set", "data.layout=acdc_h5", "--set", f"data.root={tmp_path}", "--set", "data.val_split=null",
            "--set", "model.name=unet", "--set", "model.kwargs={base: 4, depth: 2}", "--set", "data.img_size=16",
            "--set", "data.num_workers=0", "--set", "train.batch_size=2"]
    assert main(["train", "--config", "acdc_swin_unet", "--fold", "2", "--folds", "5", "--dry-run", *args]) == 0
    out = capsys.readouterr().out
    assert "fold 2 of 5 (seed 1234): train 8 cases (16 volumes, 32 slices), val 2 cases (4 volumes, 8 slices)" in out
    assert "4 validation cases" in out     # one volume per frame
    assert main(["train", "--config", "acdc_swin_unet", "--fold", "5", "--dry-run", *args]) == 2
    assert "out of range" in capsys.readouterr().err


def test_train_fold_dry_run_on_real_acdc(data_dir, capsys):
    root = data_dir / "acdc"
    if not (root / "train_slices.list").is_file():
        pytest.skip(f"{root} has no ACDC h5 training split")
    args = ["--set", f"data.root={root}", "--set", "model.name=unet", "--set", "model.kwargs={base: 4, depth: 2}",
            "--set", "data.img_size=32", "--set", "data.num_workers=0"]
    assert main(["train", "--config", "acdc_swin_unet", "--fold", "0", "--dry-run", *args]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("folds"))
    assert "fold 0 of 5 (seed 1234)" in line and "val 14 cases (28 volumes" in line and "train 56 cases" in line
    assert "28 validation cases" in out      # 14 patients, one volume per frame (ED and ES)


def test_real_acdc_fold_validates_one_volume_per_frame(data_dir):
    root = data_dir / "acdc"
    if not (root / "train_slices.list").is_file():
        pytest.skip(f"{root} has no ACDC h5 training split")
    data = build_data(load_config("acdc_swin_unet", [f"data.root={root}", "data.fold=0", "data.num_workers=0"]))
    cases = data.val.cases()
    assert len(cases) == 28 and len({case_key(c) for c in cases}) == 14
    for case in cases[:2]:   # a frame's slices only, in slice order
        names = data.val.groups[case]
        assert all(n.startswith(case + "_slice_") for n in names)
        assert data.val.load_case(case).image.shape[0] == len(names)


def test_fold_run_writes_splits_checkpoint_record_and_validation(tmp_path):
    cfg = load_config(None, ["model.name=unet", "model.kwargs={base: 4, depth: 2}", "data.img_size=32",
                             "data.num_workers=0", "data.synthetic.shape=[4,32,32]", "data.synthetic.train_volumes=5",
                             "model.kwargs.num_classes=3", "train.batch_size=4", "train.epochs=1",
                             "train.tensorboard=false", "train.deterministic=true", "data.fold=1"])
    res = train(cfg, run_dir=tmp_path / "run", progress_bar=False, log=lambda *a, **k: None)
    run = res.run_dir
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits) == 5 and len(splits[1]["val"]) == 1 and len(splits[1]["train"]) == 4
    ckpt = read_checkpoint(run / "latest.pt")
    assert ckpt["splits"]["fold"] == 1 and ckpt["splits"]["seed"] == 1234 and ckpt["splits"]["splits"] == splits
    _, info = load_checkpoint(run / "best.pt")
    assert info["splits"]["splits"][1]["val"] == splits[1]["val"]
    fp = info["fingerprint"]       # the training set's: the 4 cases of the other folds
    assert fp["num_cases"] == 4 and {c["case"] for c in fp["cases"]} == set(splits[1]["train"])
    assert fp["summary"]["spacing"]["min"] == [3.0, 1.5, 1.5]
    metrics = json.loads((run / "validation" / "metrics.json").read_text())
    assert [c["case"] for c in metrics["metric_per_case"]] == splits[1]["val"]
    # the final weights are scored, and the post-processing is chosen on them; best.pt (the same weights
    # after one epoch) gets the same choice
    assert metrics["scored"] == {"checkpoint": "final", "file": "latest.pt", "iteration": res.iterations}
    assert metrics["checkpoint"]["path"] == str(run / "latest.pt")
    assert metrics["best"] == {"file": "best.pt", "iteration": res.iterations, "same_weights_as": "latest.pt"}
    chosen = read_checkpoint(run / "latest.pt")["postprocessing"]
    assert chosen["chosen_on"]["cases"] == splits[1]["val"]
    assert read_checkpoint(run / "best.pt")["postprocessing"] == chosen


def test_final_validation_scores_final_and_best_side_by_side(tmp_path):
    """best.pt of other weights (an earlier iteration) is scored beside the final ones, never instead."""
    from smaformer.checkpoint import save_checkpoint
    from smaformer.train.crossval import final_validation
    from smaformer.train.loop import trainer_session

    cfg = load_config(None, ["model.name=unet", "model.kwargs={base: 4, depth: 2}", "data.img_size=32",
                             "data.num_workers=0", "data.synthetic.shape=[4,32,32]", "data.synthetic.train_volumes=3",
                             "model.kwargs.num_classes=3", "train.batch_size=4", "train.max_iterations=2",
                             "train.tensorboard=false", "train.val_every=0"])
    lines = []
    with trainer_session(cfg, run_dir=tmp_path / "run", progress_bar=False, log=lines.append) as tr:
        tr.fit()
        best = read_checkpoint(tr.run_dir / "latest.pt")
        best["train_state"] = {"epoch": 0, "iteration": 1}
        best["state_dict"] = {k: v + 0.05 if v.is_floating_point() else v for k, v in best["state_dict"].items()}
        save_checkpoint(best, tr.run_dir / "best.pt")
        assert not (tr.run_dir / "validation" / "best").exists()     # no best.pt at the end of fit
        metrics = final_validation(tr.data, tr.run_dir, device=tr.device, batch_size=4, iteration=tr.iteration,
                                   validate_best=True, log=lines.append)
    run = tr.run_dir
    on_disk = json.loads((run / "validation" / "metrics.json").read_text())
    assert on_disk["scored"]["checkpoint"] == "final" and on_disk["checkpoint"]["path"] == str(run / "latest.pt")
    assert on_disk["best"]["iteration"] == 1 and on_disk["best"]["metrics"] == "best/metrics.json"
    assert on_disk["best"]["foreground_mean"] == metrics["best"]["foreground_mean"]
    other = json.loads((run / "validation" / "best" / "metrics.json").read_text())
    assert other["checkpoint"]["path"] == str(run / "best.pt")
    assert all("postprocessing" in read_checkpoint(run / f) for f in ("best.pt", "latest.pt"))
    assert any("best.pt (iteration 1" in ln and "beside the final weights'" in ln for ln in lines)


def test_old_checkpoints_lack_splits_and_fingerprint_and_safetensors_keep_them(tmp_path):
    from smaformer.checkpoint import build_checkpoint, default_preprocessing, save_checkpoint, save_safetensors_pair
    from smaformer.models import create_model

    model = create_model("unet", base=4, depth=2, num_classes=2, img_size=32, in_chans=1)
    ckpt = build_checkpoint(model, ["bg", "fg"], default_preprocessing((32, 32), 1), splits={"fold": 0},
                            fingerprint={"num_cases": 3, "summary": {}})
    w, _ = save_safetensors_pair(ckpt, tmp_path / "model.safetensors")
    _, info = load_checkpoint(w)
    assert info["splits"] == {"fold": 0} and info["fingerprint"]["num_cases"] == 3
    for k in ("splits", "fingerprint"):
        del ckpt[k]
    save_checkpoint(ckpt, tmp_path / "old.pt")
    _, info = load_checkpoint(tmp_path / "old.pt")
    assert info["splits"] is None and info["fingerprint"] is None
