"""The options shared by the commands that read a trained model, each defined once.

``vimamba eval`` / ``predict``, ``segment`` and ``detect`` ``eval`` / ``predict``, ``probe``, ``export`` and
``convert`` declare their flags as config dataclasses (:func:`vimamba.engine.config.option` fields, parsed by
:func:`~vimamba.engine.config.command_config`). The flags they have in common come from the functions here, so they
are spelled, typed and explained the same way everywhere: ``--checkpoint CKPT`` names the trained model, ``--json``
prints the result as JSON to stdout, ``--output`` names where files go; ``--device``, ``--amp``, ``--workers``,
``--batch-size``, ``--weights`` and ``--trust-checkpoint`` mean one thing whatever the command.

Each function returns a fresh dataclass field (a field cannot be shared between classes); a command passes only
what differs: its default, or what its checkpoint may be.
"""
from __future__ import annotations

from typing import Any

from .cli_args import non_negative_int, positive_int
from .engine.config import PRECISION_CHOICES, option

__all__ = ["GROUP_TITLES", "WEIGHTS_CHOICES", "DATASET_CHOICES", "checkpoint_option", "weights_option",
           "trust_checkpoint_option", "device_option", "amp_option", "workers_option", "batch_size_option",
           "json_option", "dataset_option"]

GROUP_TITLES = {"checkpoint": "trained model", "data": "data", "compute": "device and data loading",
                "output": "output"}
WEIGHTS_CHOICES = ("auto", "model", "ema")
DATASET_CHOICES = ("fashion-mnist", "cifar10", "imagenet")

CLASSIFIER_CHECKPOINT = "a vimamba training checkpoint, exported weights (.safetensors) or an official Vim .pth"


def checkpoint_option(what: str = CLASSIFIER_CHECKPOINT, *, required: bool = True,
                      also_positional: bool = False) -> Any:
    """``--checkpoint CKPT``: the trained model a command reads. ``also_positional``: the command's older spelling
    (``segment eval CKPT``) still works."""
    return option(None, what, "checkpoint", flag="--checkpoint", metavar="CKPT", required=required,
                  also_positional=also_positional)


def weights_option() -> Any:
    return option("auto", "with a training checkpoint: the trained weights (model), the EMA weights (ema), or "
                  "auto: the trained weights, else the EMA ones", "checkpoint", choices=WEIGHTS_CHOICES)


def trust_checkpoint_option() -> Any:
    return option(False, "allow pickled Python objects in a .pth you trust (needed by some older files)",
                  "checkpoint")


def device_option() -> Any:
    return option("auto", "auto, cpu, cuda, cuda:N or mps (auto: a GPU if there is one)", "compute")


def amp_option() -> Any:
    return option("off", "autocast precision: bf16, fp16, or off (float32)", "compute", choices=PRECISION_CHOICES)


def workers_option(default: int) -> Any:
    return option(default, "data-loading worker processes (0: load in the main process)", "compute",
                  check=non_negative_int)


def batch_size_option(default: int) -> Any:
    return option(default, "images per batch", "compute", metavar="B", check=positive_int)


def json_option(what: str = "the metrics") -> Any:
    """``--json``: the result as JSON on stdout (nothing else there), for scripts."""
    return option(False, f"print {what} as JSON to stdout instead of the readable report", "output")


def dataset_option() -> Any:
    return option(None, "a named dataset instead of --data (with --data: where it lives)", "data",
                  choices=DATASET_CHOICES)
