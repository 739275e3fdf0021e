"""Any checkpoint ``vimamba export`` accepts -> the model to export and what to store beside it.

Every file is read by the one loader (:func:`vimamba.checkpoints.read_checkpoint`). Accepted: classifier
checkpoints of every kind it reads (official ``.pth``, vimamba training checkpoints, ``.safetensors`` / ``.pth``
weights) holding a Vim, and vimamba segmentation checkpoints (``vimamba segment train``). Anything else is a
:class:`CheckpointError` with one line saying why: detection checkpoints (the Mask R-CNN's post-processing is not
exportable here), pretraining checkpoints, classifiers that are not Vim (timm DeiT), corrupt or foreign files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple, Union

import torch.nn as nn

from ..checkpoints.reading import RunCheckpoint, read_checkpoint
from ..dense.checkpoint import dense_config
from ..loader import load_model
from ..models.checkpoint import CheckpointError
from ..models.vim import VisionMamba

__all__ = ["Exportable", "load_exportable"]


@dataclass
class Exportable:
    """A model in eval mode, its task, and the metadata fields that come from its checkpoint."""

    model: nn.Module
    task: str  # "classification" | "segmentation"
    preprocessing: Dict[str, Any]
    class_names: List[str]
    native_size: Tuple[int, int]  # the size to trace at unless told otherwise
    min_size: int  # the smallest side a dynamic export takes (no feature map of one cell: it would be specialised)
    size_multiple: int  # a dynamic export takes sides that are multiples of this
    in_chans: int
    description: str


def _load_segmentation(ckpt: RunCheckpoint, weights: str) -> Exportable:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    model = load_model(ckpt, weights=weights, task="segmentation")
    config = dense_config(ckpt)
    vim = model.backbone.vim
    data = dict(ckpt.data_config)
    crop = tuple(data.get("crop_size") or (512, 512))
    stride = vim.patch_embed.stride
    # every pyramid level at least 2x2 cells; sides on the patch grid (the eager model pads them there itself)
    min_size = max(2 * max(model.backbone.out_strides), vim.patch_embed.patch_size + stride)
    min_size = -(-min_size // stride) * stride
    preprocessing = {"mean": list(IMAGENET_DEFAULT_MEAN), "std": list(IMAGENET_DEFAULT_STD),
                     "scale": list(data.get("scale") or (2048, 512)), "crop_size": list(crop),
                     "eval_mode": data.get("eval_mode", "slide"),
                     "eval_stride": list(data.get("eval_stride") or (341, 341)),
                     "in_chans": vim.cfg.in_chans}
    names = list(ckpt.class_names) or [f"class {i}" for i in range(config.num_classes)]
    return Exportable(model=model.eval(), task="segmentation", preprocessing=preprocessing, class_names=names,
                      native_size=(int(crop[0]), int(crop[1])), min_size=min_size, size_multiple=stride,
                      in_chans=vim.cfg.in_chans,
                      description=f"{ckpt.where} (Vim UperNet segmentor, {config.backbone.model}, "
                                  f"{config.num_classes} classes)")


def _load_classifier(ckpt: RunCheckpoint, weights: str) -> Exportable:
    from ..train.inference import class_names_for
    from ..train.models import classifier_from_checkpoint

    loaded = classifier_from_checkpoint(ckpt, weights=weights)
    if not isinstance(loaded.model, VisionMamba):
        raise CheckpointError(f"{loaded.description} holds a {type(loaded.model).__name__}, not a Vim: "
                              "vimamba export exports Vim classifiers and segmentors")
    model = loaded.model.eval()
    pre = loaded.preprocessing
    return Exportable(model=model, task="classification", preprocessing=pre.to_dict(),
                      class_names=class_names_for(loaded), native_size=tuple(pre.img_size),
                      min_size=model.patch_embed.patch_size + model.patch_embed.stride, size_multiple=1,
                      in_chans=model.cfg.in_chans,
                      description=loaded.description)


def load_exportable(path: Union[str, os.PathLike], weights: str = "auto", trust_pickle: bool = False) -> Exportable:
    """Load ``path`` for export; a :class:`CheckpointError` (one line) for anything that cannot be exported."""
    ckpt = read_checkpoint(path, trust_pickle=trust_pickle)
    if ckpt.task == "detection":
        raise CheckpointError(f"{ckpt.where} is a detection checkpoint: detection models cannot be exported yet "
                              "(export works for Vim classifiers and segmentors)")
    if ckpt.task == "segmentation":
        return _load_segmentation(ckpt, weights)
    return _load_classifier(ckpt, weights)
