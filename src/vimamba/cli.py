"""The ``vimamba`` command line. Each subsystem contributes its subcommands from its own ``commands`` module.

Errors: what the user can act on is printed as one line (``vimamba CMD: error: ...``, exit status 1) -- a
:class:`~vimamba.errors.UserError` (file-system failures included), an ``OSError`` about a named file, and the
messages vimamba raises itself on bad input (``raise ValueError("...")`` in vimamba's own code). Anything else (an
exception raised inside torch or another library, a ``KeyError`` from a lookup) is a bug and keeps its traceback.
``VIMAMBA_DEBUG=1`` shows the traceback of every error.
"""
from __future__ import annotations

import argparse
import importlib
import linecache
import os
import re
import sys
from pathlib import Path
from typing import List, Optional

# Modules with a ``register(subparsers)`` function, in the order their commands appear in ``vimamba --help``.
COMMAND_MODULES = [
    "vimamba.models.commands",  # models, info, convert
    "vimamba.train.commands",  # train, eval, predict
    "vimamba.data.commands",  # data fashion-mnist | cifar10 | check
    "vimamba.dense.commands",  # segment, detect
    "vimamba.bench.commands",  # bench
    "vimamba.pretrain.commands",  # probe
    "vimamba.export.commands",  # export
]

_PACKAGE_DIR = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="vimamba",
        description="Vision Mamba (Vim) in pure PyTorch: models, training, evaluation, benchmarks, dense prediction.",
    )
    parser.add_argument("--version", action="version", version=f"vimamba {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vimamba ... | head`: the reader left; nothing to report
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except Exception as e:
        message = user_message(e)
        if message is None or os.environ.get("VIMAMBA_DEBUG"):
            raise  # a bug: keep the traceback
        print(f"vimamba {args.command}: error: {message}", file=sys.stderr)
        return 1


def user_message(error: BaseException) -> Optional[str]:
    """The one-line message of an error the user can act on, or None for an error that is a bug."""
    from .errors import UserError, file_system_error

    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, OSError) and error.filename is not None and not _raised_by_vimamba(error):
        return str(file_system_error(error, error.filename, action="use"))
    if isinstance(error, (ValueError, RuntimeError, KeyError, OSError, TypeError)):
        if _raised_by_vimamba(error):
            return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        worker = _worker_error(error)
        if worker is not None:
            return worker
    return None


def _is_vimamba_source(filename: str) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(_PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def _raised_by_vimamba(error: BaseException) -> bool:
    """Whether ``error`` comes from a ``raise`` statement in vimamba's own code (a message written for the user),
    rather than from inside a library or from a failed operation (a bug)."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    return _is_vimamba_source(filename) and linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")


_WORKER_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')


def _worker_error(error: BaseException) -> Optional[str]:
    """An error a DataLoader worker raised with a ``raise`` in vimamba's code, re-raised by torch in the main
    process: its original last line (``DataError: cannot read ...``)."""
    text = str(error)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return None
    frames = list(_WORKER_FRAME.finditer(text))
    if not frames:
        return None
    last = frames[-1]
    if not _is_vimamba_source(last["file"]):
        return None
    source = linecache.getline(last["file"], int(last["line"])).lstrip()
    if not source.startswith("raise"):
        return None
    final = text.rstrip().splitlines()[-1]
    return final.split(": ", 1)[1] if ": " in final else final


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
