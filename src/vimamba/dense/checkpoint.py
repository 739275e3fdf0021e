"""Dense-model checkpoints: what a training checkpoint stores to rebuild its model, and loading it back.

Next to the training state (:mod:`vimamba.train.checkpointing`), every segmentation / detection checkpoint holds

==================  ====================================================================================
``dense_task``      ``"segmentation"`` or ``"detection"``
``dense_config``    the :class:`SegmentorConfig` / :class:`DetectorConfig` as a dict (backbone included)
``class_names``     the class names, in label order (detection: without background)
``data_config``     the data settings evaluation and prediction reuse (rescale size, crop, label handling)
==================  ====================================================================================

so ``vimamba segment|detect eval|predict`` need nothing but the file. Files are read by the one loader
(:mod:`vimamba.checkpoints`), which also reads the current checkpoint format.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

import torch.nn as nn

from ..checkpoints.loading import build_model, dense_config, read_checkpoint
from .detector import DetectorConfig, build_detector
from .segmentor import SegmentorConfig, build_segmentor

__all__ = ["DenseCheckpoint", "dense_checkpoint_extra", "build_dense_model", "load_dense_model", "TASKS"]

TASKS = ("segmentation", "detection")


@dataclass
class DenseCheckpoint:
    """What a dense checkpoint says about its model."""

    task: str
    config: Union[SegmentorConfig, DetectorConfig]
    class_names: List[str]
    data_config: Dict[str, Any]
    iteration: Optional[int] = None


def dense_checkpoint_extra(task: str, config: Union[SegmentorConfig, DetectorConfig], class_names,
                           data_config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The keys a dense training run adds to each checkpoint."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return {"dense_task": task, "dense_config": config.to_dict(), "class_names": list(class_names),
            "data_config": dict(data_config or {})}


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
