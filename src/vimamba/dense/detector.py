"""Object detection and instance segmentation with a Vim backbone: torchvision's Mask R-CNN / Faster R-CNN.

The backbone is :class:`~vimamba.dense.backbone.VimBackbone` in its ViTDet form (the residual stream after the last
block, a simple feature pyramid at strides 4..32 projected to 256 channels with LayerNorm, and a max-pooled
stride-64 level for the RPN). The heads follow ViTDet's Mask R-CNN: an RPN with two 3x3 convs, anchors 32..512
(one size per level) with aspect ratios 0.5/1/2, a box head of four 3x3 conv + LayerNorm layers and one 1024-wide
fully connected layer, and a mask head of four conv + LayerNorm layers; anchor generation, RoI Align, sampling,
losses and post-processing are torchvision's. The official Vim detection result uses a *Cascade* Mask R-CNN, which
torchvision does not provide; see ``docs/dense.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm2d
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from ..errors import InputError
from .backbone import BackboneConfig, BackboneHooks, build_backbone
from .configs import ConfigDict

__all__ = ["DetectorConfig", "VimFasterRCNN", "VimMaskRCNN", "build_detector", "vitdet_backbone_config"]


def vitdet_backbone_config(**overrides) -> BackboneConfig:
    """ViTDet's use of a plain backbone: last block's residual stream -> P2..P5 (256 channels, LN) + P6."""
    settings = dict(out_indices=(-1,), feature="residual", out_channels=256, pyramid_norm="ln", extra_pool=True)
    return BackboneConfig(**{**settings, **overrides})


@dataclass
class DetectorConfig(ConfigDict):
    """A Vim Mask R-CNN (``masks=True``) or Faster R-CNN. ``num_classes`` counts object classes, not background."""

    num_classes: int = 80
    backbone: BackboneConfig = field(default_factory=vitdet_backbone_config)
    masks: bool = True
    min_size: int = 1024  # images are resized so the short side is min_size, the long side at most max_size
    max_size: int = 1024
    anchor_sizes: Tuple[int, ...] = (32, 64, 128, 256, 512)  # one per pyramid level
    aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_convs: int = 2
    head_norm: str = "ln"  # "ln" (ViTDet), "bn", "none"
    box_head_convs: int = 4
    head_channels: int = 256
    box_fc: int = 1024
    mask_head_convs: int = 4
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    rpn_post_nms_top_n_train: int = 2000  # proposals kept per image
    rpn_post_nms_top_n_test: int = 1000
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            self.backbone = BackboneConfig.from_dict(self.backbone)
        self.anchor_sizes = tuple(int(s) for s in self.anchor_sizes)
        self.aspect_ratios = tuple(float(r) for r in self.aspect_ratios)
        if self.num_classes < 1:
            raise InputError(f"num_classes must be >= 1, got {self.num_classes}")
        levels = len(self.backbone.strides) + int(self.backbone.extra_pool)
        if len(self.anchor_sizes) != levels:
            raise InputError(f"{len(self.anchor_sizes)} anchor sizes for {levels} pyramid levels; give one per level")
        if self.head_norm not in ("ln", "bn", "none"):
            raise InputError(f"head_norm must be 'ln', 'bn' or 'none', got {self.head_norm!r}")



class VimFasterRCNN(BackboneHooks, FasterRCNN):
    """torchvision Faster R-CNN on a Vim pyramid (with a ``cfg``)."""


class VimMaskRCNN(BackboneHooks, MaskRCNN):
    """torchvision Mask R-CNN on a Vim pyramid (with a ``cfg``)."""


def _head_norm(kind: str):
    return {"ln": LayerNorm2d, "bn": nn.BatchNorm2d, "none": None}[kind]


def build_detector(cfg: DetectorConfig, pretrained=None) -> nn.Module:
    """A Vim Mask R-CNN / Faster R-CNN from its config; ``pretrained``: a Vim classification checkpoint."""
    backbone = build_backbone(cfg.backbone, pretrained)
    channels = backbone.out_channels
    roi_levels = [str(k) for k in range(len(cfg.backbone.strides))]  # RoIs pool P2..P5, not the extra level
    anchors = AnchorGenerator(sizes=tuple((s,) for s in cfg.anchor_sizes),
                              aspect_ratios=(cfg.aspect_ratios,) * len(cfg.anchor_sizes))
    norm = _head_norm(cfg.head_norm)
    common = dict(
        num_classes=None,  # given by the predictors: num_classes + 1 (background)
        min_size=cfg.min_size, max_size=cfg.max_size,
        image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD),
        size_divisible=max(backbone.out_strides),  # every pyramid level then has an exact stride
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels, len(cfg.aspect_ratios), conv_depth=cfg.rpn_convs),
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        box_roi_pool=MultiScaleRoIAlign(roi_levels, output_size=7, sampling_ratio=0),
        box_head=FastRCNNConvFCHead((channels, 7, 7), [cfg.head_channels] * cfg.box_head_convs, [cfg.box_fc],
                                    norm_layer=norm),
        box_predictor=FastRCNNPredictor(cfg.box_fc, cfg.num_classes + 1),
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_score_thresh=cfg.box_score_thresh, box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.detections_per_img,
    )
    if cfg.masks:
        model = VimMaskRCNN(
            backbone,
            mask_roi_pool=MultiScaleRoIAlign(roi_levels, output_size=14, sampling_ratio=0),
            mask_head=MaskRCNNHeads(channels, [cfg.head_channels] * cfg.mask_head_convs, 1, norm_layer=norm),
            mask_predictor=MaskRCNNPredictor(cfg.head_channels, cfg.head_channels, cfg.num_classes + 1),
            **common,
        )
    else:
        model = VimFasterRCNN(backbone, **common)
    model.cfg = cfg
    return model
