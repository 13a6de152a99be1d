import pytest

import smaformer
from smaformer.cli import main


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
