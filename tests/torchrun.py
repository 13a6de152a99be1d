"""``torchrun`` for tests: two CPU processes, a timeout that stops the launcher and its workers (a hung run
leaves no orphans behind), and the output's tail when it fails."""
from __future__ import annotations

import os
import subprocess
import sys

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def torchrun_env() -> dict[str, str]:
    """This environment without torchrun's variables (a test may run under one), one thread per worker."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def stop(proc: subprocess.Popen) -> tuple[str, str]:
    """Stop a torchrun launcher and its workers: SIGTERM, which the launcher passes on to the workers (each in
    a session of its own, so killing the launcher alone would leave them waiting for its store), SIGKILL
    after 60 s; returns the output so far."""
    proc.terminate()
    try:
        return proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 -m smaformer ARGS``; fails the test unless it exits 0."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "smaformer",
           *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=torchrun_env())
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err = stop(proc)
        raise AssertionError(f"torchrun timed out after {timeout} s:\n{out[-2000:]}{err[-3000:]}") from None
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
