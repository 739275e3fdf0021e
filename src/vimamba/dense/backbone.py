"""Vim as a dense-prediction backbone: block features as 2-D maps and a ViTDet-style simple feature pyramid.

A plain (non-hierarchical) Vim produces one token grid at the patch stride s (16 for the released models, 8 for
the "+" models). Dense heads want maps at strides 4, 8, 16, 32 (and 64 for detection). Following ViTDet (Li et
al., "Exploring Plain Vision Transformer Backbones for Object Detection", 2022) and the official Vim segmentation
neck, each pyramid level is obtained from a block's token map by resampling with a power-of-two factor::

    feature_k = block output of out_indices[k] (mixer output or residual stream), class token removed,
                reshaped to (B, D, H/s, W/s)
    level_k   = up_{s/t_k}(feature_k)   by 2x2 stride-2 transposed convolutions (norm + GELU in between), or
                down_{t_k/s}(feature_k) by 2x2 max-pooling, or feature_k itself when t_k = s
    [optional ViTDet projection: 1x1 conv + norm, 3x3 conv + norm, to ``out_channels``]
    extra     = max_pool(kernel 1, stride 2)(last level)             (stride 2 t_last, for detection)

With ``out_indices`` of one block (ViTDet) every level is resampled from that block; with one block per level
(the official segmentation setting, blocks 5, 11, 17, 23 of 24) level k uses block k.

Input images of any size work: they are padded (bottom/right, with zeros) so that the patch grid is exactly
ceil(H/s) x ceil(W/s) and every level's stride is exact.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d

from ..errors import InputError
from ..models.registry import create_model
from ..models.vim import VimConfig, VisionMamba
from .configs import ConfigDict

__all__ = ["BackboneConfig", "VimBackbone", "SimpleFeaturePyramid", "SubmoduleOptimiserHooks", "BackboneHooks",
           "default_out_indices", "prefix_group_matcher", "build_backbone"]

_NORMS = ("bn", "ln", "none")


def _norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "ln":
        return LayerNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise InputError(f"norm must be one of {_NORMS}, got {kind!r}")


def default_out_indices(depth: int, num_levels: int = 4) -> Tuple[int, ...]:
    """The last block of each of ``num_levels`` equal stages: (5, 11, 17, 23) for depth 24 (the official choice)."""
    if depth < num_levels:
        raise InputError(f"a Vim of depth {depth} has fewer blocks than the {num_levels} pyramid levels")
    return tuple(round(depth * (k + 1) / num_levels) - 1 for k in range(num_levels))


@dataclass
class BackboneConfig(ConfigDict):
    """Which Vim, which of its blocks, and how the feature pyramid is built.

    ``vim`` holds :class:`VimConfig` overrides of the registered ``model`` (``img_size`` is the size the position
    embedding is resized to once at build time, normally the training crop; other sizes are resized on the fly).
    """

    model: str = "vim_tiny_patch16_224"
    vim: Dict[str, object] = field(default_factory=dict)
    out_indices: Optional[Tuple[int, ...]] = None  # None: default_out_indices(depth, len(strides))
    feature: str = "mixer"  # "mixer": block's mixer output (official seg tiny); "residual": the residual stream
    norm: bool = False  # apply the final RMSNorm to the features
    strides: Tuple[int, ...] = (4, 8, 16, 32)
    out_channels: Optional[int] = None  # None: keep embed_dim (official seg); an int: ViTDet projection (256)
    pyramid_norm: str = "bn"  # "bn" (official seg, SyncBN under DDP), "ln" (ViTDet), "none"
    extra_pool: bool = False  # add a level at twice the last stride by max-pooling (detection: P6)

    def __post_init__(self) -> None:
        self.strides = tuple(int(s) for s in self.strides)
        if self.out_indices is not None:
            self.out_indices = tuple(int(i) for i in self.out_indices)
        if self.feature not in ("mixer", "residual"):
            raise InputError(f"feature must be 'mixer' or 'residual', got {self.feature!r}")
        if self.pyramid_norm not in _NORMS:
            raise InputError(f"pyramid_norm must be one of {_NORMS}, got {self.pyramid_norm!r}")
        if not self.strides or any(s < 1 for s in self.strides) or list(self.strides) != sorted(set(self.strides)):
            raise InputError(f"strides must be increasing positive integers, got {self.strides}")



class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid: one stride-s map (or one per level) -> maps at the requested strides."""

    def __init__(
        self,
        in_channels: int,
        in_stride: int,
        strides: Sequence[int] = (4, 8, 16, 32),
        out_channels: Optional[int] = None,
        norm: str = "bn",
        extra_pool: bool = False,
    ):
        super().__init__()
        self.in_stride = in_stride
        self.strides = tuple(strides)
        self.extra_pool = extra_pool
        self.out_channels = out_channels or in_channels
        self.resamplers = nn.ModuleList(self._resampler(in_channels, in_stride, t, norm) for t in self.strides)
        if out_channels is None:
            self.projections = nn.ModuleList(nn.Identity() for _ in self.strides)
        else:  # ViTDet: 1x1 conv + norm, 3x3 conv + norm (convs without bias when a norm follows)
            bias = norm == "none"
            self.projections = nn.ModuleList(
                nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, bias=bias), _norm_layer(norm, out_channels),
                    nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias), _norm_layer(norm, out_channels),
                )
                for _ in self.strides
            )

    @staticmethod
    def _resampler(channels: int, in_stride: int, stride: int, norm: str) -> nn.Module:
        ratio = in_stride / stride
        steps = abs(math.log2(ratio))
        if not steps.is_integer():
            raise InputError(f"pyramid stride {stride} is not the backbone stride {in_stride} times a power of two")
        steps = int(steps)
        if ratio < 1:  # downsample by 2x2 max-pooling (ceil mode: a size of ceil(n / 2), odd grids lose no row)
            return nn.Sequential(*[nn.MaxPool2d(2, 2, ceil_mode=True) for _ in range(steps)])
        layers: List[nn.Module] = []
        for k in range(steps):  # upsample by 2x2 stride-2 transposed convs, norm + GELU between them
            if k > 0:
                layers += [_norm_layer(norm, channels), nn.GELU()]
            layers.append(nn.ConvTranspose2d(channels, channels, 2, stride=2))
        return nn.Sequential(*layers) if layers else nn.Identity()

    @property
    def out_strides(self) -> Tuple[int, ...]:
        return self.strides + ((2 * self.strides[-1],) if self.extra_pool else ())

    def forward(self, features: Sequence[torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        if len(features) not in (1, len(self.strides)):
            raise InputError(f"expected 1 or {len(self.strides)} feature maps, got {len(features)}")
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for k, (resample, project) in enumerate(zip(self.resamplers, self.projections)):
            out[str(k)] = project(resample(features[k if len(features) > 1 else 0]))
        if self.extra_pool:
            out["pool"] = F.max_pool2d(out[str(len(self.strides) - 1)], kernel_size=1, stride=2)
        return out


def prefix_group_matcher(matcher: dict, prefix: str) -> dict:
    """A timm ``group_matcher`` dict for a submodule, rewritten for the names it has inside a parent module.

    ``{"blocks": [(r"^layers\\.(\\d+)", None)]}`` with prefix ``"backbone.vim."`` becomes
    ``{"blocks": [(r"^backbone\\.vim\\.layers\\.(\\d+)", None)]}``. Parameters outside the submodule (necks,
    heads) match nothing and timm puts them in the last group, with learning-rate scale 1.
    """
    escaped = prefix.replace(".", r"\.")

    def rewrite(pattern: str) -> str:
        alternatives = pattern.split("|")
        return "|".join("^" + escaped + alt[1:] if alt.startswith("^") else escaped + alt for alt in alternatives)

    out = {}
    for group, spec in matcher.items():
        if isinstance(spec, str):
            out[group] = rewrite(spec)
        elif isinstance(spec, (list, tuple)):
            out[group] = [(rewrite(pattern), suffix) for pattern, suffix in spec]
        else:
            out[group] = spec
    return out


class SubmoduleOptimiserHooks:
    """timm-style optimiser hooks of a module whose Vim sits in the submodule named by ``hooks_submodule``: that
    submodule's group matcher and no-decay names (position embedding, class token), rewritten for the names they have
    here, and its gradient checkpointing."""

    hooks_submodule: str

    def _hooked(self):
        return getattr(self, self.hooks_submodule)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return prefix_group_matcher(self._hooked().group_matcher(coarse), f"{self.hooks_submodule}.")

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {f"{self.hooks_submodule}.{n}" for n in self._hooked().no_weight_decay()}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self._hooked().set_grad_checkpointing(enable)


class VimBackbone(SubmoduleOptimiserHooks, nn.Module):
    """A Vim and a simple feature pyramid: images (B, 3, H, W) -> OrderedDict of maps at ``out_strides``.

    Has ``out_channels`` (torchvision detection models need it), ``out_strides``, and timm's ``group_matcher`` /
    ``no_weight_decay`` with the prefixed names of its parameters, so ``timm.optim.create_optimizer_v2(...,
    layer_decay=)`` scales the learning rate of each ``vim.layers.i``.
    """

    hooks_submodule = "vim"

    def __init__(self, vim: VisionMamba, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        depth = len(vim.layers)
        indices = cfg.out_indices if cfg.out_indices is not None else default_out_indices(depth, len(cfg.strides))
        if len(indices) not in (1, len(cfg.strides)):
            raise InputError(f"out_indices {indices}: give one block, or one per pyramid level ({len(cfg.strides)})")
        if any(not -depth <= i < depth for i in indices):
            raise InputError(f"out_indices {indices} out of range for a Vim of depth {depth}")
        # Keep only the blocks up to the last one used (and the final norm only if the features use it).
        self.out_indices = tuple(vim.prune_intermediate_layers(list(indices), prune_norm=not cfg.norm, prune_head=True))
        self.vim = vim
        self.pyramid = SimpleFeaturePyramid(
            vim.embed_dim, vim.patch_embed.stride, cfg.strides, cfg.out_channels, cfg.pyramid_norm, cfg.extra_pool
        )
        self.out_channels = self.pyramid.out_channels
        self.out_strides = self.pyramid.out_strides

    @property
    def patch_stride(self) -> int:
        return self.vim.patch_embed.stride

    def pad_to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Pad (bottom/right, zeros) so the patch grid is exactly ceil(H / stride) x ceil(W / stride)."""
        patch, stride = self.vim.patch_embed.patch_size, self.patch_stride
        h, w = x.shape[-2:]
        target_h = (math.ceil(h / stride) - 1) * stride + patch
        target_w = (math.ceil(w / stride) - 1) * stride + patch
        if (target_h, target_w) == (h, w):
            return x
        return F.pad(x, (0, max(target_w - w, 0), 0, max(target_h - h, 0)))

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The chosen blocks' outputs as (B, D, ceil(H/s), ceil(W/s)) maps, class token removed."""
        return self.vim.forward_intermediates(
            self.pad_to_grid(x), indices=list(self.out_indices), norm=self.cfg.norm, output_fmt="NCHW",
            intermediates_only=True, feature=self.cfg.feature,
        )

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.pyramid(self.forward_features(x))


class BackboneHooks(SubmoduleOptimiserHooks):
    """timm-style optimiser hooks for a model whose ``backbone`` attribute is a :class:`VimBackbone`.

    The backbone's group matcher and no-decay names, rewritten for the prefixed names ``backbone.vim.*``, so timm's
    layer-wise LR decay scales each ``backbone.vim.layers.i`` and the heads keep the full rate.
    """

    backbone: VimBackbone
    hooks_submodule = "backbone"


def build_backbone(cfg: BackboneConfig, pretrained: Union[None, str, os.PathLike] = None) -> VimBackbone:
    """Build the Vim named by ``cfg.model`` (with ``cfg.vim`` overrides) and its pyramid.

    ``pretrained``: a classification checkpoint; its head is dropped and its position embedding resized to
    ``cfg.vim["img_size"]`` (the model's own size if not given). The backbone never has a classifier head.
    """
    overrides = {k: v for k, v in cfg.vim.items() if k != "num_classes"}
    unknown = set(overrides) - {f.name for f in fields(VimConfig)}
    if unknown:
        known = sorted(f.name for f in fields(VimConfig))
        raise InputError(f"unknown Vim settings {sorted(unknown)}; a Vim takes {known}")
    vim = create_model(cfg.model, pretrained=pretrained or None, num_classes=0, **overrides)
    return VimBackbone(vim, cfg)
