"""The ``popsynth`` console script dispatches to each command's ``main(argv)``."""

import importlib.util

import pytest

from popsynth.console import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name}" in out


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "usage: popsynth <command>" in capsys.readouterr().out


def test_unknown_command_is_one_line_error(capsys):
    assert main(["fitt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown command 'fitt'") and "\n" not in err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_module_exists_and_has_main(name):
    module = COMMANDS[name][0]
    assert importlib.util.find_spec(module) is not None, f"{module} is missing"
    assert callable(importlib.import_module(module).main)


def test_train_help_is_train_py_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    assert "--spec-set" in capsys.readouterr().out
