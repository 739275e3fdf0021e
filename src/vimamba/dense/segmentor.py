"""Semantic segmentation with a Vim backbone: simple feature pyramid + UperNet + auxiliary FCN head.

Training loss (as the official MMSegmentation config): per-pixel cross-entropy of the UperNet logits, upsampled to
the label size, plus 0.4 x the cross-entropy of the auxiliary FCN head on the stride-16 level; pixels labelled
``ignore_index`` (255) do not count. Inference: ``whole`` (one pass over the image) or ``slide`` (crops of
``crop_size`` every ``stride`` pixels, logits averaged where crops overlap, as MMSegmentation's slide mode).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from .backbone import BackboneConfig, BackboneHooks, VimBackbone, build_backbone
from .configs import ConfigDict
from .heads import FCNHead, UperNetHead

__all__ = ["SegmentorConfig", "VimSegmentor", "build_segmentor", "segmentation_loss"]


@dataclass
class SegmentorConfig(ConfigDict):
    """A Vim UperNet segmentor. Defaults: the official Vim-Ti ADE20K setting (150 classes, blocks 5/11/17/23)."""

    num_classes: int = 150
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    channels: Optional[int] = None  # UperNet width; None = the pyramid's channels (embed_dim, as the official)
    pool_scales: Tuple[int, ...] = (1, 2, 3, 6)
    dropout: float = 0.1
    aux_level: int = 2  # pyramid level of the auxiliary FCN head (stride 16)
    aux_channels: int = 256
    aux_weight: float = 0.4  # 0 = no auxiliary head
    ignore_index: int = 255

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            self.backbone = BackboneConfig.from_dict(self.backbone)
        self.pool_scales = tuple(int(s) for s in self.pool_scales)
        if self.num_classes < 1:
            raise InputError(f"num_classes must be >= 1, got {self.num_classes}")
        if not 0 <= self.aux_level < len(self.backbone.strides):
            levels = len(self.backbone.strides)
            raise InputError(f"aux_level {self.aux_level} is not one of the {levels} pyramid levels")



def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels (0, not NaN, when a batch has none)."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)


class VimSegmentor(BackboneHooks, nn.Module):
    """images (B, 3, H, W) -> logits (B, num_classes, H, W); with ``labels`` (B, H, W) -> dict of losses."""

    def __init__(self, backbone: VimBackbone, cfg: SegmentorConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        levels = len(backbone.cfg.strides)
        width = cfg.channels or backbone.out_channels
        self.decode_head = UperNetHead([backbone.out_channels] * levels, width, cfg.num_classes, cfg.pool_scales,
                                       cfg.dropout)
        self.auxiliary_head = (FCNHead(backbone.out_channels, cfg.aux_channels, cfg.num_classes, cfg.dropout)
                               if cfg.aux_weight > 0 else None)

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def _upsample(self, logits: torch.Tensor, stride: int, size: Tuple[int, int]) -> torch.Tensor:
        """Logits at ``stride`` of the padded grid -> the (unpadded) input size."""
        full = (logits.shape[-2] * stride, logits.shape[-1] * stride)
        logits = F.interpolate(logits, size=full, mode="bilinear", align_corners=False)
        return logits[..., : size[0], : size[1]]

    def forward(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None):
        size = images.shape[-2:]
        levels = list(self.backbone(images).values())
        strides = self.backbone.cfg.strides
        logits = self._upsample(self.decode_head(levels), strides[0], size)
        if labels is None:
            return logits
        losses = {"loss_decode": segmentation_loss(logits, labels, self.cfg.ignore_index)}
        if self.auxiliary_head is not None:
            aux = self.auxiliary_head(levels[self.cfg.aux_level])
            aux = self._upsample(aux, strides[self.cfg.aux_level], size)
            losses["loss_aux"] = self.cfg.aux_weight * segmentation_loss(aux, labels, self.cfg.ignore_index)
        return losses

    @torch.no_grad()
    def inference(self, images: torch.Tensor, mode: str = "whole", crop_size: Union[int, Tuple[int, int]] = 512,
                  stride: Union[int, Tuple[int, int]] = 341,
                  out_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Class logits for whole images or by sliding window, resized (bilinear) to ``out_size`` if given."""
        if mode == "whole":
            logits = self(images)
        elif mode == "slide":
            logits = self._slide(images, _pair(crop_size), _pair(stride))
        else:
            raise InputError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
        if out_size is not None and tuple(out_size) != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
        return logits

    def _slide(self, images: torch.Tensor, crop: Tuple[int, int], stride: Tuple[int, int]) -> torch.Tensor:
        batch, _, height, width = images.shape
        rows = max(height - crop[0] + stride[0] - 1, 0) // stride[0] + 1
        cols = max(width - crop[1] + stride[1] - 1, 0) // stride[1] + 1
        logits = images.new_zeros(batch, self.num_classes, height, width, dtype=torch.float32)
        counts = images.new_zeros(1, 1, height, width, dtype=torch.float32)
        for r in range(rows):
            for c in range(cols):
                y2, x2 = min(r * stride[0] + crop[0], height), min(c * stride[1] + crop[1], width)
                y1, x1 = max(y2 - crop[0], 0), max(x2 - crop[1], 0)
                logits[:, :, y1:y2, x1:x2] += self(images[:, :, y1:y2, x1:x2]).float()
                counts[:, :, y1:y2, x1:x2] += 1
        return logits / counts


def _pair(v: Union[int, Sequence[int]]) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


def build_segmentor(cfg: SegmentorConfig, pretrained=None) -> VimSegmentor:
    """A segmentor from its config; ``pretrained``: a Vim classification checkpoint for the backbone."""
    return VimSegmentor(build_backbone(cfg.backbone, pretrained), cfg)
