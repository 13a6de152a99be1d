import pytest

import smaformer
from smaformer.cli import main
from smaformer.errors import InputError


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "train", "evaluate", "predict", "export", "info", "convert", "check-data"):
        assert f"\n    {command}" in out, command


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="valid names"):
        smaformer.create_model("no_such_model")


def test_debug_anywhere_and_did_you_mean(capsys):
    from smaformer.cli import main

    assert main(["info", "swin_unt"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'swin_unet'?" in err and err.count("\n") == 1
    with pytest.raises(InputError, match="swin_unt"):     # --debug after the sub-command shows the traceback
        main(["info", "swin_unt", "--debug"])
