"""The ``vimamba`` command line. Each subsystem contributes its subcommands from its own ``commands`` module.

Errors: what the user can act on is printed as one line (``vimamba CMD: error: ...``, exit status 1): a
:class:`~vimamba.errors.UserError` (bad input, a checkpoint of the wrong kind, unreadable data, file-system failures;
also when a data-loading worker raised it) and an ``OSError`` about a named file. Anything else is a bug and keeps
its traceback, whatever its type. ``VIMAMBA_DEBUG=1`` shows the traceback of every error.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
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
        action = getattr(args, f"{args.command}_command", None)  # segment eval, detect predict, data check
        print(f"vimamba {args.command}{' ' + action if action else ''}: error: {message}", file=sys.stderr)
        return 1


def user_message(error: BaseException) -> Optional[str]:
    """The one-line message of an error the user can act on, or None for an error that is a bug."""
    from .errors import UserError, file_system_error

    if isinstance(error, UserError):
        return _worker_message(str(error))
    if isinstance(error, OSError) and error.filename is not None:
        return str(file_system_error(error, error.filename, action="use"))
    return None


def _worker_message(text: str) -> str:
    """A DataLoader re-raises a worker's exception as the same type with the worker's traceback as its message
    (``Caught DataError in DataLoader worker process 0. Original Traceback ...``): keep the original last line."""
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    final = text.rstrip().splitlines()[-1]
    return final.split(": ", 1)[1] if ": " in final else final


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
