"""Training parity: our Trainer, driven by the ``acdc_swin_unet`` recipe, takes the official Swin-Unet trainer's
six steps (``../shared/golden/swin_unet_train``) with the same losses and ends at the same weights.

Two departures of our recipe from the official loop are set back for the comparison, and each is tested on
its own below (docs/TRAINING.md, "Departures from the official Swin-Unet loop"):
- the official poly schedule lags one step (it sets the lr after step i from ``iter_num = i``, so steps 0
  and 1 both use the base lr); ``schedule.warmup_iters=1, warmup_start_factor=1`` over ``max_iterations + 1``
  steps reproduces it exactly;
- the official ``base_lr *= batch / 24`` applies only when the batch is a multiple of 6; ours always applies
  (``optim.lr_batch_reference: 24``), so at batch 4 the golden's 0.05 is ours with the reference off.
"""
import json

import numpy as np
import pytest
import torch
from test_train import quiet

from smaformer.checkpoint import default_preprocessing
from smaformer.config import effective_lr, load_config
from smaformer.models import create_model
from smaformer.train import trainer_session
from smaformer.train.data import TrainData
from smaformer.train.sampling import ResumableSampler
from smaformer.train.schedule import lr_factor
from smaformer.weights import load_official


def _official(path) -> dict:
    """The official model's weights as its trainer saves them (``SwinUnet.swin_unet.*``)."""
    return {"swin_unet." + k: v for k, v in torch.load(path, weights_only=True).items()}


class InDrawOrder(torch.utils.data.Dataset):
    """The golden slices, placed so that our shuffling sampler draws them in the official order (no augmentation)."""

    def __init__(self, x, y, seed):
        order = ResumableSampler(len(x), seed=seed).indices()          # epoch 0: the k-th draw is index order[k]
        self.items = [None] * len(x)
        for k, index in enumerate(order):
            self.items[index] = (torch.from_numpy(x[k]), torch.from_numpy(y[k]))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return {"image": self.items[i][0], "label": self.items[i][1]}


def test_trainer_reproduces_the_official_swin_unet_steps(golden_dir, tmp_path):
    folder = golden_dir / "swin_unet_train"
    meta = json.loads((folder / "trajectory.json").read_text(encoding="utf-8"))
    c, steps = meta["constructor"], meta["steps"]
    kwargs = {k: c[k] for k in ("embed_dim", "depths", "num_heads", "window_size", "drop_path_rate")}
    cfg = load_config("acdc_swin_unet", [
        "data.layout=synthetic", f"data.img_size={c['img_size']}", "data.num_workers=0",
        f"model.kwargs={json.dumps(kwargs)}", f"train.batch_size={meta['batch']}", "train.epochs=2",
        f"train.max_iterations={meta['max_iterations'] + 1}", "schedule.warmup_iters=1",
        "schedule.warmup_start_factor=1.0", "optim.lr_batch_reference=null", "train.val_every=0",
        "train.deterministic=true", "train.tensorboard=false", "train.device=cpu", "train.precision=fp32"])
    assert (cfg["optim"]["name"], cfg["optim"]["lr"], cfg["schedule"]["name"]) == ("sgd", meta["base_lr"], "poly")
    batches = np.load(folder / "batches.npz")
    data = TrainData(InDrawOrder(batches["x"], batches["y"], cfg["train"]["seed"]), [],
                     ["background", "RV", "Myo", "LV"], default_preprocessing((128, 128), 3, "repeat"))
    seen = []
    with trainer_session(cfg, run_dir=tmp_path, data=data, progress_bar=False, log=quiet) as trainer:
        load_official(trainer.model, _official(folder / "official_init.pt"))
        loss_fn = trainer.objective.loss.forward

        def recorded(logits, labels):       # our SegLoss, observed: the loss and the lr of each step
            loss = loss_fn(logits, labels)
            seen.append((float(loss.detach()), trainer.optimizer.param_groups[0]["lr"]))
            return loss

        trainer.objective.loss.forward = recorded
        trainer.fit(stop_after=steps)
        ours = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    golden = meta["trajectory"]
    assert [lr for _, lr in seen] == pytest.approx([g["lr_used"] for g in golden], rel=1e-12)
    assert [loss for loss, _ in seen] == pytest.approx([g["loss"] for g in golden], abs=1e-6)
    after = create_model("swin_unet", num_classes=4, img_size=c["img_size"], **kwargs)
    load_official(after, _official(folder / "official_after6.pt"))
    worst = max((ours[k] - v).abs().max().item() for k, v in after.state_dict().items())
    assert worst < 1e-5


def test_our_poly_schedule_is_the_official_one_step_earlier():
    """Ours at step k: (1 - k/T)^0.9. Official at step k >= 1: (1 - (k-1)/T)^0.9 (step 0 and 1 share the base lr)."""
    total = 10
    official = [1.0] + [(1 - (k - 1) / total) ** 0.9 for k in range(1, total)]
    ours = [lr_factor(k, total, "poly") for k in range(total)]
    assert ours[0] == official[0] and ours[1] < official[1]
    assert ours[1:-1] == pytest.approx(official[2:], rel=1e-12)
    lagged = [lr_factor(k, total + 1, "poly", warmup=1, warmup_start=1.0) for k in range(total)]
    assert lagged == pytest.approx(official, rel=1e-12)


@pytest.mark.parametrize(("batch", "official_lr"), [(4, 0.05), (8, 0.05), (12, 0.025), (24, 0.05), (48, 0.1)])
def test_batch_scaling_departs_from_the_official_rule_off_multiples_of_6(batch, official_lr):
    cfg = load_config("acdc_swin_unet", [f"train.batch_size={batch}"])
    assert effective_lr(cfg) == pytest.approx(0.05 * batch / 24)           # ours: every batch size
    assert (effective_lr(cfg) == pytest.approx(official_lr)) == (batch % 6 == 0)
