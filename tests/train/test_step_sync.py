"""The GPU-first step: no host sync per step, a late but exact stop on a non-finite loss, checkpoints by time
written in the background, and exact resume after a SIGTERM."""
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import Blobs, _data, quiet, tiny_cfg

import smaformer
from smaformer.checkpoint import read_checkpoint
from smaformer.errors import DivergedError, SmaformerError
from smaformer.train import saver
from smaformer.train.loop import train

PACKAGE = str(Path(smaformer.__file__).parent)
SYNCS = ("item", "__float__", "__bool__", "__int__", "tolist", "numpy", "cpu", "__repr__", "__format__")
#: host-side reads that are no device sync: the optimizers' step counters live on the CPU (non-fused), and the
#: sampler draws each epoch's order from a CPU generator
HOST_SIDE = (str(Path(torch.optim.__file__).parent), str(Path(smaformer.__file__).parent / "train" / "sampling.py"))


@pytest.fixture
def host_syncs(monkeypatch):
    """Every call of a Tensor method that copies a value to the host made while ``Trainer._step`` runs, whoever
    makes it (smaformer, torch, a user's print), and smaformer's own calls elsewhere in the loop."""
    from smaformer.train.loop import Trainer
    calls, depth = [], {"step": 0, "sync": 0}

    def counting(name, original):
        def method(self, *args, **kwargs):
            caller = sys._getframe(1).f_code
            outer = depth["sync"] == 0 and not caller.co_filename.startswith(HOST_SIDE)   # not a sync's own reads
            in_step = outer and depth["step"] > 0
            if in_step or (outer and caller.co_filename.startswith(PACKAGE)):
                calls.append(f"{name} in {caller.co_name} ({Path(caller.co_filename).name})"
                             + (" during the step" if in_step else ""))
            depth["sync"] += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                depth["sync"] -= 1
        return method

    step = Trainer._step

    def counted_step(self, micro):
        depth["step"] += 1
        try:
            return step(self, micro)
        finally:
            depth["step"] -= 1

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(Trainer, "_step", counted_step)
    return calls


def test_sixty_steps_make_one_sync_per_log_interval(tmp_path, host_syncs):
    """60 steps, 3 epochs, log_every 10: at most 6 reads, none inside a step. The loop before issue 23 read
    the loss after every step (float(loss) + isfinite), 60 here."""
    ds = Blobs(40, 16)
    cfg = tiny_cfg(16, "train.batch_size=2", "train.epochs=3", "train.val_every=0", "train.log_every=10",
                   "optim.lr=1e-3")
    res = train(cfg, run_dir=tmp_path, data=_data(ds, [], 16), progress_bar=False, log=quiet)
    assert res.iterations == 60
    assert 1 <= len(host_syncs) <= 60 // 10, host_syncs
    assert all(c == "tolist in read (meter.py)" for c in host_syncs), host_syncs


@pytest.mark.parametrize("leak", ["print", "cpu", "item"])
def test_a_sync_inside_the_step_is_counted_whoever_makes_it(tmp_path, host_syncs, monkeypatch, leak):
    """A print of the loss (torch formats it), loss.cpu() or loss.item() in the objective is counted: the
    check sees every read during the step, not only smaformer's direct calls."""
    from smaformer.train.distill import Objective
    forward = Objective.forward

    def leaky(self, net, x, y, iteration):
        loss = forward(self, net, x, y, iteration)
        {"print": lambda: print(loss), "cpu": loss.cpu, "item": loss.item}[leak]()
        return loss

    monkeypatch.setattr(Objective, "forward", leaky)
    ds = Blobs(8, 16)
    cfg = tiny_cfg(16, "train.batch_size=2", "train.epochs=1", "train.val_every=0", "train.log_every=10")
    train(cfg, run_dir=tmp_path, data=_data(ds, [], 16), progress_bar=False, log=quiet)
    assert sum("during the step" in c for c in host_syncs) == 4, host_syncs      # once in each of the 4 steps


class NanAt(Blobs):
    """Blobs whose item ``bad`` is NaN: the loss of the step that draws it is not finite."""

    def __init__(self, n, size, bad):
        super().__init__(n, size)
        self.bad = bad

    def __getitem__(self, i):
        item = super().__getitem__(i)
        if i == self.bad:
            item["image"] = torch.full_like(item["image"], float("nan"))
        return item


def test_non_finite_loss_stops_at_the_next_read_naming_its_iteration(tmp_path):
    ds = NanAt(32, 16, bad=5)
    cfg = tiny_cfg(16, "train.batch_size=2", "train.epochs=2", "train.val_every=0", "train.log_every=10",
                   "data.augment=false")
    order = torch.randperm(32, generator=torch.Generator().manual_seed(1234 * 100_003)).tolist()
    bad_step = order.index(5) // 2                       # the step of epoch 0 whose batch holds item 5
    with pytest.raises(DivergedError, match=rf"loss is nan at iteration {bad_step}; lower optim.lr") as e:
        train(cfg, run_dir=tmp_path, data=_data(ds, [], 16), progress_bar=False, log=quiet)
    assert not (tmp_path / "latest.pt").exists()          # nothing from the poisoned weights was saved
    assert isinstance(e.value, SmaformerError)            # the CLI prints it as one line, exit 2


@pytest.fixture
def writes(monkeypatch):
    """Names of the checkpoint files written, in order."""
    names = []
    original = saver.save_checkpoint

    def recording(ckpt, path):
        names.append(Path(path).name)
        return original(ckpt, path)

    monkeypatch.setattr(saver, "save_checkpoint", recording)
    return names


def test_defaults_write_latest_only_at_the_end(tmp_path, writes):
    ds = Blobs(8, 16)
    cfg = tiny_cfg(16, "train.batch_size=2", "train.epochs=10", "train.val_every=5")
    res = train(cfg, run_dir=tmp_path, data=_data(ds, [ds.volume(range(2))], 16), progress_bar=False, log=quiet)
    assert res.epochs == 10 and writes.count("latest.pt") == 1
    assert read_checkpoint(tmp_path / "latest.pt")["train_state"]["epoch"] == 10
    assert writes.count("best.pt") in (1, 2)                # best.pt still follows each improvement


def test_save_every_s_zero_writes_every_epoch(tmp_path, writes):
    ds = Blobs(8, 16)
    cfg = tiny_cfg(16, "train.batch_size=2", "train.epochs=3", "train.val_every=0", "train.save_every_s=0")
    train(cfg, run_dir=tmp_path, data=_data(ds, [], 16), progress_bar=False, log=quiet)
    assert writes == ["latest.pt"] * 3


class TermAt(Blobs):
    """Blobs that send this process SIGTERM once, when item ``at`` of epoch 1 is loaded."""

    def __init__(self, n, size, at):
        super().__init__(n, size)
        self.at, self.loads = at, 0

    def __getitem__(self, i):
        self.loads += 1
        if self.loads == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__getitem__(i)


def test_sigterm_saves_and_the_run_resumes_bit_identically(tmp_path):
    total = 40
    cfg = tiny_cfg(16, "train.batch_size=2", "train.epochs=5", "train.val_every=0", "optim.lr=3e-3",
                   "train.grad_clip=1.0")
    a = train(cfg, run_dir=tmp_path / "a", data=_data(Blobs(16, 16), [], 16), progress_bar=False, log=quiet)
    term = TermAt(16, 16, at=16 + 2 * 3 + 1)          # the first item of epoch 1's fourth step
    b = train(cfg, run_dir=tmp_path / "b", data=_data(term, [], 16), progress_bar=False, log=quiet)
    assert b.stopped == "interrupted" and b.signal == signal.SIGTERM and b.iterations == 8 + 4
    assert read_checkpoint(tmp_path / "b" / "latest.pt")["train_state"]["step_in_epoch"] == 4
    b = train(None, resume=tmp_path / "b", data=_data(term, [], 16), progress_bar=False, log=quiet)
    assert a.iterations == b.iterations == total
    ca, cb = read_checkpoint(tmp_path / "a" / "latest.pt"), read_checkpoint(tmp_path / "b" / "latest.pt")
    assert all(torch.equal(v, cb["state_dict"][k]) for k, v in ca["state_dict"].items())
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]


def test_snapshot_does_not_follow_later_updates():
    w = torch.ones(3)
    snap = saver.cpu_snapshot({"w": w, "rows": [{"x": 1.0}], "n": 2})
    w.add_(1.0)
    assert torch.equal(snap["w"], torch.ones(3)) and snap["rows"] == [{"x": 1.0}] and snap["n"] == 2


def test_background_writer_reports_a_failed_write_on_wait(tmp_path):
    writer = saver.BackgroundWriter()
    (tmp_path / "latest.pt").mkdir()          # a folder in the way: the final rename fails
    writer.submit([({"x": torch.zeros(1)}, tmp_path / "latest.pt")])
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()                     # the error is raised once
    assert np.isfinite(writer.last_s)


def test_channels_last_by_default_for_the_conv_models_only():
    from smaformer.models.hbformer import HBFormer
    from smaformer.models.swin_unet import SwinUnet
    from smaformer.models.unet import UNet
    from smaformer.train.meter import memory_format

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    unet, swin, hybrid = UNet.__new__(UNet), SwinUnet.__new__(SwinUnet), HBFormer.__new__(HBFormer)   # the class's
    assert memory_format(unet, tiny_cfg(16), cpu) == torch.channels_last
    assert memory_format(unet, tiny_cfg(16, "train.channels_last=false"), cpu) == torch.contiguous_format
    assert memory_format(swin, tiny_cfg(16), cuda) == torch.contiguous_format
    assert memory_format(hybrid, tiny_cfg(16), cpu) == torch.contiguous_format       # measured slower on CPU
    assert memory_format(hybrid, tiny_cfg(16), cuda) == torch.channels_last


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizers_are_fused_on_cuda_only(name):
    from smaformer.train.schedule import build_optimizer

    cfg, model = tiny_cfg(16, f"optim.name={name}"), torch.nn.Linear(2, 2)
    assert build_optimizer(cfg, model, torch.device("cuda")).defaults["fused"] is True
    assert not build_optimizer(cfg, model, torch.device("cpu")).defaults.get("fused")
