"""Distillation from a frozen teacher (issue 29): the loss terms against hand computations, the teacher left
untouched, ensembles, refusals, and bit-exact resume with a teacher."""
import numpy as np
import pytest
import torch
from test_train import Blobs, _data, quiet, tiny_cfg

from smaformer.checkpoint import build_checkpoint, default_preprocessing, read_checkpoint, save_checkpoint
from smaformer.cli import main as cli_main
from smaformer.errors import InputError
from smaformer.losses import SegLoss
from smaformer.models import create_model
from smaformer.train.distill import DistillObjective, Teacher, soft_dice, soft_kl
from smaformer.train.loop import train

CLASSES = ["background", "disc", "bar"]


def _teacher(path, size=16, seed=0, classes=CLASSES, img_size=None, channel_mode="repeat", intensity=None):
    torch.manual_seed(seed)
    model = create_model("unet", base=4, depth=2, num_classes=len(classes), in_chans=3, img_size=img_size or size)
    pre = default_preprocessing((img_size or size,) * 2, 3, channel_mode, intensity)
    return save_checkpoint(build_checkpoint(model, classes, pre), path)


def _spec(**kw):
    return {"weight": 0.5, "ramp_iters": 0, "soft": 0.0, "hard": 0.0, "dice": 0.0, "temperature": 2.0,
            "balanced": False, **kw}


def _softmax(a, axis=1):
    e = np.exp(a - a.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def test_soft_kl_equals_hand_computation():
    g = np.random.default_rng(0)
    s, t = g.normal(size=(2, 3, 4, 5)), g.normal(size=(2, 3, 4, 5)) * 3
    temp = 2.0
    pt, ps = _softmax(t / temp), _softmax(s / temp)
    per_pixel = (pt * (np.log(pt) - np.log(ps))).sum(1) * temp ** 2        # (2,4,5)
    got = soft_kl(torch.tensor(s), torch.tensor(pt), temp)
    assert got.item() == pytest.approx(per_pixel.mean(), rel=1e-10)
    # balanced: the mean within each teacher class, then over the classes present (class 1 absent here)
    cls = np.zeros((2, 4, 5), dtype=np.int64)
    cls[0, :2] = 2
    want = np.mean([per_pixel[cls == 0].mean(), per_pixel[cls == 2].mean()])
    got = soft_kl(torch.tensor(s), torch.tensor(pt), temp, torch.tensor(cls))
    assert got.item() == pytest.approx(want, rel=1e-10)
    assert want != pytest.approx(per_pixel.mean(), rel=1e-3)    # the weighting changes the value


def test_soft_dice_equals_hand_computation():
    g = np.random.default_rng(1)
    s, pt = g.normal(size=(2, 3, 4, 5)), _softmax(g.normal(size=(2, 3, 4, 5)))
    ps = _softmax(s)
    inter = (ps * pt).sum((0, 2, 3))
    want = np.mean(1 - (2 * inter + 1e-5) / ((ps ** 2).sum((0, 2, 3)) + (pt ** 2).sum((0, 2, 3)) + 1e-5))
    assert soft_dice(torch.tensor(s), torch.tensor(pt)).item() == pytest.approx(want, rel=1e-10)
    assert soft_dice(torch.tensor(np.log(pt)), torch.tensor(pt)).item() == pytest.approx(0, abs=1e-9)  # agreeing


def test_objective_blends_terms_and_ramps(tmp_path):
    pre = default_preprocessing((16, 16), 3)
    teacher = Teacher([str(_teacher(tmp_path / "t.pt"))], CLASSES, pre, torch.device("cpu"))
    loss = SegLoss(3, ce=0.4, dice=0.6)
    student = create_model("unet", base=4, depth=2, num_classes=3, in_chans=3, img_size=16)
    x, y = torch.rand(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))
    t_logits = teacher(x)[0]
    obj = DistillObjective(loss, teacher, _spec(soft=1.0, hard=2.0, temperature=3.0, ramp_iters=10))
    got = obj(student, x, y, iteration=5)
    s = student(x)
    pt3 = (t_logits / 3).softmax(1)
    kl = ((pt3 * (pt3.log() - (s / 3).log_softmax(1))).sum(1) * 9).mean()
    hard = loss(s, t_logits.argmax(1))
    a = 0.5 * 5 / 10
    assert got.item() == pytest.approx(((1 - a) * loss(s, y) + a * (kl + 2 * hard)).item(), rel=1e-6)
    assert obj.blend(0) == 0 and obj.blend(20) == 0.5
    got.backward()                                    # the teacher's outputs are usable in the student's graph
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_at_another_size_and_channel_mode(tmp_path):
    """A 32² pseudo-HDR teacher for a 16² repeat student: its input is rebuilt from channel 0 and resized,
    its logits come back at the student's size."""
    path = _teacher(tmp_path / "t.pt", img_size=32, channel_mode="pseudo_hdr")
    teacher = Teacher([str(path)], CLASSES, default_preprocessing((16, 16), 3, "repeat"), torch.device("cpu"))
    x = torch.rand(1, 1, 16, 16).repeat(1, 3, 1, 1)
    (out,) = teacher(x)
    assert out.shape == (1, 3, 16, 16)
    from smaformer.data.preprocess import make_channels
    ref = teacher.members[0](torch.nn.functional.interpolate(make_channels(x[:, :1], "pseudo_hdr", 3), size=(32, 32),
                                                             mode="bilinear"))
    ref = torch.nn.functional.interpolate(ref, size=(16, 16), mode="bilinear")
    assert torch.allclose(out, ref)


def test_refusals_name_the_teacher(tmp_path):
    pre = default_preprocessing((16, 16), 3)
    wrong = _teacher(tmp_path / "two.pt", classes=["background", "disc"])
    with pytest.raises(InputError, match=r"two\.pt.*teacher classes \['background', 'disc'\] differ"):
        Teacher([str(wrong)], CLASSES, pre, torch.device("cpu"))
    ct = _teacher(tmp_path / "ct.pt", intensity={"mode": "window", "lo": -125, "hi": 275})
    with pytest.raises(InputError, match=r"ct\.pt.*teacher intensity"):
        Teacher([str(ct)], CLASSES, pre, torch.device("cpu"))
    with pytest.raises(InputError, match="missing.pt: teacher checkpoint not found"):
        Teacher([str(tmp_path / "missing.pt")], CLASSES, pre, torch.device("cpu"))


def test_cli_refuses_a_class_mismatch_in_one_line(tmp_path, capsys):
    """ACDC has 4 classes; a 3-class teacher is refused before any training step."""
    wrong = _teacher(tmp_path / "three.pt")
    rc = cli_main(["train", "--config", "acdc_swin_unet", "--set", "data.layout=synthetic", "--set",
                   "data.num_workers=0", "--teacher", str(wrong), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "three.pt" in err[0] and "teacher classes" in err[0], err
    assert not (tmp_path / "run" / "latest.pt").exists()


def _distill_cfg(teachers, total, *extra):
    return tiny_cfg(16, "train.batch_size=2", "train.epochs=1000", f"train.max_iterations={total}",
                    "train.val_every=0", "optim.lr=3e-3", "train.save_every_iters=0",
                    f"distill.teachers={teachers}", "distill.soft=1", "distill.hard=1", "distill.dice=1",
                    "distill.ramp_iters=30", "distill.balanced=true", *extra)


def test_ensemble_teacher_unchanged_and_resume_bit_exact(tmp_path):
    """Two teachers averaged; 90 steps straight == 53 steps, stop, resume: identical weights. The teachers'
    files and weights are unchanged, and the checkpoint records their paths and SHA-256, not their weights."""
    paths = [str(_teacher(tmp_path / f"t{i}.pt", seed=i)) for i in range(2)]
    before = [read_checkpoint(p)["state_dict"] for p in paths]
    raw = [open(p, "rb").read() for p in paths]
    ds = Blobs(32, 16)
    data = _data(ds, [], 16)
    cfg = _distill_cfg(paths, 90)
    a = train(cfg, run_dir=tmp_path / "a", data=data, progress_bar=False, log=quiet)
    b = train(_distill_cfg(paths, 90), run_dir=tmp_path / "b", data=data, progress_bar=False, log=quiet,
              stop_after=53)
    b = train(None, resume=tmp_path / "b", data=data, progress_bar=False, log=quiet)
    assert a.iterations == b.iterations == 90
    ca, cb = read_checkpoint(tmp_path / "a" / "latest.pt"), read_checkpoint(tmp_path / "b" / "latest.pt")
    for k, v in ca["state_dict"].items():
        assert torch.equal(v, cb["state_dict"][k]), k
    rec = ca["config"]["distill"]
    import hashlib
    assert rec["teachers"] == paths
    assert rec["teacher_sha256"] == [hashlib.sha256(r).hexdigest() for r in raw]
    assert not any(k.startswith("teacher") or "members" in k for k in ca["state_dict"])
    assert [open(p, "rb").read() for p in paths] == raw
    for p, sd in zip(paths, before, strict=True):
        for k, v in read_checkpoint(p)["state_dict"].items():
            assert torch.equal(v, sd[k])
    # without the teacher the same run gives other weights: the teacher shaped the student
    c = train(tiny_cfg(16, "train.batch_size=2", "train.epochs=1000", "train.max_iterations=90",
                       "train.val_every=0", "optim.lr=3e-3", "train.save_every_iters=0"),
              run_dir=tmp_path / "c", data=data, progress_bar=False, log=quiet)
    cc = read_checkpoint(c.run_dir / "latest.pt")
    assert any(not torch.equal(v, cc["state_dict"][k]) for k, v in ca["state_dict"].items())


def test_resume_refuses_a_changed_teacher(tmp_path):
    path = str(_teacher(tmp_path / "t.pt"))
    data = _data(Blobs(32, 16), [], 16)
    train(_distill_cfg([path], 40), run_dir=tmp_path / "b", data=data, progress_bar=False, log=quiet, stop_after=5)
    _teacher(tmp_path / "t.pt", seed=7)
    with pytest.raises(InputError, match=r"t\.pt: teacher changed since the run started"):
        train(None, resume=tmp_path / "b", data=data, progress_bar=False, log=quiet)


def test_dry_run_prints_the_teachers_cost(tmp_path, capsys):
    from smaformer.config import load_config
    from smaformer.train.data import build_data
    classes = build_data(load_config(None, ["data.num_workers=0"])).classes
    path = _teacher(tmp_path / "t.pt", size=32, classes=classes)
    rc = cli_main(["train", "--set", "data.img_size=32", "--set", "model.name=unet", "--set",
                   "model.kwargs={base: 4, depth: 2}", "--set", "data.num_workers=0", "--config", "acdc_swin_unet",
                   "--set", "data.layout=synthetic", "--set", "data.root=null", "--set", "train.device=cpu",
                   "--set", "distill.hard=1", "--teacher", str(path), "--dry-run", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0, out
    line = next(ln for ln in out.splitlines() if ln.startswith("teacher"))
    assert f"1 checkpoint(s) {path.resolve()}: " in line and " ms per step of 24 (student forward+backward " in line
    assert "distill    weight 0.5 (ramp 0 steps): soft 1.0 (T 2.0, balanced False), hard 1, dice 0.0" in out


def test_ddp_with_a_teacher(tmp_path):
    """Two ranks, each with its own frozen teacher, through torchrun: the run finishes and records the teacher."""
    import yaml
    from torchrun import torchrun
    cfg = {"name": "tiny", "model": {"name": "unet", "kwargs": {"base": 4, "depth": 2}},
           "data": {"layout": "synthetic", "img_size": 32, "classes": ["background", "organ1", "organ2"],
                    "num_workers": 0, "synthetic": {"train_volumes": 2, "val_volumes": 1, "shape": [4, 32, 32]}},
           "train": {"epochs": 2, "batch_size": 2, "val_every": 1, "deterministic": True, "tensorboard": False,
                     "device": "cpu"},
           "distill": {"soft": 1.0, "hard": 1.0, "balanced": True}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    teacher = _teacher(tmp_path / "t.pt", size=32, classes=["background", "organ1", "organ2"])
    torchrun("train", "--no-progress", "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"),
             "--teacher", str(teacher))
    ckpt = read_checkpoint(tmp_path / "run" / "latest.pt")
    assert ckpt["train_state"]["world_size"] == 2 and ckpt["train_state"]["iteration"] == 4
    assert ckpt["config"]["distill"]["teachers"] == [str(teacher.resolve())]
