"""Training configuration: YAML presets, ``--set key=value`` overrides, defaults and validation.

A config is a plain nested dict (so it can be written into run folders and checkpoints as it is). Presets
live in ``configs/<name>.yaml``; ``load_config`` accepts a preset name or a path, merges it over
``DEFAULTS`` and applies dotted overrides whose values are parsed as YAML (numbers, bools, lists, null).
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from smaformer.errors import InputError, did_you_mean
from smaformer.io_utils import write_text
from smaformer.runtime import PRECISIONS

PRESET_DIRS = (Path(__file__).resolve().parents[1] / "configs", Path.cwd() / "configs")

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "model": {"name": "swin_unet", "kwargs": {}, "pretrained": None},
    "data": {
        "layout": "synthetic",      # synthetic | any layout smaformer.data.open_dataset knows
        "root": None,
        "train_split": "train",
        "val_split": "val",          # null: no validation (no best.pt; latest.pt is the result)
        "test_split": "test",        # only its case names are listed, to refuse val/test overlap
        "val_cases": None,           # optional: hold these training cases out as the validation set
        "fold": None,                # cross-validation: fold K of the training split validates (null: no CV)
        "folds": 5,                  # number of folds made from train.seed (grouped by patient)
        "splits_file": None,         # or the folds from this nnU-Net-style splits.json
        "classes": None,             # class names; default: the reader's, else class0..classK-1
        "img_size": [224, 224],
        "in_chans": 3,
        "channel_mode": "repeat",    # repeat | pseudo_hdr | none
        "intensity": {"mode": "none"},
        "augment": True,
        "patches": "resize",         # resize: whole slices to img_size | crop: img_size crops at native resolution
        "num_workers": 2,
        "synthetic": {"train_volumes": 8, "val_volumes": 2, "shape": [24, 96, 96], "seed": 0},
    },
    "optim": {"name": "adamw", "lr": 3.0e-4, "weight_decay": 1.0e-4, "momentum": 0.9, "betas": [0.9, 0.999],
              "lr_batch_reference": None},   # lr is scaled by batch_size / lr_batch_reference when set
    "schedule": {"name": "cosine", "warmup_iters": 0, "warmup_start_factor": 0.001, "min_lr": 0.0, "power": 0.9},
    "loss": {"ce": 0.5, "dice": 0.5, "focal": 0.0, "ohem_ratio": None, "focal_gamma": 2.0,
             "dice_squared": True, "dice_include_background": True, "dice_smooth": 1.0e-5,
             "class_weights": None},
    "train": {
        "epochs": 10,
        "batch_size": 8,
        "max_iterations": None,      # caps the run (and the schedule) at this many optimizer steps
        "accum_steps": 1,
        "grad_clip": None,
        "precision": "auto",         # auto (bf16 on CUDA if supported, else fp16; fp32 on CPU) | fp32 | bf16 | fp16
        "channels_last": None,       # null: on for unet (and on CUDA for transunet, hbformer)
        "compile": False,            # torch.compile the model for training and validation (falls back to eager)
        "compile_backend": "inductor",  # torch.compile backend (aot_eager: tracing only, no C++/Triton code)
        "compile_ran": None,         # filled by training: "eager", "compiled", or "eager (torch.compile failed: ...)"
        "log_every": 50,             # steps between reads of the loss (the step loop's only host sync)
        "val_every": 1,              # epochs; 0 disables validation
        "val_batch_size": 16,
        "validate_best": True,       # the end-of-run validation also scores best.pt beside the final weights
        "save_every_s": 300,         # latest.pt at the first epoch end this long after the last save
        "save_every_iters": None,    # also mid-epoch every this many steps (for very long epochs)
        "early_stop_patience": None,  # validations without improvement before stopping
        "time_limit_s": None,        # stop (validate, checkpoint) at the first step after this many seconds
        "freeze_gates_epochs": 0,    # MedT: keep the gates of gated axial attention frozen this long
        "seed": 1234,
        "deterministic": False,
        "device": "auto",
        "out_dir": "runs",
        "tensorboard": True,
    },
    # learning from a teacher (smaformer train --teacher; smaformer.train.distill): off while teachers is empty
    "distill": {
        "teachers": [],              # smaformer checkpoints; several are averaged (softmax) as an ensemble
        "weight": 0.5,               # a: loss = (1 - a) * supervised + a * distillation terms
        "ramp_iters": 0,             # a rises linearly from 0 over this many steps (0: from the start)
        "soft": 1.0,                 # weight of T^2 * KL(teacher_T || student_T) per pixel
        "hard": 0.0,                 # weight of the supervised loss on the teacher's argmax (DeiT's hard label)
        "dice": 0.0,                 # weight of a soft Dice against the teacher's probabilities
        "temperature": 2.0,
        "balanced": False,           # average the KL within each teacher class, then over classes
        "teacher_sha256": [],        # filled by training: a resumed run must find the same teacher files
    },
    # self-pretraining (smaformer pretrain; smaformer.train.pretrain): SimMIM on the encoder, no labels
    "pretrain": {
        "mask_ratio": 0.6,           # share of the mask squares hidden in each image (SimMIM: 0.6)
        "mask_patch": 32,            # side of a mask square in pixels (SimMIM: 32)
        "images": None,              # a folder of unlabelled scans instead of the training split's images
    },
}



class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
    r"|\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))


def parse_value(text: str) -> Any:
    """Parse an override value as YAML: ``3``, ``1e-4``, ``true``, ``[0.2,0.4,0.4]``, ``null``, ``abc``."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def merge(base: dict, over: dict) -> dict:
    """Deep-merge ``over`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def apply_override(cfg: dict, item: str) -> None:
    """Apply one ``a.b.c=value`` override in place."""
    if "=" not in item:
        raise InputError(None, f"override {item!r} is not key=value (e.g. --set train.epochs=5)")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    node = cfg
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            if p in node and node[p] is not None:
                raise InputError(None, f"override {key!r}: {p!r} is not a section")
            node[p] = {}
        node = node[p]
    node[parts[-1]] = parse_value(text)


def find_preset(name_or_path: str | Path) -> Path:
    """Resolve a preset name (``synapse_swin_unet``) or a YAML path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    for d in PRESET_DIRS:
        for cand in (d / f"{name_or_path}.yaml", d / str(name_or_path)):
            if cand.is_file():
                return cand
    raise InputError(name_or_path, f"no such config file or preset{did_you_mean(name_or_path, list_presets())}; "
                                   f"presets: {', '.join(list_presets())}")


def list_presets() -> list[str]:
    """Names of the YAML presets shipped in ``configs/``."""
    names = {f.stem for d in PRESET_DIRS if d.is_dir() for f in d.glob("*.yaml")}
    return sorted(names)


def load_config(name_or_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict | None = None) -> dict:
    """Defaults, then the preset (or ``base``), then the overrides; validated and with derived fields set."""
    cfg = copy.deepcopy(DEFAULTS)
    if name_or_path is not None:
        path = find_preset(name_or_path)
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
        except yaml.YAMLError as e:
            raise InputError(path, f"invalid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise InputError(path, "a config must be a mapping of sections")
        cfg = merge(cfg, data)
    if base is not None:
        cfg = merge(cfg, base)
    for item in overrides:
        apply_override(cfg, item)
    check_config(cfg)
    return cfg


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, (int, float)) else [int(s) for s in v]


_TYPES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}


def _check_types(cfg: dict, defaults: dict, where: str = "") -> None:
    """Every value whose default is not None has the default's type (an int where a float is expected is fine)."""
    for key, default in defaults.items():
        value, name = cfg.get(key), f"{where}{key}"
        if default is None or value is None or key not in cfg:
            continue
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise InputError(None, f"{name} must be a mapping, got {value!r}")
            if name not in ("model.kwargs", "data.intensity"):   # free-form: model arguments, intensity spec
                _check_types(value, default, name + ".")
            continue
        want = type(default)
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        ok = ok or (want is float and isinstance(value, int) and not isinstance(value, bool))
        ok = ok or (want is list and isinstance(value, int) and name == "data.img_size")
        if not ok:
            raise InputError(None, f"{name}={value!r}: expected {_TYPES.get(want, want.__name__)}")


def check_config(cfg: dict) -> None:
    """Check types and ranges; copy ``img_size``, ``in_chans`` and the class count into the model kwargs
    (the data section is the single source of truth for them)."""
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise InputError(None, f"unknown config sections {sorted(unknown)}; valid: {sorted(DEFAULTS)}")
    cfg.setdefault("distill", copy.deepcopy(DEFAULTS["distill"]))   # configs stored before the section existed
    cfg.setdefault("pretrain", copy.deepcopy(DEFAULTS["pretrain"]))
    for section in ("data", "optim", "schedule", "loss", "train", "distill", "pretrain"):
        for key in sorted(set(cfg[section]) - set(DEFAULTS[section])):
            raise InputError(None, f"unknown key {section}.{key}{did_you_mean(key, DEFAULTS[section])}; valid: "
                                   f"{', '.join(sorted(DEFAULTS[section]))}")
    _check_types(cfg, DEFAULTS)
    d, t, o, s, k = cfg["data"], cfg["train"], cfg["optim"], cfg["schedule"], cfg["distill"]
    terms = [float(k[n]) for n in ("soft", "hard", "dice")]
    d["img_size"] = _pair(d["img_size"])
    kw = cfg["model"].setdefault("kwargs", {})
    kw["img_size"] = d["img_size"][0] if d["img_size"][0] == d["img_size"][1] else list(d["img_size"])
    kw["in_chans"] = int(d["in_chans"])
    if d["classes"] is not None:
        kw["num_classes"] = len(d["classes"])
    checks = [
        (int(t["epochs"]) >= 1, "train.epochs must be >= 1"),
        (int(t["batch_size"]) >= 1, "train.batch_size must be >= 1"),
        (int(t["accum_steps"]) >= 1, "train.accum_steps must be >= 1"),
        (float(o["lr"]) > 0, "optim.lr must be > 0"),
        (o["name"] in ("sgd", "adam", "adamw"), f"optim.name {o['name']!r}: use sgd, adam or adamw"),
        (s["name"] in ("poly", "cosine", "constant"), f"schedule.name {s['name']!r}: use poly, cosine or constant"),
        (t["precision"] in ("auto", *PRECISIONS), f"train.precision {t['precision']!r}: "
                                                             "use auto, fp32, bf16 or fp16"),
        (t["channels_last"] in (None, True, False), f"train.channels_last={t['channels_last']!r}: use true, "
                                                     "false or null (on for the convolutional models)"),
        (int(t["log_every"]) >= 1, "train.log_every must be >= 1"),
        (float(t["save_every_s"]) >= 0, "train.save_every_s must be >= 0 (0: at every epoch end)"),
        (d["channel_mode"] in ("repeat", "pseudo_hdr", "none"), f"data.channel_mode {d['channel_mode']!r}"),
        (d["patches"] in ("resize", "crop"), f"data.patches {d['patches']!r}: use resize or crop"),
        (all(isinstance(p, str) for p in k["teachers"]), f"distill.teachers={k['teachers']!r}: expected paths"),
        (0 <= float(k["weight"]) <= 1, f"distill.weight={k['weight']}: expected 0..1"),
        (float(k["temperature"]) > 0, f"distill.temperature={k['temperature']}: expected > 0"),
        (min(terms) >= 0 and sum(terms) > 0, "distill.soft, hard and dice must be >= 0 with a positive sum"),
        (int(k["ramp_iters"]) >= 0, f"distill.ramp_iters={k['ramp_iters']}: expected >= 0"),
        (0 < float(cfg["pretrain"]["mask_ratio"]) < 1, "pretrain.mask_ratio must be between 0 and 1"),
        (int(cfg["pretrain"]["mask_patch"]) >= 1, "pretrain.mask_patch must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise InputError(None, msg)
    _check_fold(d)
    split_val, split_test = d.get("val_split"), d.get("test_split")
    if split_val is not None and split_val == split_test and d.get("val_cases") is None and d["fold"] is None:
        raise InputError(None, f"data.val_split and data.test_split are both {split_val!r}: the test split "
                               "must never be used for model selection")


def _check_fold(d: dict) -> None:
    """``data.fold`` / ``data.folds`` / ``data.splits_file``: cross-validation (the file's range is checked
    when it is read)."""
    fold, folds = d.get("fold"), d.get("folds")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise InputError(None, f"data.folds={folds!r}: expected an integer >= 2")
    if d.get("splits_file") is not None and not isinstance(d["splits_file"], str):
        raise InputError(None, f"data.splits_file={d['splits_file']!r}: expected a path")
    if fold is None:
        return
    if isinstance(fold, bool) or not isinstance(fold, int) or fold < 0:
        raise InputError(None, f"data.fold={fold!r}: expected a fold index 0, 1, ... (or null: no cross-validation)")
    if d.get("splits_file") is None and fold >= folds:
        raise InputError(None, f"data.fold={fold} is out of range for data.folds={folds} (use 0..{folds - 1})")
    if d.get("val_cases"):
        raise InputError(None, "data.fold and data.val_cases both choose the validation cases; set one of them")


def effective_lr(cfg: dict) -> float:
    """Base learning rate, scaled by ``batch_size / lr_batch_reference`` when the preset asks for it."""
    o = cfg["optim"]
    lr = float(o["lr"])
    if o.get("lr_batch_reference"):
        lr *= int(cfg["train"]["batch_size"]) / float(o["lr_batch_reference"])
    return lr


def dump_config(cfg: dict, path: str | Path) -> Path:
    """Write the resolved config as YAML."""
    return write_text(path, yaml.safe_dump(cfg, sort_keys=False))
