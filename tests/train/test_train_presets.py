"""Every preset parses, builds its (full-size) model, and, where its data is present, its data (dry run)."""
from pathlib import Path

import pytest

from smaformer.cli import main
from smaformer.config import load_config
from smaformer.models import create_model

# classes each preset's layout provides (the data section is the source of num_classes)
PRESETS = {"synapse_swin_unet": 9, "synapse_smaformer": 9, "acdc_swin_unet": 4, "acdc_smaformer": 4,
           "lits2017_smaformer": 3, "medt_drive": 2, "glas_medt": 2, "synapse_transunet": 9, "acdc_transunet": 4,
           "synapse_hbformer": 9, "acdc_hbformer": 4}
SHARED_DATA = {"acdc_swin_unet": "acdc", "medt_drive": "drive", "acdc_transunet": "acdc", "acdc_hbformer": "acdc"}


def _model_groups() -> dict[str, list[str]]:
    """Presets grouped by the model they build (full-size models are slow to build; build each once)."""
    groups: dict[str, list[str]] = {}
    for name in sorted(PRESETS):
        m = load_config(name)["model"]
        kw = {k: v for k, v in m["kwargs"].items() if k != "num_classes"}
        groups.setdefault(f"{m['name']}-{sorted(kw.items())}", []).append(name)
    return groups


@pytest.mark.parametrize("names", list(_model_groups().values()), ids=lambda names: "+".join(names))
def test_preset_builds_model(names):
    for name in names:
        assert load_config(name)["model"]["kwargs"]["img_size"] in (128, 224, 256)
    cfg = load_config(names[0])
    model = create_model(cfg["model"]["name"], **{**cfg["model"]["kwargs"], "num_classes": PRESETS[names[0]]})
    assert sum(p.numel() for p in model.parameters()) > 1e6


@pytest.mark.parametrize("name", sorted(SHARED_DATA))
def test_preset_dry_run_on_shared_data(name, data_dir, capsys):
    root = Path(data_dir) / SHARED_DATA[name]
    if not root.exists():
        pytest.skip(f"{root} is absent")
    rc = main(["train", "--config", name, "--dry-run", "--set", f"data.root={root}", "--set", "data.num_workers=0"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "training slices" in out and "validation cases" in out and "iterations" in out
    if name.startswith("acdc_"):
        assert "1312 training slices, 20 validation cases" in out
    else:
        assert "16 training slices, 4 validation cases" in out      # 4 of 20 DRIVE images held out


@pytest.mark.parametrize("name", ["synapse_swin_unet", "lits2017_smaformer", "glas_medt"])
def test_preset_without_data_fails_with_one_line(name, tmp_path, capsys):
    rc = main(["train", "--config", name, "--dry-run", "--set", f"data.root={tmp_path / 'absent'}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "absent" in err and len(err.strip().splitlines()) == 1
