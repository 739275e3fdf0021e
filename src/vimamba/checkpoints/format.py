"""The one checkpoint format every vimamba run writes (format version 2).

Every task (classification, segmentation, detection, pretraining) saves the same dict with ``torch.save``, loadable
with ``torch.load(weights_only=True)`` (plain tensors, numbers, strings, lists and dicts only):

===================  ================================================================================================
``format``           ``"vimamba"``; ``format_version``: ``2``
``task``             ``"classification"``, ``"segmentation"``, ``"detection"`` or ``"pretraining"``
``arch``             the network the task is built around: ``{"name": registered or timm model name,
                     "family": "vim" | "timm", "overrides": {...}}`` (classifier; dense backbone; pretraining encoder)
``task_config``      what the task adds to ``arch`` to rebuild the whole model (segmentor/detector head settings, the
                     pretraining objective); ``{}`` for classification
``preprocessing``    how inputs are prepared (:class:`vimamba.data.transforms.Preprocessing` as a dict) or ``None``
``class_names``      label names in label order (``[]`` when the task has no labels)
``data_config``      data settings that evaluation and prediction reuse (dense: rescale size, crop, ...); ``{}``
``model``            the trained weights (state_dict); ``model_ema``: the EMA weights or ``None``
``optimizer``        ``scheduler``, ``scaler``: their ``state_dict()`` (``None`` in weights-only files)
``rng``              the RNG states of every rank, in rank order (``None`` in weights-only files)
``step``             optimizer updates done; ``epoch`` / ``batch_in_epoch``: where the data order continues
``best_metric``      ``{"name", "mode", "value"}`` of the metric that selects ``best.pth``
``config``           the run's full configuration (the flags), a plain dict
===================  ================================================================================================

:func:`make_checkpoint` builds this dict (the engine is its only writer); :func:`load_checkpoint_file` is the one
place a checkpoint file is opened with ``torch.load``. Reading any checkpoint (this format, the files earlier
vimamba versions wrote, the official ``.pth`` files, ``.safetensors``) into one description is the loader's job
(:mod:`vimamba.checkpoints`).
"""
from __future__ import annotations

import argparse
import errno
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch

from ..errors import MissingFileError, UserError, file_system_error

__all__ = ["FORMAT", "FORMAT_VERSION", "TASKS", "CheckpointFormatError", "make_checkpoint", "is_current_format",
           "load_checkpoint_file"]

FORMAT = "vimamba"
FORMAT_VERSION = 2
TASKS = ("classification", "segmentation", "detection", "pretraining")
FAMILIES = ("vim", "timm")

PathLike = Union[str, os.PathLike]


class CheckpointFormatError(UserError, RuntimeError):
    """A file that cannot be read as a checkpoint, or one of the wrong kind for what was asked."""


def make_checkpoint(
    *,
    task: str,
    arch: Mapping[str, Any],
    model: Mapping[str, torch.Tensor],
    task_config: Optional[Mapping[str, Any]] = None,
    preprocessing: Optional[Mapping[str, Any]] = None,
    class_names: Sequence[str] = (),
    data_config: Optional[Mapping[str, Any]] = None,
    model_ema: Optional[Mapping[str, torch.Tensor]] = None,
    optimizer: Optional[Mapping[str, Any]] = None,
    scheduler: Optional[Mapping[str, Any]] = None,
    scaler: Optional[Mapping[str, Any]] = None,
    rng: Optional[List[Any]] = None,
    step: int = 0,
    epoch: int = 0,
    batch_in_epoch: int = 0,
    best_metric: Optional[Mapping[str, Any]] = None,
    config: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The checkpoint dict of the current format (see the module docstring), with its fields checked."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not isinstance(arch, Mapping) or not isinstance(arch.get("name"), str) or arch.get("family") not in FAMILIES:
        raise ValueError(f"arch must be {{'name': str, 'family': 'vim'|'timm', 'overrides': dict}}, got {arch!r}")
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "task": task,
        "arch": {"name": arch["name"], "family": arch["family"], "overrides": dict(arch.get("overrides") or {})},
        "task_config": dict(task_config or {}),
        "preprocessing": dict(preprocessing) if preprocessing is not None else None,
        "class_names": [str(c) for c in class_names],
        "data_config": dict(data_config or {}),
        "model": dict(model), "model_ema": dict(model_ema) if model_ema is not None else None,
        "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "rng": rng,
        "step": int(step), "epoch": int(epoch), "batch_in_epoch": int(batch_in_epoch),
        "best_metric": dict(best_metric) if best_metric is not None else None,
        "config": dict(config or {}),
    }


def is_current_format(obj: Any) -> bool:
    """Whether ``obj`` (what ``torch.load`` returned) is a checkpoint of this format."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT and obj.get("format_version") == FORMAT_VERSION


def load_checkpoint_file(path: PathLike, *, trust_pickle: bool = False) -> Any:
    """``torch.load`` of a checkpoint file on the CPU, with one clear error for every way it can fail.

    Only plain data is unpickled unless ``trust_pickle`` (official training checkpoints also store their
    ``argparse.Namespace``, which is allowed).
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"checkpoint not found: '{path}'", path)
    if path.is_dir():
        raise CheckpointFormatError(f"'{path}' is a folder; give the checkpoint file inside it (e.g. "
                                    f"'{path / 'last.pth'}')")
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for damaged files (RuntimeError, KeyError, EOFError, ...)
        if isinstance(e, OSError) and e.errno != errno.EINVAL:  # EINVAL: torch's zip reader on some truncated files
            raise file_system_error(e, path, "read") from e
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):
            raise CheckpointFormatError(
                f"'{path}' holds Python objects that are not loaded by default for safety. If you trust the file, "
                f"load it with trust_pickle=True (command line: --trust-checkpoint). Details: {str(e).splitlines()[0]}"
            ) from e
        if isinstance(e, (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError,
                          OSError)):
            raise CheckpointFormatError(
                f"could not read '{path}' as a PyTorch checkpoint ({type(e).__name__}: {e}). The file may be "
                "truncated (an interrupted download or copy) or not a checkpoint at all.") from e
        raise
