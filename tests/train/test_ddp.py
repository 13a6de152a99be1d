"""DDP through torchrun (CPU, gloo, 2 processes) and crash safety (SIGKILL leaves a loadable latest.pt)."""
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from torchrun import torchrun, torchrun_env

from smaformer.checkpoint import read_checkpoint
from smaformer.train.loop import train

TINY = {
    "name": "tiny",
    "model": {"name": "unet", "kwargs": {"base": 4, "depth": 2, "dropout": 0.1}},
    "data": {"layout": "synthetic", "img_size": 32, "classes": ["background", "organ1", "organ2"],
             "intensity": {"mode": "window", "lo": -125, "hi": 275}, "augment": True, "num_workers": 0,
             "synthetic": {"train_volumes": 2, "val_volumes": 1, "shape": [4, 32, 32], "seed": 0}},
    "train": {"epochs": 3, "batch_size": 2, "val_every": 1, "deterministic": True, "tensorboard": False,
              "device": "cpu"},
}


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    return path


def test_ddp_two_processes(tiny_yaml, tmp_path):
    out = tmp_path / "run"
    r = torchrun("train", "--no-progress", "--config", str(tiny_yaml), "--out", str(out))
    ckpt = read_checkpoint(out / "latest.pt")
    st = ckpt["train_state"]
    # 8 slices over 2 ranks, batch 2 -> 2 steps per epoch, 3 epochs
    assert (st["iteration"], st["epoch"], st["world_size"]) == (6, 3, 2)
    assert len(st["rng"]) == 2 and not torch.equal(st["rng"][0]["torch"], st["rng"][1]["torch"])
    assert [row["epoch"] for row in st["history"]] == [1, 2, 3]
    assert (out / "best.pt").is_file() and (out / "train_log.csv").read_text(encoding="utf-8").count("\n") == 4
    assert r.stdout.count("epoch 3/3") == 1 and r.stdout.count("done:") == 1     # rank 0 logs, once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "tiny.yaml"]
    # the validation Dice reduced across the ranks equals one process scoring the same weights on the same cases
    from smaformer.checkpoint import load_checkpoint
    from smaformer.config import load_config
    from smaformer.train.data import build_data, validation_dice
    data = build_data(load_config(tiny_yaml))
    model, _ = load_checkpoint(out / "latest.pt")
    single = validation_dice(model, data.val, data.preprocessing, 3, device=torch.device("cpu"), precision="fp32",
                             batch_size=16)
    assert st["history"][-1]["mean_dice"] == pytest.approx(float(single.mean()), abs=1e-9)
    assert [st["history"][-1][f"dice_{c}"] for c in ("organ1", "organ2")] == pytest.approx(single.tolist(), abs=1e-9)
    # a 2-rank run stopped mid-way and resumed on 2 ranks ends bit for bit where the straight run did
    part = tmp_path / "part"
    torchrun("train", "--no-progress", "--config", str(tiny_yaml), "--out", str(part), "--stop-after", "3")
    assert read_checkpoint(part / "latest.pt")["train_state"]["iteration"] == 3
    with pytest.raises(Exception, match=r"trained on 2 process\(es\); resume it with the same number \(got 1\)"):
        train(None, resume=part, progress_bar=False, log=lambda *a: None)      # the world-size refusal
    torchrun("train", "--no-progress", "--resume", str(part))
    resumed = read_checkpoint(part / "latest.pt")
    assert resumed["train_state"]["iteration"] == 6
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k


def _long_run(tiny_yaml, out, stdout) -> subprocess.Popen:
    """A long single-process run that saves every step; returns once its first latest.pt exists."""
    cmd = [sys.executable, "-m", "smaformer", "train", "--config", str(tiny_yaml), "--out", str(out),
           "--no-progress", "--set", "train.epochs=500", "--set", "train.save_every_iters=1",
           "--set", "train.val_every=0"]
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.DEVNULL, text=True, env=torchrun_env())
    deadline = time.time() + 120
    while not (out / "latest.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    return proc


def test_sigkill_leaves_loadable_checkpoint(tiny_yaml, tmp_path):
    out = tmp_path / "run"
    proc = _long_run(tiny_yaml, out, subprocess.DEVNULL)
    try:
        time.sleep(1.0)            # kill while it is writing checkpoints every step
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = read_checkpoint(out / "latest.pt")
    done = ckpt["train_state"]["iteration"]
    assert done >= 1
    res = train(None, resume=out, stop_after=done + 2, progress_bar=False, log=lambda *a: None)
    assert res.iterations == done + 2 and res.stopped == "stop_after"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_save_then_exit_with_the_shell_code(tiny_yaml, tmp_path, sig, code):
    out = tmp_path / "run"
    proc = _long_run(tiny_yaml, out, subprocess.PIPE)
    proc.send_signal(sig)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, stdout[-1000:]
    assert "resume with `smaformer train --resume" in stdout
    assert read_checkpoint(out / "latest.pt")["train_state"]["iteration"] >= 1


def test_session_frees_the_ddp_wrapper_before_leaving_the_group(monkeypatch):
    """DDP's reducer must not hold the last reference to the gloo group when it is freed (a hang at exit
    on rank 1, 11 runs in 40 under load): the session drops the wrapper, then leaves the group."""
    import weakref

    from smaformer.train import loop

    class Wrapper(torch.nn.Module):       # stands in for DistributedDataParallel
        pass

    class FakeTrainer:
        def __init__(self, *a, **k):
            self.model = torch.nn.Linear(1, 1)
            self.net = Wrapper()
            self.train_net = self.net

    seen = {}
    monkeypatch.setattr(loop, "Trainer", FakeTrainer)
    monkeypatch.setattr(loop.dd, "leave", lambda: seen.setdefault("alive", ref() is not None))
    with loop.trainer_session({}) as trainer:
        ref = weakref.ref(trainer.net)
    assert seen == {"alive": False}
