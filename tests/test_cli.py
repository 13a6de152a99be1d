import pytest

import smaformer
from smaformer.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="valid names"):
        smaformer.create_model("no_such_model")
