"""Training engine: overfitting a small batch, exact resume, checkpoint contents, leak refusal."""
import csv

import numpy as np
import pytest
import torch

from smaformer.checkpoint import default_preprocessing, load_checkpoint, read_checkpoint
from smaformer.config import load_config
from smaformer.data import Sample
from smaformer.data.sample import case_key
from smaformer.errors import InputError
from smaformer.train.data import TrainData, check_no_leak
from smaformer.train.loop import train
from smaformer.train.schedule import lr_factor


class Blobs(torch.utils.data.Dataset):
    """Noisy discs with a bar inside (3 classes); flips at random, so augmentation RNG matters."""

    def __init__(self, n: int, size: int, seed: int = 0):
        g = np.random.default_rng(seed)
        yy, xx = np.mgrid[:size, :size]
        self.items = []
        for _ in range(n):
            cy, cx = g.uniform(size * 0.3, size * 0.7, 2)
            r = g.uniform(size * 0.2, size * 0.3)
            lab = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.int64)
            lab[(np.abs(yy - cy) < max(1, size // 16)) & (lab == 1)] = 2
            self.items.append(((lab * 0.5 + g.normal(0, 0.15, lab.shape)).astype(np.float32), lab))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        img, lab = self.items[i]
        if np.random.rand() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(img))[None].repeat(3, 1, 1)
        return {"image": x, "label": torch.from_numpy(np.ascontiguousarray(lab))}

    def volume(self, idx):
        return Sample(np.stack([self.items[i][0] for i in idx]), np.stack([self.items[i][1] for i in idx]),
                      {"case": "vol", "is_volume": True})


def tiny_cfg(size: int, *overrides: str) -> dict:
    return load_config(None, [f"data.img_size={size}", "model.name=unet",
                              "model.kwargs={base: 4, depth: 2, dropout: 0.1}", "data.num_workers=0",
                              "train.deterministic=true", "train.tensorboard=false", *overrides])


def _data(ds, val, size):
    return TrainData(ds, val, ["background", "disc", "bar"], default_preprocessing((size, size), 3, "repeat"))


def quiet(*args, **kwargs):
    pass


def test_overfits_small_batch(tmp_path):
    ds = Blobs(4, 32)
    cfg = tiny_cfg(32, "model.kwargs.dropout=0.0", "model.kwargs.base=8", "train.batch_size=4", "train.epochs=80",
                   "train.val_every=40", "optim.lr=1e-2", "schedule.name=constant", "train.save_every_iters=0")
    res = train(cfg, run_dir=tmp_path / "run", data=_data(ds, [ds.volume(range(4))], 32), progress_bar=False,
                log=quiet)
    losses = [r["train_loss"] for r in res.history]
    assert res.iterations == 80 and res.stopped == "finished"
    assert losses[-1] < 0.3 * losses[0]
    dice = [r["mean_dice"] for r in res.history if not np.isnan(r["mean_dice"])]
    assert len(dice) == 2 and dice[-1] > 0.85
    rows = list(csv.DictReader(open(tmp_path / "run" / "train_log.csv", encoding="utf-8")))
    assert len(rows) == 80 and set(rows[0]) >= {"epoch", "iterations", "lr", "train_loss", "dice_disc", "dice_bar",
                                                "mean_dice", "epoch_s"}
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_checkpoint_contents(tmp_path):
    ds = Blobs(6, 16)
    cfg = tiny_cfg(16, "train.batch_size=2", "train.epochs=2", "train.val_every=1")
    train(cfg, run_dir=tmp_path, data=_data(ds, [ds.volume(range(3))], 16), progress_bar=False, log=quiet)
    raw = torch.load(tmp_path / "latest.pt", weights_only=True)      # no pickle code needed
    assert raw["model"]["name"] == "unet" and raw["model"]["kwargs"]["num_classes"] == 3
    assert raw["classes"] == ["background", "disc", "bar"]
    assert raw["preprocessing"]["img_size"] == [16, 16] and raw["config"]["train"]["epochs"] == 2
    st = raw["train_state"]
    assert (st["epoch"], st["iteration"], st["step_in_epoch"]) == (2, 6, 0)
    assert {"optimizer", "scheduler", "scaler", "rng", "history"} <= set(st)
    rng = st["rng"][0]
    assert isinstance(rng["torch"], torch.Tensor) and isinstance(rng["numpy"][1], torch.Tensor)
    assert set(raw["metrics"]) >= {"val_dice", "mean_dice"}
    model, info = load_checkpoint(tmp_path / "best.pt")
    assert not model.training and info["classes"] == raw["classes"]
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    best = read_checkpoint(tmp_path / "best.pt")
    assert "optimizer" not in best["train_state"]                   # best.pt is for inference


def test_resume_is_bit_identical(tmp_path):
    """2000 steps straight == 1237 steps, stop (mid-epoch), resume to 2000: identical weights and optimizer.

    Exercises shuffling, random flips, dropout, gradient clipping, the schedule and AdamW state.
    """
    total, stop = 2000, 1237
    ds = Blobs(64, 16)
    cfg = tiny_cfg(16, "train.batch_size=2", "train.epochs=1000", f"train.max_iterations={total}",
                   "train.val_every=0", "optim.lr=3e-3", "train.grad_clip=1.0", "train.save_every_iters=0")
    data = _data(ds, [], 16)
    a = train(cfg, run_dir=tmp_path / "a", data=data, progress_bar=False, log=quiet)
    b = train(cfg, run_dir=tmp_path / "b", data=data, progress_bar=False, log=quiet, stop_after=stop)
    assert b.stopped == "stop_after" and b.iterations == stop and stop % 32 != 0     # mid-epoch
    b = train(None, resume=tmp_path / "b", data=data, progress_bar=False, log=quiet)
    assert a.iterations == b.iterations == total
    ca, cb = read_checkpoint(tmp_path / "a" / "latest.pt"), read_checkpoint(tmp_path / "b" / "latest.pt")
    for k, v in ca["state_dict"].items():
        assert torch.equal(v, cb["state_dict"][k]), k
    for sa, sb in zip(ca["train_state"]["optimizer"]["state"].values(),
                      cb["train_state"]["optimizer"]["state"].values(), strict=True):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]


def test_schedules():
    assert lr_factor(0, 100, "poly") == 1.0
    assert lr_factor(50, 100, "poly", power=0.9) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(100, 100, "cosine", min_ratio=0.01) == pytest.approx(0.01)
    assert lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    # linear warm-up from warmup_start to the value the schedule has at the end of the warm-up
    assert lr_factor(0, 100, "cosine", warmup=10, warmup_start=0.1) == pytest.approx(0.1)
    assert lr_factor(5, 100, "cosine", warmup=10, warmup_start=0.0) == pytest.approx(0.5)
    assert lr_factor(10, 100, "cosine", warmup=10) == pytest.approx(1.0)


def test_grad_accumulation_matches_bigger_batch(tmp_path):
    """accum_steps=2 at batch 2 takes the same optimizer steps as batch 4 (no dropout, BN in eval-free model)."""
    ds = Blobs(8, 16)
    common = ["model.kwargs.dropout=0.0", "train.epochs=1", "train.val_every=0", "optim.name=sgd",
              "schedule.name=constant", "data.augment=false"]
    res = []
    runs = (["train.batch_size=4", "optim.lr=1e-12"], ["train.batch_size=4"],
            ["train.batch_size=2", "train.accum_steps=2"])
    for i, extra in enumerate(runs):
        r = train(tiny_cfg(16, *common, *extra), run_dir=tmp_path / str(i), data=_data(ds, [], 16),
                  progress_bar=False, log=quiet)
        res.append(read_checkpoint(r.run_dir / "latest.pt")["state_dict"]["head.weight"])
        assert r.iterations == 2
    # res[0] is the start (lr 1e-12). Compare the updates: summed instead of averaged gradients, a dropped
    # micro-batch or no step at all would each differ by about the whole update. (BatchNorm statistics of half
    # batches differ slightly.)
    w0, a, b = res
    update = (a - w0).abs().max()
    assert update > 0
    assert (b - a).abs().max() < 0.05 * update


def test_leak_checks():
    assert case_key("case0005_slice012") == "case0005"
    assert case_key("patient001_frame01_slice_3") == case_key("patient001_frame12") == "patient001"
    check_no_leak(["case0005_slice000"], ["case0006"], ["case0001"], "x")
    with pytest.raises(InputError, match="validation case"):
        check_no_leak(["case0005_slice000"], ["case0001"], ["case0001"], "x")
    with pytest.raises(InputError, match="training case"):
        check_no_leak(["patient001_frame01_slice_2"], [], ["patient001_frame12"], "x")


def test_refuses_too_little_data(tmp_path):
    ds = Blobs(3, 16)
    with pytest.raises(InputError, match="no full step"):
        train(tiny_cfg(16, "train.batch_size=4"), run_dir=tmp_path, data=_data(ds, [], 16), log=quiet)


def test_early_stopping_with_bf16_and_channels_last(tmp_path):
    """lr ~ 0: validation Dice soon stops improving; training stops 2 validations after the best one."""
    ds = Blobs(4, 16)
    cfg = tiny_cfg(16, "train.batch_size=2", "train.epochs=20", "train.val_every=1", "optim.lr=1e-12",
                   "train.early_stop_patience=2", "train.precision=bf16", "train.channels_last=true",
                   "train.deterministic=false")
    res = train(cfg, run_dir=tmp_path, data=_data(ds, [ds.volume(range(2))], 16), progress_bar=False, log=quiet)
    dice = [r["mean_dice"] for r in res.history]
    assert res.stopped == "early_stop" and res.epochs < 20 and res.iterations == 2 * res.epochs
    assert len(dice) - 1 - dice.index(max(dice)) == 2


def test_time_limit_stops_after_validating(tmp_path):
    ds = Blobs(8, 16)
    cfg = tiny_cfg(16, "train.batch_size=2", "train.epochs=50", "train.val_every=10", "train.time_limit_s=1e-9")
    res = train(cfg, run_dir=tmp_path, data=_data(ds, [ds.volume(range(2))], 16), progress_bar=False, log=quiet)
    assert res.stopped == "time_limit" and res.iterations == 1
    assert not np.isnan(res.history[-1]["mean_dice"]) and (tmp_path / "best.pt").is_file()


def test_worker_count_does_not_change_training(tmp_path):
    """Augmentations are seeded per item, so 0 and 2 loader workers train the same weights."""
    ds = Blobs(8, 16)
    ckpts = []
    for nw in (0, 2):
        cfg = tiny_cfg(16, "train.batch_size=2", "train.epochs=2", "train.val_every=0", f"data.num_workers={nw}")
        train(cfg, run_dir=tmp_path / str(nw), data=_data(ds, [], 16), progress_bar=False, log=quiet)
        ckpts.append(read_checkpoint(tmp_path / str(nw) / "latest.pt")["state_dict"])
    assert all(torch.equal(v, ckpts[1][k]) for k, v in ckpts[0].items())


def test_dry_run_leaves_no_global_state(capsys):
    """``train --dry-run`` builds a Trainer; like ``train`` it must put the determinism switch back."""
    from smaformer.cli import main

    assert not torch.are_deterministic_algorithms_enabled()
    args = ["model.name=unet", "model.kwargs={base: 4, depth: 2}", "data.img_size=32", "data.num_workers=0",
            "train.deterministic=true", "data.layout=synthetic", "data.synthetic.shape=[4,32,32]"]
    assert main(["train", "--dry-run", "--config", "acdc_swin_unet", *sum((["--set", a] for a in args), [])]) == 0
    assert "steps" in capsys.readouterr().out
    assert not torch.are_deterministic_algorithms_enabled()


def test_trainer_state_exists_before_fit_and_wrapped_models_save(tmp_path):
    from smaformer.checkpoint import build_checkpoint
    from smaformer.train import trainer_session

    ds = Blobs(8, 32)
    with trainer_session(tiny_cfg(32, "train.batch_size=4"), run_dir=tmp_path, data=_data(ds, [], 32),
                         progress_bar=False, log=quiet) as trainer:
        assert trainer.tb is None and trainer._stop_signal == 0 and trainer._time_up is False
        ckpt = build_checkpoint(torch.nn.DataParallel(trainer.model), trainer.classes, trainer.data.preprocessing)
    assert ckpt["model"]["name"] == "unet" and set(ckpt["state_dict"]) == set(trainer.model.state_dict())


def test_plain_progress_for_pipes_prints_every_30_s():
    from smaformer.train.runlog import PlainProgress, progress

    now, lines = [0.0], []
    bar = PlainProgress(100, 0, lines.append, clock=lambda: now[0])
    for _ in range(100):
        now[0] += 1.0                      # one step per second
        bar.set_postfix(loss="0.5000")
        bar.update(1)
    assert len(lines) == 5                 # the first step, then at 31, 61, 91 s, and the last step
    assert lines[1] == "it 31/100  loss 0.5000  1.00 it/s  ETA 0:01:09"
    assert lines[-1].startswith("it 100/100")
    assert isinstance(progress(10, 0, True), PlainProgress)       # pytest's stderr is not a terminal


def test_loader_workers_capped_by_usable_cpus(tmp_path):
    from smaformer.train import trainer_session
    from smaformer.train.data import usable_cpus

    ds = Blobs(8, 32)
    cfg = tiny_cfg(32, "train.batch_size=4", "data.num_workers=64")
    with trainer_session(cfg, run_dir=tmp_path, data=_data(ds, [], 32), progress_bar=False, log=quiet) as tr:
        assert tr._loader().num_workers == usable_cpus() < 64


def test_tensorboard_asked_for_but_missing_warns(tmp_path, monkeypatch):
    import sys

    from smaformer.train.runlog import TensorBoard

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)     # import fails as if not installed
    lines = []
    tb = TensorBoard(tmp_path, True, lines.append)
    assert tb.writer is None and len(lines) == 1 and "tensorboard is not installed" in lines[0]
    assert TensorBoard(tmp_path, False, lines.append).writer is None and len(lines) == 1


def test_label_out_of_range_is_refused_before_training(tmp_path, capsys):
    """A PNG mask holding 200 for a 2-class model: one line naming the mask file and the value, before any
    step (it was an IndexError traceback from the loss)."""
    from PIL import Image

    from smaformer.cli import main
    for split in ("train", "val"):
        for d in ("images", "masks"):
            (tmp_path / "data" / split / d).mkdir(parents=True)
        for i in range(3):
            img = (np.random.default_rng(i).random((32, 32)) * 255).astype(np.uint8)
            mask = np.zeros((32, 32), np.uint8)
            mask[8:20, 8:20] = 200 if (split, i) == ("train", 1) else 1
            Image.fromarray(img).save(tmp_path / "data" / split / "images" / f"c{i}.png")
            Image.fromarray(mask).save(tmp_path / "data" / split / "masks" / f"c{i}.png")
    rc = main(["train", "--config", "acdc_swin_unet", "--set", f"data.root={tmp_path / 'data'}", "--set",
               "data.layout=image_folder", "--set", "data.classes=[bg, fg]", "--set", "model.name=unet", "--set",
               "model.kwargs={base: 4, depth: 2}", "--set", "data.img_size=32", "--set", "data.num_workers=0",
               "--set", "data.in_chans=1", "--set", "train.batch_size=2", "--out", str(tmp_path / "run"),
               "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert f"{tmp_path / 'data' / 'train' / 'masks' / 'c1.png'}: label value 200 outside the model's classes 0..1" \
        in err[0]
    assert not (tmp_path / "run").exists()          # refused before the run folder is written


def test_stop_after_below_one_is_refused(capsys):
    from smaformer.cli import main
    rc = main(["train", "--config", "acdc_swin_unet", "--stop-after", "-1", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == "error: --stop-after -1: give a number of optimizer steps >= 1"
