"""Classifiers for training and inference: vimamba's Vim models and timm models (DeiT) behind one factory.

A *model spec* ``{"family": "vim"|"timm", "name": ..., "kwargs": {...}}`` says how to build a network; checkpoints
store it (as their ``arch``), so ``vimamba eval`` / ``predict`` rebuild exactly what was trained, DeiT included.
Every checkpoint is read by the one loader (:mod:`vimamba.checkpoints`): Vim weights from anywhere else (official
``.pth`` files, ``vimamba convert`` / exported ``.safetensors``) are built from the architecture stored in or
inferred from the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import torch.nn as nn

from ..checkpoints.reading import PREPROCESSING_KEY, RunCheckpoint, read_checkpoint
from ..loader import load_model
from ..data.transforms import Preprocessing
from ..errors import InputError
from ..models.registry import create_model, list_models, model_config, resolve_name

__all__ = ["create_classifier", "LoadedClassifier", "load_classifier", "classifier_from_checkpoint",
           "count_parameters", "describe_model", "is_vim_model", "MODEL_SPEC_KEY", "PREPROCESSING_KEY"]

MODEL_SPEC_KEY = "model_spec"  # training checkpoints: how to rebuild the network (Vim or timm)
PathLike = Union[str, os.PathLike]

# Size arguments and the keyword each family calls them.
_VIM_KWARGS = {"img_size": "img_size", "patch_size": "patch_size", "stride": "stride", "embed_dim": "embed_dim",
               "depth": "depth", "d_state": "d_state", "in_chans": "in_chans", "num_classes": "num_classes",
               "drop_path": "drop_path_rate", "drop": "drop_rate"}
_TIMM_KWARGS = {"img_size": "img_size", "patch_size": "patch_size", "embed_dim": "embed_dim", "depth": "depth",
                "num_heads": "num_heads", "in_chans": "in_chans", "num_classes": "num_classes",
                "drop_path": "drop_path_rate", "drop": "drop_rate"}
# Overrides that change the network's shape (a model named vim_tiny_... with embed_dim=96 is no longer Vim-Ti).
_SHAPE_ARGS = ("patch_size", "stride", "embed_dim", "depth", "d_state", "num_heads", "in_chans")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe_model(model: nn.Module, name: str) -> str:
    """What was built, in words: "Vim 0.49M (D=96, depth 6, patch 7)" rather than the name of the registered
    variant it was made from; timm ViTs alike ("DeiT 0.54M (D=96, depth 6, 3 heads, patch 7)")."""
    millions = count_parameters(model) / 1e6
    size = f"{millions:.2f}M" if millions < 10 else f"{millions:.1f}M"
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "d_state"):  # a vimamba VisionMamba
        stride = f", stride {cfg.stride}" if cfg.stride != cfg.patch_size else ""
        return f"Vim {size} (D={cfg.embed_dim}, depth {cfg.depth}, N={cfg.d_state}, patch {cfg.patch_size}{stride})"
    kind = "DeiT" if name.lower().startswith("deit") else name
    details = []
    if hasattr(model, "embed_dim"):
        details.append(f"D={model.embed_dim}")
    blocks = getattr(model, "blocks", None)
    if blocks is not None and hasattr(blocks, "__len__"):
        details.append(f"depth {len(blocks)}")
        heads = getattr(getattr(blocks[0], "attn", None), "num_heads", None) if len(blocks) else None
        if heads:
            details.append(f"{heads} heads")
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None:
        details.append(f"patch {patch[0] if isinstance(patch, (tuple, list)) else patch}")
    return f"{kind} {size}" + (f" ({', '.join(details)})" if details else "")


def is_vim_model(name: str) -> bool:
    try:
        resolve_name(name)
        return True
    except KeyError:
        return False


def create_classifier(name: str, **sizes: Any) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build a Vim (vimamba registry) or timm model with size overrides; returns ``(model, model_spec)``.

    ``sizes`` keys: img_size, patch_size, stride (Vim), embed_dim, depth, d_state (Vim), num_heads (timm),
    in_chans, num_classes, drop_path, drop. ``None`` values keep the model's own.
    """
    sizes = {k: v for k, v in sizes.items() if v is not None}
    if is_vim_model(name):
        if "num_heads" in sizes:
            raise InputError(f"{name} is a Vision Mamba: it has no attention heads (--num-heads)")
        canonical = resolve_name(name)
        if "patch_size" in sizes and "stride" not in sizes:
            # keep the model's overlap: non-overlapping patches stay non-overlapping (stride = patch)
            base = model_config(canonical)
            sizes["stride"] = sizes["patch_size"] if base.stride == base.patch_size else min(base.stride,
                                                                                             sizes["patch_size"])
        kwargs = {_VIM_KWARGS[k]: v for k, v in sizes.items()}
        model = create_model(canonical, **kwargs)
        if any(k in sizes for k in _SHAPE_ARGS if k != "in_chans"):
            model.arch = None  # a custom architecture: do not label it as the registered variant
        return model, {"family": "vim", "name": canonical, "kwargs": kwargs}

    import timm

    if not timm.is_model(name):
        close = list_models(f"*{name.split('_')[0]}*")[:5] or timm.list_models(f"*{name.split('_')[0]}*")[:5]
        raise InputError(f"unknown model {name!r}: neither a vimamba model (`vimamba models`) nor a timm model"
                         + (f"; similar: {close}" if close else ""))
    stride = sizes.pop("stride", None)
    if stride is not None and stride != sizes.get("patch_size", stride):
        raise InputError(f"--stride applies to Vim models only ({name} uses non-overlapping patches)")
    if "d_state" in sizes:
        raise InputError(f"--d-state applies to Vim models only, not {name}")
    kwargs = {_TIMM_KWARGS[k]: v for k, v in sizes.items()}
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        raise InputError(f"timm model {name} does not take these options {sorted(kwargs)}: {e}") from e
    return model, {"family": "timm", "name": name, "kwargs": kwargs}


@dataclass
class LoadedClassifier:
    """A model ready for inference, with how to prepare its inputs and what its outputs mean."""

    model: nn.Module
    preprocessing: Preprocessing
    class_names: Optional[List[str]]
    description: str  # what was loaded, for messages


def _default_preprocessing(model: nn.Module) -> Preprocessing:
    """The official Vim evaluation preprocessing at the model's native size (resize /0.875 bicubic, crop, ImageNet
    mean/std; for 1-channel models the mean/std of the three ImageNet channels averaged)."""
    cfg = getattr(model, "cfg", None)
    img_size = tuple(cfg.img_size) if cfg is not None else (224, 224)
    in_chans = cfg.in_chans if cfg is not None else 3
    pre = Preprocessing(img_size=img_size)
    if in_chans != 3:
        mean, std = sum(pre.mean) / 3, sum(pre.std) / 3
        pre = Preprocessing(img_size=img_size, in_chans=in_chans, mean=(mean,) * in_chans, std=(std,) * in_chans)
    return pre


def classifier_from_checkpoint(ckpt: RunCheckpoint, *, weights: str = "auto") -> LoadedClassifier:
    """The classifier of a checkpoint the loader read (a checkpoint of another task: one clear error)."""
    model = load_model(ckpt, weights=weights, task="classification")
    pre = ckpt.preprocessing
    _, key = ckpt.select(weights)
    return LoadedClassifier(model=model, preprocessing=Preprocessing.from_dict(pre) if pre else
                            _default_preprocessing(model), class_names=ckpt.class_names or None,
                            description=ckpt.describe(key))


def load_classifier(path: PathLike, *, weights: str = "auto", trust_pickle: bool = False) -> LoadedClassifier:
    """Load any classifier checkpoint vimamba knows: training checkpoints (Vim or timm), exported weights, official
    Vim ``.pth`` files. ``weights``: "auto"/"model" (trained weights) or "ema"."""
    return classifier_from_checkpoint(read_checkpoint(path, trust_pickle=trust_pickle), weights=weights)
