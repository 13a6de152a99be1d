"""``smaformer demo``, short version: the whole pipeline runs and the run folder holds everything it lists."""
import json

import torch

from smaformer.checkpoint import load_checkpoint
from smaformer.cli import main


def test_demo_quick_run(tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "demo"
    try:
        rc = main(["demo", "--iterations", "12", "--threads", "1", "--test-volumes", "1", "--out", str(out),
                   "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert rc == 0
    for name in ("config.yaml", "latest.pt", "best.pt", "train_log.csv", "curves.png", "evaluation/metrics.json",
                 "evaluation/summary.csv", "evaluation/report.html"):
        assert (out / name).is_file(), name
        assert str(out / name) in printed or name in ("config.yaml", "latest.pt", "evaluation/summary.csv")
    assert list((out / "evaluation" / "overlays").glob("*.png"))
    assert "held-out phantom Dice" in printed
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["data"]["n_cases"] == 1 and metrics["data"]["n_failed"] == 0
    assert metrics["data"]["split"] == "held-out"         # not "train": these phantoms were never trained on
    assert "split <code>held-out</code>" in (out / "evaluation" / "report.html").read_text(encoding="utf-8")
    model, info = load_checkpoint(out / "best.pt")
    assert info["model"]["name"] in ("smaformer", "swin_unet") and len(info["classes"]) == 5
    assert info["preprocessing"]["intensity"]["mode"] == "window"
