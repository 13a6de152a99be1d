import pytest

from smaformer.config import DEFAULTS, effective_lr, list_presets, load_config, parse_value
from smaformer.errors import InputError

PRESETS = ["synapse_swin_unet", "synapse_smaformer", "acdc_swin_unet", "acdc_smaformer", "lits2017_smaformer",
           "medt_drive", "glas_medt"]


@pytest.mark.parametrize("text,value", [("3", 3), ("1e-4", 1e-4), ("-2.5E3", -2500.0), ("true", True),
                                        ("null", None), ("[0.2,0.4,0.4]", [0.2, 0.4, 0.4]), ("abc", "abc"),
                                        ("{a: 1}", {"a": 1}), ("[256, 256]", [256, 256])])
def test_parse_value_types(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value)


def test_presets_shipped():
    assert set(PRESETS) <= set(list_presets())


def test_overrides_nested_and_typed():
    cfg = load_config("acdc_swin_unet", ["train.epochs=3", "optim.lr=1e-3", "data.img_size=[256,256]",
                                         "train.channels_last=true", "loss.class_weights=[1,2,2,2]"])
    assert cfg["train"]["epochs"] == 3 and cfg["optim"]["lr"] == 1e-3 and cfg["train"]["channels_last"] is True
    assert cfg["data"]["img_size"] == [256, 256] and cfg["model"]["kwargs"]["img_size"] == 256
    assert cfg["loss"]["class_weights"] == [1, 2, 2, 2]
    assert DEFAULTS["train"]["epochs"] == 10          # defaults are not mutated


def test_official_recipes():
    swin = load_config("synapse_swin_unet")
    assert (swin["optim"]["name"], swin["optim"]["lr"], swin["optim"]["momentum"], swin["optim"]["weight_decay"]) \
        == ("sgd", 0.05, 0.9, 1e-4)
    assert (swin["schedule"]["name"], swin["schedule"]["power"], swin["train"]["epochs"]) == ("poly", 0.9, 150)
    assert (swin["loss"]["ce"], swin["loss"]["dice"], swin["data"]["img_size"]) == (0.4, 0.6, [224, 224])
    # lr scales with batch / 24 as in the official train.py
    assert effective_lr(swin) == 0.05
    assert effective_lr(load_config("synapse_swin_unet", ["train.batch_size=12"])) == pytest.approx(0.025)
    sma = load_config("synapse_smaformer")
    assert (sma["optim"]["name"], sma["optim"]["lr"], sma["optim"]["weight_decay"]) == ("adamw", 3e-4, 1e-3)
    assert (sma["schedule"]["name"], sma["schedule"]["min_lr"], sma["train"]["epochs"]) == ("cosine", 1e-6, 300)
    assert (sma["data"]["channel_mode"], sma["data"]["img_size"]) == ("pseudo_hdr", [256, 256])
    lits = load_config("lits2017_smaformer")
    assert [lits["loss"][k] for k in ("ce", "dice", "focal")] == [0.3, 0.4, 0.3]
    assert (lits["optim"]["weight_decay"], lits["model"]["kwargs"]["num_classes"]) == (1e-2, 3)
    medt = load_config("medt_drive")
    assert (medt["optim"]["name"], medt["optim"]["lr"], medt["optim"]["weight_decay"]) == ("adam", 1e-3, 1e-5)
    assert (medt["train"]["batch_size"], medt["train"]["freeze_gates_epochs"]) == (4, 10)
    assert load_config("glas_medt")["data"]["img_size"] == [128, 128]


@pytest.mark.parametrize("overrides,match", [
    (["train.epochs"], "key=value"),
    (["train.nope=1"], "unknown key train.nope"),
    (["train.epoch=3"], r"unknown key train.epoch \(did you mean 'epochs'\?\)"),
    (["train.epochs=four"], "train.epochs='four': expected an integer"),
    (["data.augment=1"], "data.augment=1: expected true/false"),
    (["optim.betas=0.9"], "optim.betas=0.9: expected a list"),
    (["bogus.x=1"], "unknown config sections"),
    (["optim.name=lamb"], "optim.name"),
    (["train.precision=fp8"], "train.precision"),
    (["data.val_split=test", "data.test_split=test"], "test split"),
])
def test_bad_configs_refused(overrides, match):
    with pytest.raises(InputError, match=match):
        load_config("acdc_swin_unet", overrides)


def test_unknown_preset(tmp_path):
    with pytest.raises(InputError, match="presets"):
        load_config("no_such_preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n", encoding="utf-8")
    with pytest.raises(InputError, match="invalid YAML"):
        load_config(bad)


def test_a_bad_set_value_is_one_line_on_the_cli(capsys):
    from smaformer.cli import main

    assert main(["train", "--config", "acdc_swin_unet", "--dry-run", "--set", "train.epochs=four"]) == 2
    err = capsys.readouterr().err
    assert err == "error: train.epochs='four': expected an integer\n"
    assert main(["train", "--config", "acdc_swin_unt", "--dry-run"]) == 2
    assert "did you mean 'acdc_swin_unet'?" in capsys.readouterr().err
