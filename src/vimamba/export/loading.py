"""Any checkpoint ``vimamba export`` accepts -> the model to export and what to store beside it.

Accepted: classifier checkpoints of every kind :func:`vimamba.train.models.load_classifier` reads (official
``.pth``, vimamba training checkpoints, ``.safetensors`` / ``.pth`` weights) holding a Vim, and vimamba
segmentation checkpoints (``vimamba segment train``). Anything else is a :class:`CheckpointError` with one line
saying why: detection checkpoints (the Mask R-CNN's post-processing is not exportable here), classifiers that are
not Vim (timm DeiT), corrupt or foreign files.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

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


def _dense_task(path: Path) -> Optional[str]:
    """"segmentation"/"detection" for a vimamba dense checkpoint, else None (without judging the file further)."""
    if path.suffix == ".safetensors":
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError):
        return None  # the classifier loader explains what is wrong with the file
    return obj.get("dense_task") if isinstance(obj, dict) else None


def _load_segmentation(path: Path) -> Exportable:
    from ..dense.checkpoint import load_dense_model
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    model, info = load_dense_model(path, task="segmentation")
    vim = model.backbone.vim
    data = dict(info.data_config)
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
    names = list(info.class_names) or [f"class {i}" for i in range(info.config.num_classes)]
    return Exportable(model=model.eval(), task="segmentation", preprocessing=preprocessing, class_names=names,
                      native_size=(int(crop[0]), int(crop[1])), min_size=min_size, size_multiple=stride,
                      in_chans=vim.cfg.in_chans,
                      description=f"'{path}' (Vim UperNet segmentor, {info.config.backbone.model}, "
                                  f"{info.config.num_classes} classes)")


def _load_classifier(path: Path, weights: str, trust_pickle: bool) -> Exportable:
    from ..train.inference import class_names_for
    from ..train.models import load_classifier

    loaded = load_classifier(path, weights=weights, trust_pickle=trust_pickle)
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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: '{path}'")
    task = _dense_task(path)
    if task == "detection":
        raise CheckpointError(f"'{path}' is a detection checkpoint: detection models cannot be exported yet "
                              "(export works for Vim classifiers and segmentors)")
    if task == "segmentation":
        return _load_segmentation(path)
    return _load_classifier(path, weights, trust_pickle)
