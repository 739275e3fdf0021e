"""One command-line style (issue 11): every subcommand's flags are explained and show their default; the same
spelling means the same thing everywhere (--checkpoint, --json, --output, --resume)."""
from __future__ import annotations

import argparse

import pytest

from vimamba.cli import build_parser, main

# commands that read a trained model, and commands that print metrics
READ_A_MODEL = {"eval", "predict", "probe", "export", "convert", "info", "segment eval", "segment predict",
                "detect eval", "detect predict"}
PRINT_METRICS = {"eval", "probe", "segment eval", "detect eval", "info", "bench"}
TRAINING = {"train", "segment train", "detect train", "pretrain"}


def _commands(parser: argparse.ArgumentParser, prefix: str = ""):
    """(name, parser) of every command that does something, nested ones (``segment eval``) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    yield from _commands(sub, full)
                else:
                    yield full, sub


COMMANDS = dict(_commands(build_parser()))


def _options(parser):
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def _flags(parser):
    return {flag for action in _options(parser) for flag in action.option_strings}


def test_the_walk_finds_every_command():
    assert READ_A_MODEL | PRINT_METRICS | TRAINING <= set(COMMANDS)
    assert {"models", "data check", "segment shapes", "detect shapes"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_that_shows_its_default(name):
    parser = COMMANDS[name]
    defaults_shown = isinstance(parser._get_formatter(), argparse.ArgumentDefaultsHelpFormatter)
    for action in _options(parser):
        what = f"{name}: {'/'.join(action.option_strings) or action.dest}"
        assert action.help and action.help != argparse.SUPPRESS and len(action.help) > 8, what
        if not action.option_strings:  # a positional argument: always given, no default to show
            continue
        shown = ("default" in action.help or "required" in action.help or action.required
                 or (defaults_shown and action.default is not argparse.SUPPRESS))
        assert shown, what
    parser.format_help()  # every help text formats (a stray % would raise here)


@pytest.mark.parametrize("name", sorted(READ_A_MODEL))
def test_commands_that_read_a_trained_model_take_checkpoint(name):
    assert "--checkpoint" in _flags(COMMANDS[name])


@pytest.mark.parametrize("name", sorted(PRINT_METRICS))
def test_commands_that_print_metrics_take_json(name):
    assert "--json" in _flags(COMMANDS[name])


def test_resume_is_a_training_flag_only():
    assert {name for name, parser in COMMANDS.items() if "--resume" in _flags(parser)} == TRAINING


@pytest.mark.parametrize("argv, message", [
    (["segment", "eval", "a.pth", "--checkpoint", "b.pth", "--data", "d"], "--checkpoint given twice"),
    (["detect", "eval", "--images", "i", "--annotations", "a.json"], "pass --checkpoint CKPT"),
    (["export", "--output", "x.onnx"], "pass --checkpoint CKPT"),
    (["convert", "--checkpoint", "a.pth", "--output", "b.safetensors", "c"], "given twice"),
    (["convert", "a.pth"], "pass --output FILE"),
    (["segment", "predict", "a.pth", "--output", "o"], "pass at least one IMAGE"),
    (["predict", "x.png"], "pass one model: --checkpoint CKPT or --onnx MODEL"),
    (["probe", "--checkpoint", "random:vim_tiny_patch16_224"], "pass --data DIR"),
])
def test_a_checkpoint_given_twice_or_not_at_all_is_one_line(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_the_older_positional_spelling_reads_the_same_checkpoint(monkeypatch):
    """``segment eval CKPT`` and ``segment eval --checkpoint CKPT`` build the same configuration."""
    from vimamba.dense import commands
    from vimamba.engine.config import command_config

    parser = build_parser()
    old = command_config(parser.parse_args(["segment", "eval", "c.pth", "--data", "d"]), commands.SegmentEvalConfig)
    new = command_config(parser.parse_args(["segment", "eval", "--checkpoint", "c.pth", "--data", "d"]),
                         commands.SegmentEvalConfig)
    assert old == new and old.checkpoint == "c.pth" and old.workers == 2 and old.json is False
    predict = command_config(parser.parse_args(["detect", "predict", "c.pth", "x.png", "y.png", "--output", "o"]),
                             commands.DetectPredictConfig)
    assert predict.checkpoint == "c.pth" and predict.images == ("x.png", "y.png")
