"""``smaformer pretrain``: SimMIM self-pretraining of a Swin encoder on the user's own images, no labels.

The images are the training split of the config's dataset (its validation and test cases are never opened;
a fold's or ``val_cases``' held-out patients are left out too), or a folder of unlabelled scans in any format
``predict`` reads (``pretrain.images``). Preprocessing (size, channels, intensity, augmentation) is the
config's, as in ``train``. The run folder holds ``config.yaml``, ``pretrain_log.csv`` and ``latest.pt``:
the encoder in the Swin-T layout (``model``) that ``model.pretrained`` loads with its coverage report, and the
training state. ``latest.pt`` is written every ``train.save_every_s`` seconds, at the end and on
SIGINT/SIGTERM; ``--resume`` continues bit for bit on CPU in deterministic mode.
"""
from __future__ import annotations

import copy
import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from smaformer.config import check_config, dump_config
from smaformer.data.preprocess import make_channels, normalize_intensity
from smaformer.data.transforms import RandomGenerator, resize_pair
from smaformer.errors import CheckpointError, InputError, first_line
from smaformer.io_utils import check_readable
from smaformer.models import create_model
from smaformer.runtime import autocast, enable_deterministic, resolve_device, resolve_precision
from smaformer.train.data import build_data, build_loader, preprocessing_of
from smaformer.train.rundir import check_out_folder, claim_run_dir
from smaformer.train.runlog import progress
from smaformer.train.sampling import ResumableSampler, capture_rng, restore_rng, seed_everything
from smaformer.train.saver import BackgroundWriter, cpu_snapshot
from smaformer.train.schedule import IterScheduler, build_optimizer
from smaformer.train.simmim import SimMIM, random_masks

FORMAT = "smaformer-simmim"


class UnlabelledSlices(Dataset):
    """The 2D slices (axis 0) of every readable scan under ``folder`` at the model's input; a file that cannot
    be read is logged in one line and skipped. Holds the slices in memory at the model's size."""

    def __init__(self, folder: str | Path, preprocessing: dict, augment: bool, log=print):
        from smaformer.data.io import read_image
        from smaformer.infer.predict import list_cases

        size = tuple(preprocessing["img_size"])
        self.pre, self.slices, self.files = preprocessing, [], []
        self.augment = RandomGenerator(size) if augment else None
        for path in list_cases(folder):
            try:
                arr, props = read_image(path, scale_8bit=True)
            except InputError as e:
                log(f"WARNING: skipped {e}")
                continue
            stack = arr[:, None] if props.get("is_volume", arr.ndim == 3) else arr[None]   # (N, C, H, W)
            stack = normalize_intensity(stack, preprocessing["intensity"])
            self.slices += [resize_pair(s, None, size)[0] for s in stack]
            self.files.append(str(path))
        if not self.slices:
            raise InputError(folder, "no readable scans to pretrain on")

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> dict:
        image = self.slices[i]
        if self.augment is not None:
            image, _ = self.augment(image, np.zeros(image.shape[1:], np.uint8))
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        pre = self.pre
        if pre["channel_mode"] == "pseudo_hdr" or x.shape[0] != pre["in_chans"]:
            x = make_channels(x[None], pre["channel_mode"], int(pre["in_chans"]))[0]
        return {"image": x}


def training_images(cfg: dict, log=print) -> tuple[Dataset, str]:
    """The images to pretrain on and a description: ``pretrain.images`` or the config's training split only."""
    images = cfg["pretrain"]["images"]
    if images:
        ds = UnlabelledSlices(images, preprocessing_of(cfg), bool(cfg["data"]["augment"]), log)
        return ds, f"{len(ds)} slices of {len(ds.files)} unlabelled scan(s) in {images}"
    only_train = copy.deepcopy(cfg)
    only_train["data"].update(val_split=None, test_split=None)     # never opened, not even listed
    data = build_data(only_train)
    return data.train, (f"{len(data.train)} training slices of {cfg['data']['layout']} {cfg['data']['root'] or ''} "
                        "(labels unused)")


def read_run_state(path: Path) -> dict:
    """The ``latest.pt`` of a pretraining run (weights_only), or a one-line CheckpointError."""
    path = check_readable(path, "pretraining checkpoint", CheckpointError)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here is a bad file for the user
        raise CheckpointError(path, f"not a readable torch checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(path, "not a pretraining run (smaformer pretrain writes one) to resume")
    return state


@dataclass
class PretrainResult:
    run_dir: Path
    iterations: int
    loss: float
    stopped: str     # "finished" | "stop_after" | "interrupted"


def _write_log(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["iteration", "loss", "lr", "elapsed_s"])
        w.writeheader()
        w.writerows(rows)


def pretrain(cfg: dict | None, *, run_dir: str | Path | None = None, resume: str | Path | None = None,
             stop_after: int | None = None, progress_bar: bool = True, log=print) -> PretrainResult:
    """SimMIM pretraining of the config's model encoder (see the module docstring). The deterministic-algorithms
    switch (``train.deterministic``) is put back as it was when the run ends, as ``train`` does."""
    before = torch.are_deterministic_algorithms_enabled()
    try:
        return _pretrain(cfg, run_dir, resume, stop_after, progress_bar, log)
    finally:
        torch.use_deterministic_algorithms(before)


def _pretrain(cfg, run_dir, resume, stop_after, progress_bar, log) -> PretrainResult:
    import signal

    state = None
    if resume is not None:
        run_dir = Path(resume)
        state = read_run_state(run_dir / "latest.pt")
        cfg = state["config"]
        check_config(cfg)
    t, p = cfg["train"], cfg["pretrain"]
    device = resolve_device(t["device"])
    if t["deterministic"]:
        enable_deterministic(device)
    precision = resolve_precision(t["precision"], device, training=True)
    if state is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(run_dir) if run_dir else Path(t["out_dir"]) / f"{cfg['name']}-simmim-{stamp}"
        check_out_folder(run_dir)
    seed_everything(int(t["seed"]))
    dataset, described = training_images(cfg, log)
    try:
        model = create_model(cfg["model"]["name"], **cfg["model"]["kwargs"])
        simmim = SimMIM(model, int(p["mask_patch"])).to(device)
        grid = simmim.grid(tuple(cfg["data"]["img_size"]))
    except (ValueError, TypeError) as e:
        raise InputError(None, f"model {cfg['model']['name']!r}: {first_line(e)}") from None
    optimizer = build_optimizer(cfg, simmim, device)
    batch = int(t["batch_size"])
    sampler = ResumableSampler(len(dataset), seed=int(t["seed"]))
    per_epoch = sampler.per_rank // batch
    if per_epoch < 1:
        raise InputError(None, f"{len(dataset)} slices give no full batch of {batch}")
    total = int(t["epochs"]) * per_epoch
    total = min(total, int(t["max_iterations"])) if t["max_iterations"] else total
    scheduler = IterScheduler(optimizer, cfg, total)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")     # fp16 gradients need scaling
    clip = float(t["grad_clip"] or 0)
    it, epoch, step_in_epoch, rows, elapsed, loss_sum = 0, 0, 0, [], 0.0, 0.0
    if state is not None:
        st = state["train_state"]
        simmim.load_state_dict(st["simmim"])
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        if st.get("scaler"):        # a disabled scaler (fp32/bf16) saves an empty state
            scaler.load_state_dict(st["scaler"])
        it, epoch, step_in_epoch = st["iteration"], st["epoch"], st["step_in_epoch"]
        rows, elapsed, loss_sum = list(st["log"]), st["elapsed"], st["loss_sum"]
        restore_rng(st["rng"])
    else:
        run_dir = claim_run_dir(run_dir)
        dump_config(cfg, run_dir / "config.yaml")
    log(f"SimMIM pretraining of {cfg['model']['name']}'s encoder on {described}; mask ratio {p['mask_ratio']} of "
        f"{grid[0]}x{grid[1]} squares of {p['mask_patch']} px; {total} iterations; device {device}, {precision}")
    writer = BackgroundWriter()
    masks_gen = torch.Generator().manual_seed(int(t["seed"]) + 17)
    if state is not None:
        masks_gen.set_state(state["train_state"]["mask_rng"])
    sum_loss = torch.full((), loss_sum, dtype=torch.float64, device=device)   # since the last logged step

    def save() -> None:
        ckpt = {"format": FORMAT, "model": simmim.encoder_state_dict(), "config": cfg,
                "train_state": cpu_snapshot({"simmim": simmim.state_dict(), "optimizer": optimizer.state_dict(),
                                             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                             "iteration": it, "epoch": epoch,
                                             "step_in_epoch": step_in_epoch, "log": rows, "elapsed": elapsed,
                                             "loss_sum": float(sum_loss),
                                             "rng": capture_rng(), "mask_rng": masks_gen.get_state()})}
        writer.submit([(ckpt, run_dir / "latest.pt")])

    stop = {"signal": 0}
    old = {s: signal.signal(s, lambda n, f: stop.update(signal=n)) for s in (signal.SIGINT, signal.SIGTERM)}
    stopped, saved_at, log_every = "finished", time.monotonic(), int(t["log_every"])
    bar = progress(total, it, progress_bar, log)
    loader = build_loader(dataset, sampler, batch, int(cfg["data"]["num_workers"]), int(t["seed"]), 0, device)
    every_s = float(t["save_every_s"])             # 0: at every epoch end, as in train
    try:
        while it < total and stopped == "finished":
            sampler.set_epoch(epoch, step_in_epoch * batch)
            simmim.train()
            t0 = time.perf_counter()
            for items in loader:
                x = items["image"].to(device, non_blocking=True)
                mask = random_masks(x.shape[0], grid, float(p["mask_ratio"]), masks_gen).to(device, non_blocking=True)
                with autocast(precision, device):
                    loss = simmim.loss(x, mask)
                scaler.scale(loss).backward()
                if clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(simmim.parameters(), clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                sum_loss += loss.detach()
                it, step_in_epoch = it + 1, step_in_epoch + 1
                bar.update(1)
                if it % log_every == 0 or it == total:      # the loss is read here only (a host sync)
                    now = time.perf_counter()
                    elapsed, t0 = elapsed + now - t0, now
                    mean = float(sum_loss) / (it - (rows[-1]["iteration"] if rows else 0))
                    sum_loss.zero_()
                    rows.append({"iteration": it, "loss": mean, "lr": scheduler.get_last_lr()[0],
                                 "elapsed_s": round(elapsed, 1)})
                    bar.set_postfix(loss=f"{mean:.4f}")
                    _write_log(rows, run_dir / "pretrain_log.csv")
                if stop["signal"]:
                    stopped = "interrupted"
                elif stop_after is not None and it >= stop_after:
                    stopped = "stop_after"
                if stopped != "finished" or it >= total or step_in_epoch >= per_epoch:
                    break
                if every_s > 0 and time.monotonic() - saved_at >= every_s:
                    save()
                    saved_at = time.monotonic()
            if step_in_epoch >= per_epoch:
                epoch, step_in_epoch = epoch + 1, 0
                if every_s == 0 and it < total:
                    save()
        save()
    finally:
        bar.close()
        for s, h in old.items():
            signal.signal(s, h)
        writer.wait()
    last = rows[-1]["loss"] if rows else float("nan")
    how = "" if stopped == "finished" else f"; stopped: {stopped}, resume with `smaformer pretrain --resume {run_dir}`"
    log(f"run folder: {run_dir}  (latest.pt: the encoder for model.pretrained){how}")
    return PretrainResult(run_dir, it, last, stopped)
