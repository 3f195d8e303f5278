"""The hmarl CLI: --help everywhere, steps listed, errors become exit code 2 with a message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hmarl.cli import build_parser, main
from hmarl.steps import STEP_NAMES


def _subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


@pytest.mark.parametrize("argv", [[], *[[c] for c in _subcommands()]])
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    assert "usage: hmarl" in capsys.readouterr().out


def test_steps_lists_every_step_with_a_summary(capsys):
    assert main(["steps"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == list(STEP_NAMES)
    assert all(len(ln.split()) > 3 for ln in lines)


def test_bad_override_exits_2_naming_the_key(capsys, tmp_path):
    rc = main(["step", "features", "--set", "splits.train_bars=-1", "--metrics", str(tmp_path / "m.json")])
    assert rc == 2
    assert "splits.train_bars" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_missing_input_exits_2(capsys, tmp_path):
    rc = main(["step", "validate", "--input", f"canonical={tmp_path / 'nothing'}", "--metrics", "-"])
    assert rc == 2
    assert "input 'canonical' not found" in capsys.readouterr().err


def test_console_entry_point_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "hmarl.cli", "steps"], capture_output=True, text=True, check=True
    ).stdout
    assert out.split()[0] == STEP_NAMES[0]
