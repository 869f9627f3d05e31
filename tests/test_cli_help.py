"""Help texts a new user reads: a user-level description, help on every option, one default
device rule, --data marked required, one-line argparse errors."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from _engine_utils import cli_cmd, subprocess_env
from fcnseg.cli import COMMANDS, build_parser


@pytest.fixture
def parser(monkeypatch) -> argparse.ArgumentParser:
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    return build_parser(all_commands=True)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_of_every_command_has_help(parser):
    subs = _subparsers(parser)
    assert set(subs) == set(COMMANDS)
    missing = [f"{name} {a.option_strings or a.dest}" for name, p in subs.items() for a in p._actions
               if not a.help or a.help == argparse.SUPPRESS or not a.help.strip()]
    assert not missing, missing
    assert all(a.help for a in parser._actions if not isinstance(a, argparse._SubParsersAction))


def test_top_level_help_is_for_users(parser):
    text = " ".join(parser.format_help().split())  # lines are wrapped to the terminal
    assert parser.description.startswith("Semantic segmentation with Fully Convolutional Networks")
    assert "thin layer" not in text and "add_cli_arguments" not in text  # not the developer docstring
    for name, (_, line) in COMMANDS.items():
        assert name in text and line in text  # every command, with its one line
    assert "fcnseg COMMAND --help" in text


def test_device_defaults_to_auto_everywhere_and_says_what_it_means(parser):
    subs = _subparsers(parser)
    for name in ("train", "eval", "predict"):
        action = next(a for a in subs[name]._actions if "--device" in a.option_strings)
        assert action.default in ("auto", None), name  # train: None -> TrainConfig's "auto"
        assert "GPU if PyTorch sees one, else the CPU" in action.help, name
    from fcnseg.engine.config import TrainConfig

    assert TrainConfig(data="d", out="o").device == "auto"
    args = parser.parse_args(["predict", "x.png", "--checkpoint", "c.pt", "--out", "o"])
    assert args.device == "auto"
    amp = next(a for a in subs["train"]._actions if "--amp" in a.option_strings)
    assert "auto (default) = bf16 on GPUs" in amp.help and "AMX" in amp.help


def test_train_usage_marks_data_required_except_with_resume(parser, monkeypatch, capsys):
    usage = _subparsers(parser)["train"].format_usage()
    assert "fcnseg train --data DIR --out DIR [options]" in usage
    assert "fcnseg train --out DIR --resume [options]" in usage
    from fcnseg.cli import main

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    assert main(["train", "--out", "runs/x"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["fcnseg train: error: --data DIR is required (a dataset root: VOC layout or "
                                "images/ + masks/); only --resume takes it from the run"]


def test_bad_option_value_is_one_line_exit_2():
    res = subprocess.run(cli_cmd("train", "--lr", "abc"), capture_output=True, text=True, timeout=120,
                         env=subprocess_env())
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "fcnseg train: error: argument --lr: invalid float value: 'abc'; see `fcnseg train --help`"]
    assert res.stdout == ""


def test_unknown_command_is_one_line(monkeypatch, capsys):
    from fcnseg.cli import main

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    with pytest.raises(SystemExit) as e:
        main(["trian"])
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "invalid choice: 'trian'" in err[0] and err[0].endswith("see `fcnseg --help`")
