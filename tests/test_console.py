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


@pytest.mark.parametrize("fast", ["1", "0"])
def test_exit_fast_flushes_runs_atexit_and_keeps_the_code(fast, tmp_path):
    """The entry points end with exit_fast: unflushed output and atexit handlers (files they
    close, lines they print) come out, the exit code is kept; POPSYNTH_FAST_EXIT=0 exits normally."""
    import os
    import subprocess
    import sys

    code = ("import atexit, sys\n"
            "from popsynth.console import exit_fast\n"
            f"atexit.register(lambda: open({str(tmp_path / 'done')!r}, 'w').write('ok'))\n"
            "sys.stdout.write('unflushed')\n"
            "exit_fast(3)\n"
            "print('not reached')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "POPSYNTH_FAST_EXIT": fast})
    assert p.returncode == 3 and p.stdout == "unflushed", (p.stdout, p.stderr)
    assert (tmp_path / "done").read_text() == "ok"
