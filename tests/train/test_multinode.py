"""DDP over two "nodes" on one host: two ``torchrun --nnodes=2`` launchers meet through a c10d rendezvous on
localhost (gloo, CPU), as two machines would through the first one's address (docs/TRAINING.md)."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import yaml
from torchrun import stop, torchrun_env

from smaformer.checkpoint import read_checkpoint

TINY = {
    "name": "tiny",
    "model": {"name": "unet", "kwargs": {"base": 4, "depth": 2}},
    "data": {"layout": "synthetic", "img_size": 32, "classes": ["background", "organ1", "organ2"],
             "intensity": {"mode": "window", "lo": -125, "hi": 275}, "augment": True, "num_workers": 0,
             "synthetic": {"train_volumes": 2, "val_volumes": 1, "shape": [4, 32, 32], "seed": 0}},
    "train": {"epochs": 2, "batch_size": 2, "val_every": 1, "deterministic": True, "tensorboard": False,
              "device": "cpu"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_one_host(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    out = tmp_path / "run"
    endpoint = f"localhost:{_free_port()}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
           "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", "--rdzv_id=test-two-nodes",
           "-m", "smaformer", "train", "--no-progress", "--config", str(cfg), "--out", str(out)]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=torchrun_env())
             for _ in range(2)]
    logs = []
    try:
        for p in nodes:
            logs.append(p.communicate(timeout=240)[0])
    finally:
        for p in nodes:
            if p.poll() is None:      # the launcher and its worker: no orphan survives a hung run
                stop(p)
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(x[-2000:] for x in logs)
    st = read_checkpoint(out / "latest.pt")["train_state"]
    # 8 slices over 2 ranks, batch 2 -> 2 steps per epoch, 2 epochs
    assert (st["iteration"], st["epoch"], st["world_size"]) == (4, 2, 2)
    assert "".join(logs).count("done:") == 1          # the global rank 0 logs, on one of the two nodes
