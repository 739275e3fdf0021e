"""The one loader: any checkpoint a user has -> its model, whatever the task.

:func:`load_model` = :func:`vimamba.checkpoints.read_checkpoint` (what the file is: :class:`RunCheckpoint`) +
:func:`build_model` (the eval-mode classifier -- Vim or timm --, segmentor, detector or pretraining objective with
its weights). Every command that reads a trained model, and ``vimamba.load_model``, go through here. This module sits
above the task packages it builds for (:mod:`vimamba.models`, :mod:`vimamba.dense`, :mod:`vimamba.pretrain`); they
read checkpoints with :mod:`vimamba.checkpoints`, which imports none of them.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import timm
import torch
import torch.nn as nn

from .checkpoints.format import CheckpointFormatError
from .checkpoints.reading import DENSE_TASKS, RunCheckpoint, check_task, load_exactly, read_checkpoint
from .dense.checkpoint import build_dense_checkpoint_model
from .errors import InputError
from .models.checkpoint import Checkpoint, load_checkpoint
from .models.registry import create_model
from .pretrain.transfer import PretrainingCheckpoint, objective_from_pretraining

__all__ = ["load_model", "build_model", "pretraining_checkpoint", "read_checkpoint", "RunCheckpoint"]

PathLike = Union[str, os.PathLike]


def build_model(ckpt: RunCheckpoint, *, use_ema: bool = False, task: Union[None, str, Sequence[str]] = None,
                overrides: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """The eval-mode model of a checkpoint with its weights (the EMA weights with ``use_ema``).

    ``task``: the task (or tasks) the caller can use; a checkpoint of another task is a
    :class:`CheckpointFormatError` saying what it is. ``overrides``: :class:`VimConfig` fields changed for a Vim
    classifier (``img_size`` resizes the position embedding; ``num_classes`` gives a fresh head).
    """
    found = check_task(ckpt, task)
    weights, key = ckpt.select("ema" if use_ema else "auto")
    overrides = dict(overrides or {})
    if overrides and not (found == "classification" and ckpt.arch and ckpt.arch["family"] == "vim"):
        raise InputError(f"overrides ({sorted(overrides)}) apply to Vim classifiers, not to {ckpt.describe()}")
    if found == "classification":
        model = _build_classifier(ckpt, weights, key, overrides)
    elif found in DENSE_TASKS:
        model = build_dense_checkpoint_model(ckpt, use_ema=use_ema, task=found)
    else:
        model = objective_from_pretraining(pretraining_checkpoint(ckpt, use_ema=use_ema))
    return model.eval()


def _build_classifier(ckpt: RunCheckpoint, weights: Dict[str, torch.Tensor], key: str,
                      overrides: Dict[str, Any]) -> nn.Module:
    arch = ckpt.arch
    assert arch is not None  # a classification checkpoint always has one
    if arch["family"] == "timm":
        try:
            model = timm.create_model(arch["name"], pretrained=False, **arch["overrides"])
        except (RuntimeError, TypeError, ValueError) as e:
            raise CheckpointFormatError(f"{ckpt.where} names a timm model timm cannot build ({arch}): {e}") from e
        load_exactly(model, weights, ckpt, f"the timm model {arch['name']} it describes")
    else:
        config = ckpt.vim_config()
        model = create_model(arch["name"], **{**arch["overrides"], **overrides})
        load_checkpoint(model, Checkpoint(state_dict=weights, config=config, arch=arch["name"], weights_key=key,
                                          path=ckpt.path), ignore_head="num_classes" in overrides)
    if ckpt.class_names:
        model.class_names = list(ckpt.class_names)
    return model


def pretraining_checkpoint(ckpt: RunCheckpoint, *, use_ema: bool = False):
    """A pretraining checkpoint of any layout as :class:`vimamba.pretrain.transfer.PretrainingCheckpoint`, what
    ``objective_from_pretraining`` / ``classifier_from_pretraining`` take."""
    check_task(ckpt, "pretraining")
    weights, _ = ckpt.select("ema" if use_ema else "auto")
    record = {**ckpt.task_config, "preprocessing": ckpt.preprocessing}
    if not record.get("encoder_config"):
        record["encoder_config"] = ckpt.vim_config()
    return PretrainingCheckpoint(str(record.get("objective")), weights, record, ckpt.where)


def load_model(source: Union[PathLike, RunCheckpoint], *, weights: str = "auto", trust_pickle: bool = False,
               task: Union[None, str, Sequence[str]] = None, **overrides: Any) -> nn.Module:
    """The eval-mode model of any checkpoint: ``read_checkpoint`` + ``build_model``.

    ``weights``: "auto"/"model" (the trained weights) or "ema". ``task``: refuse checkpoints of other tasks.
    ``**overrides``: :class:`VimConfig` fields of a Vim classifier to change (``num_classes`` gives a fresh head,
    ``img_size`` / ``stride`` resize the position embedding).
    """
    ckpt = source if isinstance(source, RunCheckpoint) else read_checkpoint(source, trust_pickle=trust_pickle)
    ckpt.select(weights)  # "model" in a file that only has EMA weights, "ema" in one without: a clear error
    return build_model(ckpt, use_ema=weights == "ema", task=task, overrides=overrides)
