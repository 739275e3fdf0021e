"""The command line's error contract: what the user can act on is one line and exit status 1; a bug keeps its
traceback whatever its type; an error raised inside a data-loading worker reads as the worker's own message."""
from __future__ import annotations


import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from vimamba import cli
from vimamba.data.images import DataError
from vimamba.errors import InputError, MissingFileError, UnknownNameError


def _run_with(monkeypatch, func, capsys):
    """Run ``vimamba models`` with its command function replaced by ``func``."""
    original = cli.build_parser

    def parser_with_func():
        parser = original()
        for action in parser._subparsers._group_actions:
            action.choices["models"].set_defaults(func=func)
        return parser

    monkeypatch.setattr(cli, "build_parser", parser_with_func)
    return cli.main(["models"])


@pytest.mark.parametrize("error, message", [
    (InputError("--batch-size must be positive, got 0"), "--batch-size must be positive, got 0"),
    (UnknownNameError("unknown Vim model 'x'"), "unknown Vim model 'x'"),
    (MissingFileError("checkpoint not found: 'a.pth'", "a.pth"), "checkpoint not found: 'a.pth'"),
    (DataError("cannot read 'img.png'"), "cannot read 'img.png'"),
    (PermissionError(13, "Permission denied", "/root/x"), "permission denied: cannot use '/root/x'"),
])
def test_user_errors_are_one_line_and_exit_1(monkeypatch, capsys, error, message):
    def fail(args):
        raise error

    assert _run_with(monkeypatch, fail, capsys) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"vimamba models: error: {message}"


@pytest.mark.parametrize("error", [ValueError("a shape mismatch deep inside"), RuntimeError("bad state"),
                                   KeyError("blocks.3.weight"), TypeError("unsupported operand"),
                                   OSError("an OSError with no file name")])
def test_a_bug_keeps_its_traceback_whatever_its_type(monkeypatch, capsys, error):
    def fail(args):
        raise error

    with pytest.raises(type(error)):
        _run_with(monkeypatch, fail, capsys)


class _UnreadableDataset(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        raise DataError(f"cannot read image {index}: truncated file")


def test_an_error_raised_in_a_data_worker_reads_as_the_workers_message(monkeypatch, capsys):
    def load(args):
        for _ in DataLoader(_UnreadableDataset(), batch_size=2, num_workers=1):
            pass

    assert _run_with(monkeypatch, load, capsys) == 1
    err = capsys.readouterr().err
    assert err.strip() == "vimamba models: error: cannot read image 0: truncated file"


def test_debug_shows_the_traceback_of_user_errors_too(monkeypatch, capsys):
    monkeypatch.setenv("VIMAMBA_DEBUG", "1")

    def fail(args):
        raise InputError("bad flag")

    with pytest.raises(InputError):
        _run_with(monkeypatch, fail, capsys)


def test_library_callers_still_catch_the_builtin_types():
    import vimamba

    with pytest.raises(KeyError):
        vimamba.create_model("vim_gigantic")
    with pytest.raises(TypeError):
        vimamba.create_model("vim_tiny_patch16_224", no_such_setting=1)
    with pytest.raises(ValueError):
        vimamba.create_model("vim_tiny_patch16_224", embed_dim=0)


def test_a_check_inside_vimamba_that_only_a_bug_can_trip_keeps_its_traceback(monkeypatch, capsys):
    """An internal check (a ``raise ValueError`` in vimamba's own ops) is not a message for the user."""
    from vimamba.ops.conv import depthwise_conv1d

    def fail(args):
        depthwise_conv1d(torch.zeros(2, 3), torch.zeros(3, 4), None)

    with pytest.raises(ValueError, match="depthwise_conv1d expects"):
        _run_with(monkeypatch, fail, capsys)
