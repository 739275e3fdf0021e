"""The models under test: Vim models from vimamba's registry, anything else from timm (DeiT, ViT, ...).

timm models are built with ``dynamic_img_size=True`` so that one model runs at every resolution (position
embeddings interpolated on the fly, as Vim does). Their attention runs one of two ways:

``"sdpa"``  PyTorch's ``scaled_dot_product_attention`` (timm's default): flash / memory-efficient kernels whose
            memory grows linearly with the number of tokens L.
``"math"``  timm's plain path ``softmax(q @ k^T * scale) @ v``, which materialises the (heads, L, L) attention
            matrix of every image, so its memory grows as L^2. This is the DeiT of the Vim paper's Figure 1
            (its memory curve only fits a materialised L x L matrix; see docs/benchmarks.md).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from ..errors import InputError

__all__ = ["ATTENTION_MODES", "is_vim_model", "build_model", "uses_attention", "count_tokens", "input_resolution",
           "model_label",
           "count_parameters", "describe_on_meta"]

ATTENTION_MODES = ("sdpa", "math")


def is_vim_model(name: str) -> bool:
    """True for names in vimamba's registry (including the official long aliases)."""
    from ..models.registry import resolve_name

    try:
        resolve_name(name)
    except KeyError:
        return False
    return True


def _set_fused_attention(model: nn.Module, fused: bool) -> int:
    """Set timm's ``fused_attn`` switch on every attention module; returns how many were switched."""
    switched = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
            switched += 1
    return switched


def uses_attention(model: nn.Module) -> bool:
    """Whether the model has timm attention modules (whose implementation ``--attention`` selects)."""
    return any(hasattr(module, "fused_attn") for module in model.modules())


def build_model(
    name: str,
    *,
    attention: Optional[str] = None,
    scan_impl: Optional[str] = None,
    model_args: Optional[Dict[str, object]] = None,
) -> nn.Module:
    """Build a model for benchmarking (random weights; speed and memory do not depend on them).

    Args:
        name: a vimamba model name (``vim_tiny_patch16_224``) or any timm model name (``deit_tiny_patch16_224``).
        attention: timm models only: "sdpa" or "math" (see the module docstring); None keeps timm's default.
        scan_impl: Vim models only: the selective-scan implementation (None or "auto" = automatic).
        model_args: keyword overrides passed to the model constructor (e.g. ``depth=2`` for a quick run).
    """
    model_args = dict(model_args or {})
    if is_vim_model(name):
        from ..models.registry import create_model

        if scan_impl not in (None, "auto"):
            model_args["scan_impl"] = scan_impl
        return create_model(name, **model_args)

    import timm

    if not timm.is_model(name):
        raise InputError(f"unknown model {name!r}: neither a vimamba model (`vimamba models`) nor a timm model")
    try:
        model = timm.create_model(name, pretrained=False, dynamic_img_size=True, **model_args)
    except TypeError:  # architectures without dynamic_img_size (CNNs) take any size anyway
        model = timm.create_model(name, pretrained=False, **model_args)
    if attention is not None:
        if attention not in ATTENTION_MODES:
            raise InputError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        if _set_fused_attention(model, fused=attention == "sdpa") == 0:
            raise InputError(f"{name} has no timm attention modules; --attention does not apply to it")
    return model


def _grid(model: nn.Module, resolution: int) -> Optional[Tuple[int, int]]:
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None:
        return None
    if hasattr(patch_embed, "feat_size"):  # vimamba's PatchEmbed: (H - p) // s + 1
        return patch_embed.feat_size((resolution, resolution))
    if hasattr(patch_embed, "dynamic_feat_size"):  # timm's PatchEmbed
        return patch_embed.dynamic_feat_size((resolution, resolution))
    return None


def count_tokens(model: nn.Module, resolution: int) -> Optional[int]:
    """Length of the token sequence for a square image: patches plus class/register tokens (None for CNNs)."""
    grid = _grid(model, resolution)
    if grid is None:
        return None
    if grid[0] < 1 or grid[1] < 1:
        raise InputError(f"a {resolution}x{resolution} image is smaller than one patch of {type(model).__name__}")
    return grid[0] * grid[1] + int(getattr(model, "num_prefix_tokens", 0))


def input_resolution(model: nn.Module, resolution: int) -> int:
    """The image size actually fed to the model for a nominal ``resolution``.

    Vim's patch embedding is a strided convolution: at 738 px it makes 46 x 46 patches and ignores the last 2 pixel
    rows and columns. timm's ViT patch embedding (without ``dynamic_img_pad``) refuses sizes that are not a multiple
    of the patch size; it is given the same pixels Vim uses, the largest multiple of the patch size, hence the same
    46 x 46 patches. Padding instead (``dynamic_img_pad``) would give DeiT 47 x 47 patches, more work than Vim.
    """
    patch_embed = getattr(model, "patch_embed", None)
    patch = getattr(patch_embed, "patch_size", None)
    if patch is None or hasattr(patch_embed, "feat_size") or getattr(patch_embed, "dynamic_img_pad", False):
        return resolution
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    return resolution - resolution % patch


def model_label(name: str, attention: Optional[str]) -> str:
    """The name a configuration has in tables and figures."""
    return name if attention is None else f"{name} ({attention} attention)"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe_on_meta(name: str, attention: Optional[str], model_args: Dict[str, object]) -> nn.Module:
    """Build the model on the meta device (no memory, no compute) to check a name and its arguments early."""
    with torch.device("meta"):
        return build_model(name, attention=attention, model_args=model_args)
