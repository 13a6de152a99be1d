"""Checkpoints load with weights_only=True only: a pickle that would run code is refused, nothing runs."""
import pickle
from pathlib import Path

import pytest
import torch
from tiny_models import nifti_cases

from smaformer.checkpoint import load_checkpoint, read_checkpoint, save_safetensors_pair
from smaformer.cli import main
from smaformer.errors import CheckpointError
from smaformer.weights.official import read_state_dict


class _Payload:
    """Unpickling this calls Path.touch(marker): the side effect a malicious checkpoint would have."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture(params=["zip", "legacy"])
def malicious(tmp_path, request):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    obj = {"format": "smaformer-checkpoint", "state_dict": {}, "hook": _Payload(marker)}
    if request.param == "zip":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    assert not marker.exists()
    return path, marker


def test_read_checkpoint_refuses_code(malicious):
    path, marker = malicious
    with pytest.raises(CheckpointError, match="refused|pickle|not a readable"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        read_state_dict(path)
    assert not marker.exists(), "unpickling executed code"


@pytest.mark.parametrize("command", ["info", "predict", "export"])
def test_cli_prints_one_line_and_runs_nothing(malicious, command, tmp_path, capsys):
    path, marker = malicious
    argv = {"info": ["info", str(path)],
            "predict": ["predict", "-i", str(nifti_cases(tmp_path / "in", ("a",), (8, 8, 2))), "-o",
                        str(tmp_path / "o"), "-c", str(path), "--quiet"],
            "export": ["export", "--format", "onnx", "-c", str(path), "-o", str(tmp_path / "m.onnx")]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(path) in err and len(err.splitlines()) == 1
    assert not marker.exists()


def test_refusal_names_the_reason(malicious):
    path, _ = malicious
    with pytest.raises(CheckpointError, match="refused: the file needs pickle code.*Unsupported global"):
        read_checkpoint(path)


def test_payload_is_live_when_unpickled_unsafely(malicious):
    """Control: the same file *does* run code without weights_only, so the tests above can fail."""
    path, marker = malicious
    if path.read_bytes().startswith(b"PK"):
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as f:
            pickle.load(f)
    assert marker.exists()


def test_safetensors_pair_mismatch_is_refused(tmp_path):
    ckpt = {"model": {"name": "unet", "kwargs": {}}, "classes": ["bg"], "preprocessing": {}, "config": {},
            "metrics": {}, "state_dict": {"w": torch.ones(2)}}
    weights, side = save_safetensors_pair(ckpt, tmp_path / "m.safetensors")
    other, _ = save_safetensors_pair({**ckpt, "state_dict": {"w": torch.zeros(2)}}, tmp_path / "o.safetensors")
    weights.write_bytes(other.read_bytes())
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(weights)
    side.unlink()
    with pytest.raises(CheckpointError, match="sidecar not found"):
        load_checkpoint(weights)
