"""The training loop: AMP, gradient accumulation and clipping, per-iteration schedules, volume-level
validation, self-describing checkpoints, exact (mid-epoch) resume and DDP through torchrun.

``train(cfg)`` is the API; ``smaformer train`` only parses arguments and calls it. A run folder holds
``config.yaml``, ``latest.pt`` (full training state: at the first epoch end ``save_every_s`` after the last
save, at the end, every ``save_every_iters`` steps if set, and on SIGINT/SIGTERM; written by a background
thread), ``best.pt`` (best mean validation Dice), ``train_log.csv``, ``curves.png``, ``validation/`` (a run
with validation cases: ``train.crossval``) and ``splits.json`` (a cross-validation fold). Resuming restores
model, optimizer, scheduler, scaler, the epoch and the step inside it, the per-rank RNG states and the log
history, so on CPU in deterministic mode a resumed run ends with bit-identical weights. The step makes no
host sync (``train.meter``): the loss is read every ``log_every`` steps, at the epoch end and before a save.
"""
from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from smaformer.checkpoint import build_checkpoint, read_checkpoint
from smaformer.compiled import maybe_compile
from smaformer.config import check_config, dump_config
from smaformer.errors import InputError
from smaformer.models import create_model
from smaformer.models.layers.axial import set_gates_trainable
from smaformer.runtime import autocast, enable_deterministic, resolve_device, resolve_precision
from smaformer.train import distributed as dd
from smaformer.train.crossval import final_validation
from smaformer.train.data import TrainData, build_data, build_loader, checked_fingerprint, validation_dice
from smaformer.train.distill import build_objective
from smaformer.train.folds import write_splits
from smaformer.train.meter import DeviceLoss, memory_format
from smaformer.train.rundir import check_out_folder, new_run_dir, open_run_dir
from smaformer.train.runlog import TensorBoard, plot_curves, progress, write_csv
from smaformer.train.sampling import ResumableSampler, capture_rng, restore_rng, seed_everything
from smaformer.train.saver import BackgroundWriter, cpu_snapshot
from smaformer.train.schedule import IterScheduler, build_optimizer


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    iterations: int
    best_dice: float
    last_dice: float
    stopped: str     # "finished" | "early_stop" | "time_limit" | "stop_after" | "interrupted"
    history: list[dict] = field(default_factory=list)
    signal: int = 0  # SIGINT/SIGTERM that interrupted the run (after latest.pt was saved), else 0


class Trainer:
    """One training run; see the module docstring. Build it, then call ``fit``."""

    def __init__(self, cfg: dict | None, run_dir: Path | None = None, resume: Path | None = None,
                 data: TrainData | None = None, progress_bar: bool = True, log=print):
        state = None
        if resume is not None:
            state = read_checkpoint(Path(resume) / "latest.pt")
            cfg, run_dir = state["config"], Path(resume)
            check_config(cfg)
        t = cfg["train"]
        self.device = resolve_device(t["device"])
        if t["deterministic"]:        # before CUDA starts: cuBLAS reads its workspace setting then
            enable_deterministic(self.device)
        self.dist = dd.init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.precision = resolve_precision(t["precision"], self.device, training=True)
        self.log = log if self.dist.main else (lambda *a, **k: None)
        self.show_bar = progress_bar and self.dist.main
        self.cfg = cfg
        self._fresh_dir = run_dir is None      # a stamped name, claimed when fit() starts
        if run_dir is not None and resume is None:
            check_out_folder(Path(run_dir))
        self.run_dir = Path(run_dir) if run_dir is not None else new_run_dir(cfg, self.dist)
        if not t["deterministic"] and self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        seed = int(t["seed"])
        seed_everything(seed)
        self.data = data or build_data(cfg)
        self.classes = list(self.data.classes)
        cfg["model"]["kwargs"]["num_classes"] = len(self.classes)
        try:
            self.model = create_model(cfg["model"]["name"], **cfg["model"]["kwargs"])
        except (ValueError, TypeError) as e:
            raise InputError(None, f"model {cfg['model']['name']!r} {cfg['model']['kwargs']}: {e}") from None
        if cfg["model"].get("pretrained") and state is None:
            from smaformer.weights import load_pretrained
            self.log(str(load_pretrained(self.model, cfg["model"]["pretrained"])))
        self.memory_format = memory_format(self.model, cfg, self.device)
        self.model.to(self.device, memory_format=self.memory_format)
        self.net = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # frozen MedT gates get no gradient for a while: DDP must not wait for them
            self.net = DistributedDataParallel(self.model, device_ids=ids,
                                               find_unused_parameters=bool(t["freeze_gates_epochs"]))
        # compiled forward passes for training (through DDP) and validation; checkpoints use self.model
        self.train_net = maybe_compile(self.net, bool(t["compile"]), self.log, t["compile_backend"], record=t)
        self.eval_net = maybe_compile(self.model, bool(t["compile"]), self.log, t["compile_backend"])
        seed_everything(seed + self.dist.rank)     # dropout/drop-path streams differ per rank
        self.objective = build_objective(cfg, self.classes, self.data.preprocessing, self.device)
        self.optimizer = build_optimizer(cfg, self.model, self.device)
        self.batch, self.accum = int(t["batch_size"]), int(t["accum_steps"])
        self.sampler = ResumableSampler(len(self.data.train), seed=seed, rank=self.dist.rank,
                                        world_size=self.dist.world_size)
        self.steps_per_epoch = (self.sampler.per_rank // self.batch) // self.accum
        if self.steps_per_epoch < 1:
            raise InputError(None, f"{len(self.data.train)} training slices give no full step of batch_size "
                                   f"{self.batch} x accum_steps {self.accum} x {self.dist.world_size} rank(s)")
        self.total_steps = int(t["epochs"]) * self.steps_per_epoch
        if t["max_iterations"]:
            self.total_steps = min(self.total_steps, int(t["max_iterations"]))
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.scheduler = IterScheduler(self.optimizer, cfg, self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.epoch = self.step_in_epoch = self.iteration = 0
        self.loss_sum, self.loss_count, self.elapsed = 0.0, 0, 0.0
        self.device_loss = DeviceLoss(self.device)
        self._read_at = -1              # the iteration of the last read_loss (its value is current)
        self.writer = BackgroundWriter()
        self._saved_at = time.monotonic()
        self.best, self.bad_vals, self.history = -1.0, 0, []
        self._dl: DataLoader | None = None
        self.tb: TensorBoard | None = None
        self._stop_signal = 0          # the number of the SIGINT/SIGTERM that asked the run to stop
        self._time_up = False
        self._plotted = 0.0
        self.fingerprint: dict | None = None     # the training set's, computed when fit starts
        if state is not None:
            self._load_state(state)

    # ---- checkpoint state -------------------------------------------------------------------------
    def _train_state(self, rng: list) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "iteration": self.iteration,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng, "world_size": self.dist.world_size,
                "loss_sum": self.loss_sum, "loss_count": self.loss_count, "elapsed": self.elapsed,
                "best_dice": self.best, "bad_validations": self.bad_vals, "history": self.history}

    def _load_state(self, ckpt: dict) -> None:
        st = ckpt["train_state"]
        if st.get("world_size", 1) != self.dist.world_size:
            raise InputError(self.run_dir, f"run was trained on {st['world_size']} process(es); resume it with "
                                           f"the same number (got {self.dist.world_size})")
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        self.epoch, self.step_in_epoch, self.iteration = st["epoch"], st["step_in_epoch"], st["iteration"]
        self.loss_sum, self.loss_count, self.elapsed = st["loss_sum"], st["loss_count"], st["elapsed"]
        self.best, self.bad_vals, self.history = st["best_dice"], st["bad_validations"], list(st["history"])
        restore_rng(st["rng"][self.dist.rank])
        self.fingerprint = ckpt.get("fingerprint")
        self.device_loss.reset(self.loss_sum)

    def read_loss(self) -> None:
        """Bring the device-side loss sum to ``loss_sum`` (a host sync, once per iteration at most); stop on
        a non-finite loss."""
        if self._read_at != self.iteration:
            self.loss_sum, self._read_at = self.device_loss.read(), self.iteration

    def save(self, best: bool = False, metrics: dict | None = None, latest: bool = True) -> None:
        """latest.pt (and/or best.pt) from a CPU snapshot, written by a background thread; collective in DDP
        because every rank's RNG state is stored."""
        self.read_loss()
        rng = dd.gather_objects(capture_rng(), self.dist)
        if not self.dist.main:
            return
        splits = self.data.splits.record() if self.data.splits is not None else None
        ckpt = build_checkpoint(self.model, self.classes, self.data.preprocessing, self.cfg,
                                None, metrics, splits=splits, fingerprint=self.fingerprint)
        ckpt["config"] = cpu_snapshot(ckpt["config"])
        jobs = []
        if latest:
            jobs.append(({**ckpt, "train_state": cpu_snapshot(self._train_state(rng))}, self.run_dir / "latest.pt"))
            self._saved_at = time.monotonic()
        if best:
            jobs.append(({**ckpt, "train_state": {"epoch": self.epoch, "iteration": self.iteration}},
                         self.run_dir / "best.pt"))
        self.writer.submit(jobs)

    # ---- loop ---------------------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        """The loader, positioned at the current epoch and step. Built once: workers persist across epochs
        (and keep their volume caches); the sampler, read in this process, is repositioned each time."""
        self.sampler.set_epoch(self.epoch, self.step_in_epoch * self.accum * self.batch)
        if self._dl is None:
            self._dl = build_loader(self.data.train, self.sampler, self.batch, int(self.cfg["data"]["num_workers"]),
                                    int(self.cfg["train"]["seed"]), self.dist.rank, self.device)
        return self._dl

    def _step(self, micro: list[dict]) -> None:
        """One optimizer step over ``accum`` micro-batches. No host sync: the mean loss is added to the
        device-side sum, and the first non-finite one is recorded there with its iteration."""
        total = torch.zeros((), dtype=self.device_loss.dtype, device=self.device)
        for i, batch in enumerate(micro):
            x = batch["image"].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            y = batch["label"].to(self.device, non_blocking=True)
            sync = i == len(micro) - 1 or not self.dist.enabled
            with (contextlib.nullcontext() if sync else self.net.no_sync()), autocast(self.precision, self.device):
                loss = self.objective(self.train_net, x, y, self.iteration) / len(micro)
            self.scaler.scale(loss).backward()
            total += loss.detach()
        self.device_loss.add(total, self.iteration)
        clip = self.cfg["train"]["grad_clip"]
        if clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def _validate(self) -> np.ndarray:
        t = self.cfg["train"]
        return validation_dice(self.eval_net, self.data.val, self.data.preprocessing, len(self.classes),
                                device=self.device, precision=self.precision,
                                batch_size=int(t["val_batch_size"]), dist=self.dist)

    def _end_epoch(self, epoch_s: float) -> bool:
        """Reduce the loss, validate, log, checkpoint when due; True when early stopping triggers."""
        t = self.cfg["train"]
        self.read_loss()
        agg = [self.loss_sum, float(self.loss_count)]
        if self.dist.enabled:
            agg = dd.all_reduce_sum(torch.tensor(agg, dtype=torch.float64), self.dist).tolist()
        row = {"epoch": self.epoch + 1, "iterations": self.iteration, "lr": self.scheduler.get_last_lr()[0],
               "train_loss": agg[0] / max(agg[1], 1)}
        every, last = int(t["val_every"]), self.iteration >= self.total_steps or self._time_up
        dice = np.full(len(self.classes) - 1, np.nan)
        v0 = time.perf_counter()
        if self.data.val and every > 0 and ((self.epoch + 1) % every == 0 or last):
            dice = self._validate()
        val_s = time.perf_counter() - v0
        self.elapsed += val_s
        row["epoch_s"] = round(epoch_s + val_s, 2)
        mean = float(np.nanmean(dice)) if not np.isnan(dice).all() else math.nan
        row.update({f"dice_{c}": float(v) for c, v in zip(self.classes[1:], dice, strict=True)})
        row["mean_dice"] = mean
        row["elapsed_s"] = round(self.elapsed, 2)
        self.history.append(row)
        improved = not math.isnan(mean) and mean > self.best
        if improved:
            self.best, self.bad_vals = mean, 0
        elif not math.isnan(mean):
            self.bad_vals += 1
        self.epoch, self.step_in_epoch, self.loss_sum, self.loss_count = self.epoch + 1, 0, 0.0, 0
        self.device_loss.reset()
        metrics = {"val_dice": dict(zip(self.classes[1:], map(float, dice), strict=True)), "mean_dice": mean,
                   "epoch": self.epoch, "iteration": self.iteration}
        patience = t["early_stop_patience"]
        early = dd.broadcast_flag(bool(patience) and self.bad_vals >= int(patience), self.dist)
        due = dd.broadcast_flag(time.monotonic() - self._saved_at >= float(t["save_every_s"]), self.dist)
        if last or early or due or improved:
            self.save(best=improved, metrics=metrics, latest=last or early or due)
        if self.dist.main:
            write_csv(self.history, self.run_dir / "train_log.csv", self.classes)
            if not math.isnan(mean) or last or time.monotonic() - self._plotted > 60:   # plotting costs ~1 s
                plot_curves(self.history, self.run_dir / "curves.png", self.classes)
                self._plotted = time.monotonic()
            self.tb.scalars(row, self.iteration)
            val = "" if math.isnan(mean) else f"  val Dice {mean:.4f}{' (best)' if improved else ''}"
            self.log(f"epoch {self.epoch}/{self.epochs}  it {self.iteration}  loss {row['train_loss']:.4f}  "
                     f"lr {row['lr']:.2e}{val}  {row['epoch_s']:.1f}s")
        return early

    def _install_signals(self) -> dict:
        def handler(signum, frame):
            self._stop_signal = signum

        old = {}
        with contextlib.suppress(ValueError):      # not in the main thread: no handlers
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, handler)
        return old

    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train to the end (or to ``stop_after`` optimizer steps, saving latest.pt there)."""
        t = self.cfg["train"]
        self.log(f"device {self.device}, precision {self.precision} (train.precision {t['precision']})")
        if self.fingerprint is None:       # labels checked before the run folder is written
            self.fingerprint = checked_fingerprint(self.data, self.dist, self.log)
        self.run_dir, self._fresh_dir = open_run_dir(self.run_dir, self._fresh_dir, self.dist), False
        if self.dist.main:
            dump_config(self.cfg, self.run_dir / "config.yaml")
            if self.data.splits is not None:
                write_splits(self.data.splits.splits, self.run_dir / "splits.json")
        self.tb = TensorBoard(self.run_dir, bool(t["tensorboard"]) and self.dist.main, self.log)
        self._plotted = time.monotonic()
        old = self._install_signals()
        stopped, save_every = "finished", int(t["save_every_iters"] or 0)
        freeze, log_every = int(t["freeze_gates_epochs"] or 0), int(t["log_every"])
        limit, run_t0, self._time_up = t["time_limit_s"], time.perf_counter(), False
        bar = progress(self.total_steps, self.iteration, self.show_bar, self.log)
        try:
            while self.iteration < self.total_steps and stopped == "finished":
                if freeze:     # MedT recipe: gates of gated axial attention train only after `freeze` epochs
                    set_gates_trainable(self.model, self.epoch >= freeze)
                self.train_net.train()
                epoch_t0 = last_t = read_t = time.perf_counter()
                micro, steps_left, read_it = [], self.steps_per_epoch - self.step_in_epoch, self.iteration
                images_per_step = self.batch * self.accum * self.dist.world_size
                for batch in self._loader():
                    micro.append(batch)
                    if len(micro) < self.accum:
                        continue
                    self._step(micro)
                    micro = []
                    self.iteration += 1
                    self.step_in_epoch += 1
                    self.loss_count += 1
                    steps_left -= 1
                    now = time.perf_counter()
                    self.elapsed, last_t = self.elapsed + now - last_t, now
                    bar.update(1)
                    # the log cadence: read the loss (the host sync), and in DDP agree on signals and time
                    poll = self.iteration % log_every == 0
                    if poll:
                        self.read_loss()
                        img_s = images_per_step * (self.iteration - read_it) / max(now - read_t, 1e-9)
                        bar.set_postfix(loss=f"{self.loss_sum / self.loss_count:.4f}",
                                        lr=f"{self.scheduler.get_last_lr()[0]:.2e}", img_s=f"{img_s:.1f}")
                        read_it, read_t = self.iteration, now
                    if poll or not self.dist.enabled or steps_left == 0:
                        if dd.broadcast_flag(bool(self._stop_signal), self.dist):
                            stopped = "interrupted"
                        self._time_up = bool(limit) and dd.broadcast_flag(now - run_t0 > float(limit), self.dist)
                    if stopped == "finished" and stop_after is not None and self.iteration >= stop_after:
                        stopped = "stop_after"
                    if stopped != "finished" or (save_every and self.iteration % save_every == 0):
                        self.save()
                    if stopped != "finished" or steps_left == 0 or self.iteration >= self.total_steps \
                            or self._time_up:
                        break
                if stopped == "finished" and self._end_epoch(time.perf_counter() - epoch_t0):
                    stopped = "early_stop"
                    self.log(f"early stopping: no improvement in {t['early_stop_patience']} validations")
                if stopped == "finished" and self._time_up:
                    stopped = "time_limit"
                    self.log(f"time limit of {limit} s reached at iteration {self.iteration}")
        finally:
            bar.close()
            self.tb.close()
            for sig, h in old.items():
                signal.signal(sig, h)
            self.writer.wait()        # the last checkpoint is on disk before anything reads it or we exit
        last = self.history[-1]["mean_dice"] if self.history else math.nan
        if stopped not in ("interrupted", "stop_after") and self.dist.main:   # <run>/validation/, post-processing
            final_validation(self.data, self.run_dir, device=self.device, batch_size=int(t["val_batch_size"]),
                             iteration=self.iteration, validate_best=bool(t["validate_best"]),
                             log=self.log)
        if self.dist.main:
            self.log(f"run folder: {self.run_dir}" + (f"  (stopped: {stopped}; resume with "
                                                      f"`smaformer train --resume {self.run_dir}`)"
                                                      if stopped in ("interrupted", "stop_after") else ""))
        return TrainResult(self.run_dir, self.epoch, self.iteration, self.best, last, stopped, list(self.history),
                           int(self._stop_signal) if stopped == "interrupted" else 0)


@contextlib.contextmanager
def trainer_session(cfg: dict | None, *, run_dir: str | Path | None = None, resume: str | Path | None = None,
                    data: TrainData | None = None, progress_bar: bool = True, log=print) -> Iterator[Trainer]:
    """A ``Trainer`` whose global side effects end with the block: the process group it joined is left and
    the deterministic-algorithms switch is put back as it was (also when building the Trainer fails)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    trainer = None
    try:
        trainer = Trainer(cfg, run_dir=None if run_dir is None else Path(run_dir),
                          resume=None if resume is None else Path(resume), data=data,
                          progress_bar=progress_bar, log=log)
        yield trainer
    finally:
        if trainer is not None:       # DDP's reducer goes first, while the group lives (see dd.leave)
            trainer.net = trainer.train_net = trainer.model
        dd.leave()
        torch.use_deterministic_algorithms(deterministic)


def train(cfg: dict | None, *, run_dir: str | Path | None = None, resume: str | Path | None = None,
          stop_after: int | None = None, data: TrainData | None = None, progress_bar: bool = True,
          log=print) -> TrainResult:
    """Train from a resolved config (``smaformer.config.load_config``), or resume a run folder."""
    with trainer_session(cfg, run_dir=run_dir, resume=resume, data=data, progress_bar=progress_bar,
                         log=log) as trainer:
        return trainer.fit(stop_after=stop_after)
