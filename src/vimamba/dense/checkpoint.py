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

from ..checkpoints.loading import build_model, dense_config, read_checkpoint
from .detector import DetectorConfig, build_detector
from .segmentor import SegmentorConfig, build_segmentor

__all__ = ["DenseCheckpoint", "build_dense_model", "load_dense_model", "TASKS"]

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


def load_dense_model(path: Union[str, os.PathLike], task: Optional[str] = None):
    """(model in eval mode with the checkpoint's weights, :class:`DenseCheckpoint`) from a dense checkpoint file."""
    ckpt = read_checkpoint(path)
    model = build_model(ckpt, task=task or TASKS)
    info = DenseCheckpoint(str(ckpt.task), dense_config(ckpt), list(ckpt.class_names), dict(ckpt.data_config),
                           ckpt.step)
    return model, info
