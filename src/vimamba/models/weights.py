"""Pretrained weights into a Vim model: the checkpoint filter timm calls, and the loader of local weight files.

Two ways weights arrive when a model is built (both APIs, ``vimamba.create_model`` and ``timm.create_model``, go
through :func:`vimamba.models.registry._create_vim`):

* **From the Hugging Face Hub** (``pretrained=True``): timm downloads the official ``.pth`` named in the variant's
  pretrained cfg and passes the whole file to :func:`checkpoint_filter_fn`, which takes the trained weights out of
  the official ``{"model", "model_ema", "optimizer", "args", ...}`` layout, strips wrapper prefixes, resizes
  ``pos_embed`` to the model's patch grid and refuses weights of another architecture. timm then replaces the head
  when another number of classes was asked for and adapts the patch embedding to another number of channels.
* **From a local file** (``pretrained_cfg_overlay=dict(file=PATH)`` or ``vimamba.create_model(pretrained=PATH)``):
  the registry marks the cfg ``custom_load`` so that timm calls ``model.load_pretrained(PATH)``, i.e.
  :func:`load_pretrained` here. It reads the file with vimamba's loader (official ``.pth``, bare state_dicts,
  vimamba ``.pth`` and ``.safetensors``; the trained weights rather than the EMA ones unless asked) and applies the
  same adaptations and refusals. timm's own file loader would prefer ``model_ema`` and could not read a
  vimamba checkpoint's metadata.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Union

import torch
import torch.nn as nn

from ..checkpoints.reading import read_checkpoint
from ..checkpoints.state_dicts import select_weights
from .checkpoint import Checkpoint, LoadReport, load_checkpoint, prepare_state_dict

__all__ = ["checkpoint_filter_fn", "load_pretrained", "replaces_head"]


def replaces_head(model: nn.Module) -> bool:
    """timm's rule: the pretrained head is replaced when the model was built for another number of classes than
    its pretrained cfg names (``num_classes=`` given, or ``features_only``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return getattr(model, "num_classes", None) != cfg.get("num_classes", getattr(model, "num_classes", None))


def checkpoint_filter_fn(state_dict: Dict[str, object], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Official (or any Vim) checkpoint -> a state_dict for ``model`` (timm's ``pretrained_filter_fn``).

    Accepts a whole official training checkpoint (the trained ``model`` weights are taken, else ``model_ema``), a
    bare state_dict, or one with ``module.``/``_orig_mod.`` prefixes. ``pos_embed`` is resized to the model's grid
    with the class slot in the middle. A classifier head of another shape is dropped only when the model was built
    for another number of classes, and the patch embedding's input channels are left for timm to adapt; any other
    difference raises :class:`~vimamba.models.checkpoint.CheckpointError` naming the missing, unexpected and
    mis-shaped keys.
    """
    weights, key = select_weights(state_dict, "auto", "the pretrained checkpoint")
    ckpt = Checkpoint(state_dict=weights, weights_key=key)
    adapted, _ = prepare_state_dict(model, ckpt, ignore_head=replaces_head(model), in_chans="leave")
    return adapted


def load_pretrained(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    weights: str = "auto",
    trust_pickle: bool = False,
    ignore_head: Optional[bool] = None,
) -> LoadReport:
    """Load a local weight file into a freshly built model the way timm's pretrained loading would.

    ``ignore_head=None`` applies timm's rule (:func:`replaces_head`); the patch embedding is adapted to the model's
    input channels. Records the file in ``model.pretrained_cfg``.
    """
    ckpt = Checkpoint.from_run(read_checkpoint(path, trust_pickle=trust_pickle), weights)
    report = load_checkpoint(model, ckpt, ignore_head=replaces_head(model) if ignore_head is None else ignore_head,
                             in_chans="adapt")
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        cfg["file"] = str(path)
    return report
