"""Semantic-segmentation heads: UperNet (pyramid pooling + FPN fusion) and the auxiliary FCN head.

UperNet (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018), in the form MMSegmentation's
``UPerHead`` gives it and the official Vim segmentation config uses, for pyramid levels x_0 .. x_3 (strides 4..32)::

    ppm     = concat(x_3, up(conv1x1(avgpool_s(x_3))) for s in pool_scales)   -> conv3x3  = f_3
    f_k     = conv1x1(x_k) + up(f_{k+1})                 for k = 2, 1, 0        (top-down, bilinear)
    p_k     = conv3x3(f_k) for k < 3,  p_3 = f_3
    logits  = conv1x1(dropout(conv3x3(concat(up(p_k) to the size of p_0))))    (stride 4)

Every conv is conv + BatchNorm + ReLU (``torchvision.ops.Conv2dNormActivation``). The FCN head is
conv3x3-BN-ReLU, dropout and a 1x1 classifier on one level (the official config: level 2, 256 channels).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import Conv2dNormActivation

__all__ = ["UperNetHead", "FCNHead"]


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
    return Conv2dNormActivation(in_channels, out_channels, kernel_size, norm_layer=nn.BatchNorm2d,
                                activation_layer=nn.ReLU)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UperNetHead(nn.Module):
    """UperNet decode head: pyramid levels (strides 4..32) -> class logits at the stride of the first level."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        in_channels = list(in_channels)
        top = in_channels[-1]
        self.pool_scales = tuple(pool_scales)
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), _conv(top, channels, 1)) for scale in self.pool_scales
        )
        self.ppm_bottleneck = _conv(top + len(self.pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(_conv(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(_conv(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = _conv(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)  # MMSegmentation's decode-head init
        nn.init.zeros_(self.classifier.bias)

    def pyramid_pooling(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [x] + [_resize(branch(x), x.shape[-2:]) for branch in self.ppm]
        return self.ppm_bottleneck(torch.cat(pooled, dim=1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features[:-1])]
        laterals.append(self.pyramid_pooling(features[-1]))
        for k in range(len(laterals) - 1, 0, -1):  # top-down path
            laterals[k - 1] = laterals[k - 1] + _resize(laterals[k], laterals[k - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [_resize(x, size) for x in outs[1:]], dim=1))
        return self.classifier(self.dropout(fused))


class FCNHead(nn.Module):
    """Auxiliary head: conv3x3-BN-ReLU, dropout, 1x1 classifier on one pyramid level."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.conv = _conv(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))
