"""Run folders: a new run claims a folder of its own, and ``train --out`` never lands on an earlier run."""
from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path

from smaformer.errors import InputError, first_line
from smaformer.io_utils import check_output
from smaformer.train import distributed as dd


def new_run_dir(cfg: dict, dist: dd.Dist) -> Path:
    """``<out_dir>/<name>[-fold<K>]-<timestamp>`` as rank 0 names it; ``claim_run_dir`` makes it unique."""
    fold = cfg["data"].get("fold")
    name = cfg["name"] + ("" if fold is None else f"-fold{fold}")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = check_output(cfg["train"]["out_dir"], folder=True, what="train.out_dir")
    return Path(dd.gather_objects(str(out_dir / f"{name}-{stamp}"), dist)[0])


def claim_run_dir(path: Path) -> Path:
    """Create a new run folder at ``path``, or at ``path-2``, ``path-3``... when another run (a fold launched
    beside this one) took the name first: two runs never share a folder."""
    for n in itertools.count(1):
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
        except OSError as e:
            raise InputError(candidate, f"cannot create the run folder ({first_line(e)})") from None
    raise AssertionError("unreachable")


def open_run_dir(path: Path, fresh: bool, dist: dd.Dist) -> Path:
    """The run folder every rank writes to: claimed (``fresh``) or created by rank 0, then shared."""
    if dist.main:
        if fresh:
            path = claim_run_dir(path)
        else:
            path.mkdir(parents=True, exist_ok=True)
    return Path(dd.gather_objects(str(path), dist)[0])


def check_out_folder(run_dir: Path) -> None:
    """``train --out``: a folder that can be written and holds no run, which only ``--resume`` continues."""
    check_output(run_dir, folder=True, what="run folder")
    held = [n for n in ("latest.pt", "best.pt") if (run_dir / n).exists()]
    if held:
        raise InputError(run_dir, f"holds a run ({held[0]}); continue it with `smaformer train --resume "
                                  f"{run_dir}`, or choose another --out (nothing was written)")
