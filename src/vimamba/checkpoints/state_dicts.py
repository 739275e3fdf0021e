"""What a dict of weights is: wrapper prefixes, the trained and EMA weights inside a training checkpoint, and the
Vim architecture its shapes imply.

Pure functions on dicts (no file is opened here): the loader (:mod:`.loading`) uses them to read official ``.pth``
files and bare state_dicts, timm's checkpoint filter to take the weights out of a downloaded official file, and the
weight loader's mismatch messages to name the architecture a checkpoint looks like.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch

from ..errors import InputError
from ..models.pos_embed import infer_square_grid
from .format import CheckpointFormatError

__all__ = ["clean_state_dict", "is_state_dict", "MODEL_KEYS", "EMA_KEYS", "select_weights", "infer_config",
           "describe_foreign"]

# Containers in which training scripts store weights, in order of preference.
MODEL_KEYS = ("model", "state_dict", "module", "model_state_dict")
EMA_KEYS = ("model_ema", "state_dict_ema", "ema")


def clean_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Strip wrapper prefixes (``module.`` from DDP, ``_orig_mod.`` from torch.compile)."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def is_state_dict(obj: Any) -> bool:
    """A non-empty dict of name -> tensor."""
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def select_weights(obj: Any, weights: str = "auto",
                   where: str = "the checkpoint") -> Tuple[Dict[str, torch.Tensor], str]:
    """The weights inside a checkpoint dict and where they were: ``(clean state_dict, "'model'")``.

    A bare state_dict is returned as it is. In a training checkpoint (the official ``{"model", "model_ema",
    "optimizer", "args", ...}`` layout, or ``state_dict``/``module``/``model_state_dict``), ``weights`` picks the
    trained weights ("model"), the EMA weights ("ema"), or the trained weights else the EMA ones ("auto").
    """
    if weights not in ("auto", "model", "ema"):
        raise InputError(f"weights must be 'auto', 'model' or 'ema', got {weights!r}")
    if is_state_dict(obj):
        if weights == "ema":
            raise CheckpointFormatError(f"{where} is a bare state_dict; it has no EMA weights")
        return clean_state_dict(obj), "(bare state_dict)"
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{where} holds a {type(obj).__name__}, not model weights")
    model_keys = [k for k in MODEL_KEYS if is_state_dict(obj.get(k))]
    ema_keys = [k for k in EMA_KEYS if is_state_dict(obj.get(k))]
    candidates = {"ema": ema_keys, "model": model_keys}.get(weights, model_keys + ema_keys)
    if not candidates:
        wanted = {"ema": "EMA weights (model_ema)", "model": "model weights (model)"}.get(weights, "model weights")
        raise CheckpointFormatError(f"no {wanted} found in {where}; its top-level keys are {sorted(map(str, obj))}")
    key = candidates[0]
    return clean_state_dict(obj[key]), f"'{key}'"


def infer_config(state_dict: Dict[str, torch.Tensor]) -> Optional[dict]:
    """The VimConfig fields a Vim state_dict implies (None if it is not a Vim state_dict).

    The patch stride is not stored in the weights: it is inferred from the position-embedding length assuming the
    official 224x224 input (so 730 slots -> stride 8), else stride = patch size at the matching image size.
    """
    needed = ("patch_embed.proj.weight", "pos_embed", "layers.0.mixer.A_log", "layers.0.mixer.dt_proj.weight")
    if not all(k in state_dict for k in needed):
        return None
    proj = state_dict["patch_embed.proj.weight"]
    embed_dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    layer_ids = {int(k.split(".")[1]) for k in state_dict if k.startswith("layers.") and k.split(".")[1].isdigit()}
    a_log = state_dict["layers.0.mixer.A_log"]
    conv = state_dict.get("layers.0.mixer.conv1d.weight")
    config = dict(
        embed_dim=embed_dim,
        in_chans=in_chans,
        patch_size=patch,
        depth=max(layer_ids) + 1,
        d_state=a_log.shape[1],
        expand=max(1, a_log.shape[0] // embed_dim),
        dt_rank=state_dict["layers.0.mixer.dt_proj.weight"].shape[1],
        num_classes=state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0,
    )
    if conv is not None:
        config["d_conv"] = conv.shape[-1]
    if config["dt_rank"] == math.ceil(embed_dim / 16):
        config["dt_rank"] = None
    try:
        grid = infer_square_grid(state_dict["pos_embed"].shape[1])[0]
    except ValueError:
        return config
    stride_at_224 = (224 - patch) / (grid - 1) if grid > 1 else None
    if stride_at_224 is not None and stride_at_224.is_integer() and 0 < stride_at_224 <= patch:
        config.update(img_size=224, stride=int(stride_at_224))
    else:
        config.update(img_size=grid * patch, stride=patch)
    return config


def describe_foreign(state_dict: Dict[str, torch.Tensor]) -> str:
    """What a state_dict that is not a Vim classifier's looks like, in words (for error messages)."""
    keys = set(state_dict)
    if any(k.startswith("rope.freqs") for k in keys):
        return ("an early (January 2024) RoPE Vim checkpoint without a middle class token; vimamba implements the "
                "released middle-class-token models (hustvl/Vim-*-midclstok)")
    if any(".attn.qkv." in k for k in keys):
        return "a ViT/DeiT (attention) checkpoint, not a Vision Mamba one; build it with timm"
    if any(k.startswith("backbone.") for k in keys):
        return "a detection/segmentation checkpoint (keys start with 'backbone.'); load it with vimamba's dense tools"
    if any(k.startswith("encoder.") for k in keys):
        return ("the weights of a pretraining objective (keys start with 'encoder.') without the record of what was "
                "pretrained")
    sample = ", ".join(sorted(keys)[:5])
    return f"not a Vision Mamba checkpoint (first keys: {sample})"
