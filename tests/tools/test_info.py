"""``smaformer info``: params per part cover every parameter, FLOPs counted as 2 per MAC, the HTML page."""
import shutil
import subprocess

import pytest
import torch
import torch.nn as nn

from smaformer.checkpoint import build_checkpoint, default_preprocessing, save_checkpoint
from smaformer.cli import main
from smaformer.models import create_model, list_models
from smaformer.models.registry import tiny_kwargs
from smaformer.tools.archpage import trace_modules, write_arch_page
from smaformer.tools.info import count_flops, params_per_part, resolve


@pytest.mark.parametrize("name", list_models())
def test_parts_cover_every_parameter(name):
    model = create_model(name, **tiny_kwargs(name))
    rows = dict(params_per_part(model))
    assert "(other)" not in rows, f"{name}.parts misses {rows.get('(other)')} parameters"
    assert sum(rows.values()) == sum(p.numel() for p in model.parameters())


def test_flops_are_two_per_mac():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    macs = 8 * 3 * 9 * 16 * 16
    assert count_flops(conv, (1, 3, 16, 16)) == 2 * macs


def test_info_model_prints_parts_flops_and_input(capsys):
    assert main(["info", "unet", "--tiny", "--img-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "input      (1, 3, 64, 64)" in out
    assert "GFLOP" in out and "GMAC" in out and "1 MAC = 2 FLOP" in out
    for part in create_model("unet").parts:
        assert f"\n{part}" in out


def test_info_checkpoint_uses_its_preprocessing(tmp_path, capsys):
    model = create_model("unet", **tiny_kwargs("unet"), num_classes=2, img_size=48)
    pre = default_preprocessing((48, 48), 3, "repeat", {"mode": "zscore"})
    path = save_checkpoint(build_checkpoint(model, ["bg", "fg"], pre), tmp_path / "m.pt")
    _, meta = resolve(str(path))
    assert meta.input_shape == (1, 3, 48, 48) and meta.name == "unet"
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "['bg', 'fg']" in out and "zscore" in out


def test_unknown_target_is_one_line(capsys):
    assert main(["info", "no_such_model"]) == 2
    assert "neither a checkpoint file nor a registered model" in capsys.readouterr().err


def test_set_passes_model_arguments(capsys):
    assert main(["info", "unet", "--tiny", "--img-size", "64", "--no-flops", "--set", "num_classes=5"]) == 0
    assert "'num_classes': 5" in capsys.readouterr().out


@pytest.mark.parametrize("argv, fault", [
    (["--set", "bogus=1"], "unexpected keyword argument 'bogus'"),
    (["--img-size", "50"], "not divisible"),
])
def test_bad_model_arguments_are_one_line(capsys, argv, fault):
    assert main(["info", "unet", "--tiny", "--no-flops", *argv]) == 2
    err = capsys.readouterr().err
    assert fault in err and "Traceback" not in err


def test_trace_records_shapes_in_run_order():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    records, out = trace_modules(model, torch.zeros(1, 3, 8, 8))
    by = {r.name: r for r in records}
    assert out == "(1, 2, 4, 4)" and by["0"].shape == "(1, 4, 4, 4)" and by["0"].params == 3 * 4 * 9 + 4
    assert by["0"].order < by["1"].order < by["2"].order


def test_html_page_is_self_contained_and_renders(tmp_path):
    model = create_model("unet", **tiny_kwargs("unet"), img_size=64).eval()
    page = write_arch_page(model, (1, 3, 64, 64), tmp_path / "arch.html", title="unet tiny")
    text = page.read_text(encoding="utf-8")
    assert "Data flow" in text and "Module tree" in text and "(1, 9, 64, 64)" in text
    for external in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert external not in text
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed; the page was checked without rendering")
    png = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    f"--screenshot={png}", "--window-size=1000,1200", page.as_uri()],
                   check=True, capture_output=True, timeout=60)
    assert png.stat().st_size > 10_000


def test_pretrained_coverage_is_printed(golden_dir, tmp_path, capsys):
    """A Swin-T file in the Microsoft layout, zeros with the real key names/shapes (no real weights exist)."""
    import json

    keys = json.loads((golden_dir / "swin_tiny_imagenet" / "keys.json").read_text(encoding="utf-8"))
    sd = {}
    for name, shape, _dtype, _buffer in keys:
        sd[name] = (torch.zeros(shape, dtype=torch.long) if name.endswith("relative_position_index")
                    else torch.zeros(shape))
    torch.save({"model": sd}, tmp_path / "swin_t.pth")
    assert main(["info", "swin_unet", "--no-flops", "--pretrained", str(tmp_path / "swin_t.pth")]) == 0
    out = capsys.readouterr().out
    assert "pretrained coverage" in out and "encoder" in out.split("pretrained coverage")[1]


def test_architecture_page_title_is_readable(tmp_path, capsys):
    from smaformer.cli import main

    page = tmp_path / "arch.html"
    assert main(["info", "unet", "--tiny", "--no-flops", "--html", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert "<title>unet base=4 depth=2 dropout=0.1</title>" in text and "{" not in text.split("<title>")[1][:40]


def test_architecture_page_shows_the_compat_resize(tmp_path):
    from smaformer.models import create_model
    from smaformer.models.registry import tiny_kwargs
    from smaformer.tools.archpage import write_arch_page

    model = create_model("smaformer", **tiny_kwargs("smaformer"), img_size=64, resize_to=64)
    text = write_arch_page(model, (1, 3, 96, 96), tmp_path / "a.html").read_text(encoding="utf-8")
    flow = text.split("<h2>Data flow</h2>")[1].split("<h2>")[0]
    assert flow.index("resize to 64x64 (bilinear") < flow.index("patch_embed") < flow.index("logits resized back")
