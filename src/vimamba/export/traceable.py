"""Put a Vim (classifier, backbone or segmentor) into a form that traces to one graph for every input size.

Inside :func:`traceable`, for the duration of an export only:

- every :class:`~vimamba.models.vim.BiMambaMixer` runs its convolutions as grouped ``conv1d`` (one graph node
  each) and its scan as one operator (:mod:`vimamba.export.scan_op`: the eager kernel when run, the blocked scan of
  :mod:`vimamba.export.scan` in ONNX), instead of the eager dispatch;
- every :class:`~vimamba.models.vim.VisionMamba` always resizes its position embedding to the input's patch grid
  (the resize is the identity at the native grid), so the graph does not freeze "native size or not";
- every :class:`~vimamba.dense.backbone.VimBackbone` always pads the image to its patch grid (by zero when it fits);
- every ``nn.AdaptiveAvgPool2d`` (UperNet's pyramid pooling) averages through an integral image with cell bounds
  computed from the input's size, which exports for any size (the exporter's own translation needs fixed sizes).

The math is the eager model's; the export tests compare the two. Nothing about the model is changed afterwards.
"""
from __future__ import annotations

from contextlib import contextmanager
from types import MethodType
from typing import Iterator, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.pos_embed import insert_cls_token, split_pos_embed
from ..models.vim import BiMambaMixer, VisionMamba, _float32_or_wider
from .scan_op import bidirectional_scan_op

__all__ = ["traceable"]


def _depthwise_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, reverse: bool) -> torch.Tensor:
    """:func:`vimamba.ops.depthwise_conv1d` as one grouped convolution: (batch, L, E) -> (batch, L, E).

    Causal: pad K-1 zeros before the sequence. Anti-causal (the flipped sequence's causal convolution): pad K-1
    zeros after it and mirror the kernel taps.
    """
    k = weight.shape[-1]
    channels_first = x.transpose(1, 2)
    padded = F.pad(channels_first, (0, k - 1) if reverse else (k - 1, 0))
    kernel = torch.flip(weight, dims=[-1]) if reverse else weight
    return F.conv1d(padded, kernel.to(x.dtype), bias.to(x.dtype), groups=x.shape[-1]).transpose(1, 2)


def _mixer_forward(self: BiMambaMixer, hidden: torch.Tensor) -> torch.Tensor:
    """:meth:`BiMambaMixer.forward` with the traceable convolution and scan."""
    x, z = self.in_proj(hidden).chunk(2, dim=-1)
    x_f = F.silu(_depthwise_conv1d(x, self.conv1d.weight, self.conv1d.bias, reverse=False))
    x_b = F.silu(_depthwise_conv1d(x, self.conv1d_b.weight, self.conv1d_b.bias, reverse=True))
    y = bidirectional_scan_op(*self._scan_inputs(x_f, x_b, z))
    return self.out_proj(y)


def _pos_embed_for(self: VisionMamba, grid: Tuple[int, int]) -> torch.Tensor:
    """The position embedding resized (bicubic, class slot kept in the middle) to ``grid``, unconditionally."""
    old = self.patch_embed.grid_size
    cls_slot, patch_slots = split_pos_embed(self.pos_embed)
    dim = self.pos_embed.shape[-1]
    image = patch_slots.reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
    image = F.interpolate(_float32_or_wider(image), size=(grid[0], grid[1]), mode="bicubic", align_corners=False)
    patch_slots = image.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(self.pos_embed.dtype)
    return insert_cls_token(patch_slots, cls_slot)


def _pad_to_grid(self, x: torch.Tensor) -> torch.Tensor:
    """:meth:`VimBackbone.pad_to_grid` without the "already fits" branch: pad to the grid, by zero if it fits."""
    patch, stride = self.vim.patch_embed.patch_size, self.patch_stride
    h, w = x.shape[-2], x.shape[-1]
    target_h = ((h + stride - 1) // stride - 1) * stride + patch  # >= h since patch >= stride
    target_w = ((w + stride - 1) // stride - 1) * stride + patch
    return F.pad(x, (0, target_w - w, 0, target_h - h))


def _adaptive_bounds(size, cells: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cell i of an adaptive pooling covers [floor(i * size / cells), ceil((i + 1) * size / cells))."""
    index = torch.arange(cells, device=device)
    return (index * size) // cells, ((index + 1) * size + cells - 1) // cells


def _adaptive_avg_pool2d(self: nn.AdaptiveAvgPool2d, x: torch.Tensor) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` by sums over an integral image (float64 accumulation), any input size."""
    out_h, out_w = (self.output_size, self.output_size) if isinstance(self.output_size, int) else self.output_size
    height, width = x.shape[-2], x.shape[-1]
    out_h, out_w = out_h or height, out_w or width
    top, bottom = _adaptive_bounds(height, out_h, x.device)
    left, right = _adaptive_bounds(width, out_w, x.device)
    integral = F.pad(x.double().cumsum(-2).cumsum(-1), (1, 0, 1, 0))  # integral[i, j] = sum of x[:i, :j]
    rows_b, rows_t = integral.index_select(-2, bottom), integral.index_select(-2, top)
    total = (rows_b.index_select(-1, right) - rows_t.index_select(-1, right)
             - rows_b.index_select(-1, left) + rows_t.index_select(-1, left))
    count = ((bottom - top)[:, None] * (right - left)[None, :]).to(total.dtype)
    return (total / count).to(x.dtype)


@contextmanager
def traceable(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` (and every Vim inside it) runs in its traceable form; restored on exit."""
    from ..dense.backbone import VimBackbone

    replaced: List[Tuple[nn.Module, str]] = []
    for module in model.modules():
        for cls, name, function in ((BiMambaMixer, "forward", _mixer_forward),
                                    (VisionMamba, "_pos_embed_for", _pos_embed_for),
                                    (VimBackbone, "pad_to_grid", _pad_to_grid),
                                    (nn.AdaptiveAvgPool2d, "forward", _adaptive_avg_pool2d)):
            if isinstance(module, cls):
                object.__setattr__(module, name, MethodType(function, module))
                replaced.append((module, name))
    try:
        yield model
    finally:
        for module, name in replaced:
            object.__delattr__(module, name)
