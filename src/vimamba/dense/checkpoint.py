"""Dense-model checkpoints: what a training checkpoint stores to rebuild its model, and loading it back.

Next to the training state (:mod:`vimamba.engine.checkpointing`), every segmentation / detection checkpoint holds

==================  ====================================================================================
``dense_task``      ``"segmentation"`` or ``"detection"``
``dense_config``    the :class:`SegmentorConfig` / :class:`DetectorConfig` as a dict (backbone included)
``class_names``     the class names, in label order (detection: without background)
``data_config``     the data settings evaluation and prediction reuse (rescale size, crop, label handling)
==================  ====================================================================================

so ``vimamba segment|detect eval|predict`` need nothing but the file.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn as nn

from ..models.checkpoint import CheckpointError
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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: '{path}'")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"could not read '{path}' as a checkpoint ({type(e).__name__}: {e}); the file may be "
                              "truncated") from e
    if not isinstance(obj, dict) or obj.get("dense_task") not in TASKS or "model" not in obj:
        hint = ""
        if isinstance(obj, dict) and ("model" in obj or any(str(k).startswith("layers.") for k in obj)):
            hint = (" It looks like a classification checkpoint: use it to initialise the backbone of a new run "
                    "(--pretrained).")
        raise CheckpointError(f"'{path}' is not a vimamba segmentation/detection checkpoint.{hint}")
    found = obj["dense_task"]
    if task is not None and found != task:
        raise CheckpointError(f"'{path}' is a {found} checkpoint, not a {task} one")
    config_cls = SegmentorConfig if found == "segmentation" else DetectorConfig
    config = config_cls.from_dict(dict(obj["dense_config"]))
    model = build_dense_model(found, config)
    try:
        model.load_state_dict(obj["model"])
    except RuntimeError as e:
        raise CheckpointError(f"the weights in '{path}' do not fit the model its own config describes: {e}") from e
    model.eval()
    info = DenseCheckpoint(found, config, list(obj.get("class_names") or []), dict(obj.get("data_config") or {}),
                           obj.get("global_step"))
    return model, info
