"""The Vim models as timm models: entrypoints, pretrained cfgs naming the official weights, and ``create_model``.

Every variant of :mod:`vimamba.models.variants` is a timm entrypoint of this module, registered with
``timm.models.register_model`` and built by ``timm.models.build_model_with_cfg`` with a pretrained cfg that names
the official Hugging Face weights and :func:`vimamba.models.weights.checkpoint_filter_fn` as its filter. So after
``import vimamba`` every timm idiom works on them::

    timm.create_model("vim_tiny_patch16_224", pretrained=True)                       # official weights (network)
    timm.create_model("vim_tiny_patch16_224", pretrained=True,
                      pretrained_cfg_overlay=dict(file="vim_t_midclstok_76p1acc.pth"))  # a local file, offline
    timm.create_model("vim_small_patch16_224", features_only=True, out_indices=(5, 11, 17, 23))
    timm.create_model("vim_tiny_patch16_224", num_classes=10, in_chans=1, img_size=96)

``vimamba.create_model(name, pretrained=None|True|PATH, **overrides)`` is a thin layer over the same path: the
registered name plus :class:`VimConfig` overrides (``embed_dim``, ``depth``, ``d_state``, ``patch_size``,
``stride``, ``img_size``, ``in_chans``, ``num_classes``, ...), so small models for CPU work need no new
registration. The official long names are registered too, as aliases.
"""
from __future__ import annotations

import os
from typing import Union

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg

from ..errors import DownloadError, InputError
from .variants import (OFFICIAL_REPOSITORY, VARIANTS, ModelEntry, find_registered_name, get_model_entry,
                       list_models, model_config, resolve_name)
from .vim import VimConfig, VisionMamba
from .weights import checkpoint_filter_fn, load_pretrained

__all__ = ["ModelEntry", "create_model", "list_models", "find_registered_name", "get_model_entry",
           "resolve_name", "model_config", "default_cfgs"]


# ---------------------------------------------------------------------------------------------------- pretrained cfgs
def _cfg(entry: ModelEntry) -> dict:
    """The official weights and their preprocessing: resize 256 bicubic, centre crop 224, ImageNet mean/std."""
    return dict(
        hf_hub_id=entry.hf_hub_id, hf_hub_filename=entry.hf_hub_filename,
        num_classes=1000, input_size=(3, 224, 224), pool_size=None, crop_pct=0.875, interpolation="bicubic",
        fixed_input_size=False, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv="patch_embed.proj", classifier="head", license="apache-2.0", origin_url=OFFICIAL_REPOSITORY,
        paper_ids="arXiv:2401.09417",
        paper_name="Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model",
        notes=(f"official ImageNet-1k top-1 {entry.top1}",) + ((entry.notes,) if entry.notes else ()),
    )


default_cfgs = generate_default_cfgs({
    name: _cfg(entry) for entry in VARIANTS.values() for name in (entry.name, *entry.aliases)
})

# Keyword arguments of an entrypoint that are not VimConfig fields: timm's builder consumes them.
_BUILDER_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only", "feature_cls",
                   "out_indices", "pretrained_strict", "pretrained_model_args", "pruned")


def _pretrained_cfg(variant: str, pretrained_cfg, pretrained_cfg_overlay) -> dict:
    """The resolved pretrained cfg; a local ``file`` is read by vimamba's loader (``model.load_pretrained``)."""
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg,
                                 pretrained_cfg_overlay=pretrained_cfg_overlay).to_dict()
    overlay = pretrained_cfg_overlay or {}
    if cfg.get("file") and not cfg.get("state_dict") and cfg.get("source") not in ("hf-hub", "local-dir"):
        cfg["custom_load"] = overlay.get("custom_load", True)
    return cfg


def _create_vim(variant: str, pretrained: bool = False, **kwargs) -> VisionMamba:
    """Build a registered variant (or alias) through timm's ``build_model_with_cfg``.

    ``kwargs``: :class:`VimConfig` fields overriding the variant's, plus timm's ``features_only``/``out_indices``
    (default: the last 4 blocks, each a (B, D, H/stride, W/stride) map), ``pretrained_cfg[_overlay]``,
    ``cache_dir``, ``device``/``dtype``, and ``dynamic_img_size`` (accepted and ignored: a Vim always takes any
    image size).
    """
    canonical = resolve_name(variant)
    entry = VARIANTS[canonical]
    kwargs.pop("dynamic_img_size", None)
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    model_config(variant, **{k: v for k, v in kwargs.items() if k not in _BUILDER_KWARGS})  # clear errors first
    features_only = kwargs.get("features_only", False)
    if features_only:
        kwargs.setdefault("num_classes", 0)  # a feature extractor has no head (timm drops the pretrained one)
    cfg = _pretrained_cfg(variant, kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None))
    out_indices = kwargs.pop("out_indices", 4)
    try:
        model = build_model_with_cfg(
            VisionMamba, variant, pretrained,
            pretrained_cfg=cfg,
            model_cfg=VimConfig(**entry.config),
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
            **kwargs,
        )
    except (OSError, ImportError) as e:
        if not (pretrained and not cfg.get("file") and not cfg.get("state_dict") and cfg.get("hf_hub_id")):
            raise
        raise DownloadError(
            f"could not download the official weights of {canonical} ({cfg['hf_hub_filename']}) from "
            f"https://huggingface.co/{cfg['hf_hub_id']} ({type(e).__name__}: {e}). Without network, download the "
            f"file elsewhere and pass pretrained='path/to/{cfg['hf_hub_filename']}' (vimamba) or "
            f"pretrained_cfg_overlay=dict(file='path/to/{cfg['hf_hub_filename']}') (timm)."
        ) from e
    vim = model.model if features_only else model
    vim.arch = canonical
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


# ---------------------------------------------------------------------------------------------------- entrypoints
@register_model
def vim_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti: D 192, 24 blocks, 16x16 patches at stride 16 (196 at 224 px). Official top-1 76.1."""
    return _create_vim("vim_tiny_patch16_224", pretrained, **kwargs)


@register_model
def vim_tiny_patch16_stride8_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti+: Vim-Ti at stride 8 (729 patches at 224 px), fine-tuned 30 epochs. Official top-1 78.3."""
    return _create_vim("vim_tiny_patch16_stride8_224", pretrained, **kwargs)


@register_model
def vim_small_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S: D 384, 24 blocks, 16x16 patches at stride 16. Official top-1 80.5."""
    return _create_vim("vim_small_patch16_224", pretrained, **kwargs)


@register_model
def vim_small_patch16_stride8_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S+: Vim-S at stride 8 (729 patches at 224 px), fine-tuned 30 epochs. Official top-1 81.6."""
    return _create_vim("vim_small_patch16_stride8_224", pretrained, **kwargs)


@register_model
def vim_base_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-B: D 768, 24 blocks, 16x16 patches at stride 16. Official top-1 81.9."""
    return _create_vim("vim_base_patch16_224", pretrained, **kwargs)


# The official model names (hustvl/Vim ``vim/models_mamba.py``), as aliases.
@register_model
def vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2(
        pretrained: bool = False, **kwargs) -> VisionMamba:
    """The official name of ``vim_tiny_patch16_224``."""
    return _create_vim("vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
                       pretrained, **kwargs)


@register_model
def vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2(
        pretrained: bool = False, **kwargs) -> VisionMamba:
    """The official name of ``vim_tiny_patch16_stride8_224``."""
    return _create_vim("vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
                       pretrained, **kwargs)


@register_model
def vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2(
        pretrained: bool = False, **kwargs) -> VisionMamba:
    """The official name of ``vim_small_patch16_224``."""
    return _create_vim("vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
                       pretrained, **kwargs)


@register_model
def vim_small_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2(
        pretrained: bool = False, **kwargs) -> VisionMamba:
    """The official name of ``vim_small_patch16_stride8_224``."""
    return _create_vim("vim_small_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
                       pretrained, **kwargs)


@register_model
def vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2(
        pretrained: bool = False, **kwargs) -> VisionMamba:
    """The official name of ``vim_base_patch16_224``."""
    return _create_vim("vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2",
                       pretrained, **kwargs)


# ---------------------------------------------------------------------------------------------------- vimamba API
def create_model(
    name: str,
    pretrained: Union[None, bool, str, os.PathLike] = None,
    *,
    weights: str = "auto",
    trust_pickle: bool = False,
    **overrides,
) -> VisionMamba:
    """Build a registered Vim model, optionally with weights: ``timm.create_model`` on the same entrypoint.

    Args:
        name: a registered name or official alias (``vimamba.list_models(include_aliases=True)``).
        pretrained: None/False = random init (the official init); a path = load that checkpoint (official
            ``.pth``, vimamba ``.pth`` or ``.safetensors``), exactly as ``timm.create_model(name, pretrained=True,
            pretrained_cfg_overlay=dict(file=path))``; True = the official weights from the Hugging Face Hub
            (needs network; cached by huggingface_hub).
        weights: with a checkpoint holding both: "auto"/"model" = the trained weights, "ema" = the EMA weights.
        trust_pickle: allow arbitrary pickled objects in a ``.pth`` file you trust.
        **overrides: any :class:`VimConfig` field (``num_classes``, ``img_size``, ``stride``, ``embed_dim``,
            ``depth``, ``drop_path_rate``, ``scan_impl``, ...). Overriding ``num_classes`` with weights gives a
            fresh head; a different ``img_size``/``stride`` resizes the position embedding.
    """
    canonical = resolve_name(name)
    model_config(canonical, **overrides)  # unknown arguments: a clear TypeError before timm sees them
    if pretrained is True:
        if weights not in ("auto", "model") or trust_pickle:
            raise InputError("weights= and trust_pickle= apply to a checkpoint file: pass pretrained=PATH (the "
                             "official files are on https://huggingface.co/hustvl); pretrained=True loads the "
                             "trained weights of the official file")
        return timm.create_model(canonical, pretrained=True, **overrides)
    if not pretrained:
        return timm.create_model(canonical, pretrained=False, **overrides)
    model = timm.create_model(canonical, pretrained=False, pretrained_cfg_overlay=dict(file=os.fspath(pretrained)),
                              **overrides)
    load_pretrained(model, pretrained, weights=weights, trust_pickle=trust_pickle)
    return model
