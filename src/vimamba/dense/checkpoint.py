"""Dense-model checkpoints: rebuilding a segmentor / detector and its weights from a checkpoint file.

Runs write the one checkpoint format (:mod:`vimamba.checkpoints.format`: ``task``, ``task_config["dense_config"]``,
``class_names``, ``data_config``; written by :mod:`vimamba.dense.training`); files of earlier versions store
``dense_task``, ``dense_config``, ``class_names`` and ``data_config`` at the top level. The one loader
(:mod:`vimamba.checkpoints`) reads both, so ``vimamba segment|detect eval|predict`` need nothing but the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

import torch.nn as nn

from ..checkpoints.format import CheckpointFormatError
from ..checkpoints.reading import RunCheckpoint, check_task, load_exactly, read_checkpoint
from .detector import DetectorConfig, build_detector
from .segmentor import SegmentorConfig, build_segmentor

__all__ = ["DenseCheckpoint", "build_dense_model", "dense_config", "load_dense_model", "TASKS"]

TASKS = ("segmentation", "detection")


@dataclass
class DenseCheckpoint:
    """What a dense checkpoint says about its model."""

    task: str
    config: Union[SegmentorConfig, DetectorConfig]
    class_names: List[str]
    data_config: Dict[str, Any]
    iteration: Optional[int] = None


def build_dense_model(task: str, config: Union[SegmentorConfig, DetectorConfig], pretrained=None) -> nn.Module:
    """A fresh segmentor / detector (``pretrained``: a Vim classification checkpoint for its backbone)."""
    if task == "segmentation":
        return build_segmentor(config, pretrained)  # type: ignore[arg-type]
    if task == "detection":
        return build_detector(config, pretrained)  # type: ignore[arg-type]
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def dense_config(ckpt: RunCheckpoint) -> Union[SegmentorConfig, DetectorConfig]:
    """The :class:`SegmentorConfig` / :class:`DetectorConfig` a dense checkpoint stores."""
    config_cls = {"segmentation": SegmentorConfig, "detection": DetectorConfig}.get(ckpt.task or "")
    if config_cls is None:
        raise CheckpointFormatError(f"{ckpt.describe()} is not a segmentation or detection checkpoint")
    try:
        return config_cls.from_dict(dict(ckpt.task_config["dense_config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointFormatError(f"{ckpt.where} stores a {ckpt.task} configuration this vimamba cannot build: "
                                    f"{e}") from e


def build_dense_checkpoint_model(ckpt: RunCheckpoint, *, use_ema: bool = False,
                                 task: Optional[str] = None) -> nn.Module:
    """The eval-mode segmentor / detector of a read checkpoint, with its (EMA) weights."""
    found = check_task(ckpt, task or TASKS)
    weights, _ = ckpt.select("ema" if use_ema else "auto")
    model = build_dense_model(found, dense_config(ckpt))
    load_exactly(model, weights, ckpt, "the model its own config describes")
    return model.eval()


def load_dense_model(path: Union[str, os.PathLike], task: Optional[str] = None):
    """(model in eval mode with the checkpoint's weights, :class:`DenseCheckpoint`) from a dense checkpoint file."""
    ckpt = read_checkpoint(path)
    model = build_dense_checkpoint_model(ckpt, task=task)
    info = DenseCheckpoint(str(ckpt.task), dense_config(ckpt), list(ckpt.class_names), dict(ckpt.data_config),
                           ckpt.step)
    return model, info
