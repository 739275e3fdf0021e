"""The ``vimamba`` command line. Each subsystem contributes its subcommands from its own ``commands`` module."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# Modules with a ``register(subparsers)`` function, in the order their commands appear in ``vimamba --help``.
COMMAND_MODULES = [
    "vimamba.models.commands",  # models, info, convert
    "vimamba.train.commands",  # train, eval, predict
    "vimamba.data.commands",  # data fashion-mnist | cifar10 | check
    "vimamba.dense.commands",  # segment, detect
    "vimamba.bench.commands",  # bench
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
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        # Errors meant for the user (bad paths, bad arguments, unusable checkpoints): one clear message, no trace.
        # Set VIMAMBA_DEBUG=1 to see the traceback.
        import os

        if os.environ.get("VIMAMBA_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"vimamba {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
