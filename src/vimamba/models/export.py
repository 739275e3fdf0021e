"""``torch.export`` of a Vim classifier with a dynamic batch and a dynamic image size.

The selective scan and the fused convolution are PyTorch operators (``torch.ops.vimamba.*``, see
:mod:`vimamba.ops.library`) with shape functions, and the position embedding is resized inside ``forward`` without
pinning the traced size (:func:`vimamba.models.pos_embed.same_grid`), so one exported program serves every batch size
and every image height and width that is a multiple of the patch stride (at least two patches per side)::

    program = export_vim(model)                        # eval mode, no gradients
    logits = program.module()(torch.randn(3, 3, 320, 256))

The exported graph calls ``torch.ops.vimamba.bidirectional_scan``: load it where ``vimamba`` is imported (which
registers the operators) before ``torch.export.load``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from torch.export import Dim, ExportedProgram
from ..errors import InputError

__all__ = ["export_vim", "dynamic_image_shapes", "example_images"]


def _stem(model: nn.Module):
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None or not hasattr(patch_embed, "stride"):
        raise TypeError(f"export_vim exports vimamba VisionMamba models; got {type(model).__name__}")
    return patch_embed


def dynamic_image_shapes(model: nn.Module, *, dynamic_batch: bool = True, dynamic_size: bool = True,
                         max_side: Optional[int] = None) -> Dict[str, Dict[int, Any]]:
    """``dynamic_shapes`` for ``torch.export.export(model, (images,), ...)``: batch >= 1, height and width multiples
    of the patch stride giving at least two patches per side (up to ``max_side`` pixels if given)."""
    pe = _stem(model)
    stride, patch = pe.stride, pe.patch_size
    shapes: Dict[int, Any] = {}
    if dynamic_batch:
        shapes[0] = Dim("batch", min=1)
    if dynamic_size:
        low = -(-(patch + stride) // stride)  # two patches per side: a size of 1 would be specialised
        high = max_side // stride if max_side is not None else None
        for axis, name in ((2, "height"), (3, "width")):
            dim = Dim(f"{name}_in_strides", min=low, max=high) if high is not None else Dim(f"{name}_in_strides",
                                                                                            min=low)
            shapes[axis] = stride * dim
    return {"x": shapes}


def example_images(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """Zeros of the model's native size, rounded down to a multiple of the stride (the tracing example)."""
    pe = _stem(model)
    side = [max(pe.patch_size, (s // pe.stride) * pe.stride) for s in pe.img_size]
    side = [s if s % pe.stride == 0 else -(-s // pe.stride) * pe.stride for s in side]
    param = next(model.parameters())
    return torch.zeros(batch, pe.in_chans, side[0], side[1], dtype=param.dtype, device=param.device)


def export_vim(model: nn.Module, example: Optional[torch.Tensor] = None, *, dynamic_batch: bool = True,
               dynamic_size: bool = True, max_side: Optional[int] = None, strict: bool = False) -> ExportedProgram:
    """The inference graph of a Vim classifier as an :class:`~torch.export.ExportedProgram`.

    Traced in eval mode without gradients (the model's mode is restored afterwards); ``example`` defaults to
    :func:`example_images` (batch 2, so batch 1 stays general). Height and width of ``example`` must be multiples of
    the stride when ``dynamic_size``.
    """
    pe = _stem(model)
    if example is None:
        example = example_images(model)
    if dynamic_size and (example.shape[-2] % pe.stride or example.shape[-1] % pe.stride):
        raise InputError(f"with a dynamic image size the example's height and width must be multiples of the stride "
                         f"{pe.stride}; got {tuple(example.shape[-2:])}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.export.export(
                model, (example,), strict=strict,
                dynamic_shapes=dynamic_image_shapes(model, dynamic_batch=dynamic_batch, dynamic_size=dynamic_size,
                                                    max_side=max_side))
    finally:
        model.train(was_training)
