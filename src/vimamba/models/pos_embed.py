"""Position embeddings with the class token in the middle slot, and their resizing to other patch grids.

A Vim model stores ``pos_embed`` of shape (1, M + 1, D) for its native patch grid (gh, gw), M = gh * gw. Slot
``M // 2`` belongs to the class token; the other M slots belong to the patches in raster order. To run the model
on another grid (another image size or patch stride), the M patch slots are reshaped to (gh, gw), resized
bicubically (``align_corners=False``, as the official code) and flattened again, and the class slot is put back in
the middle of the new sequence, at M' // 2.

The official fine-tuning code resizes as if the class token were at slot 0, which shifts half of the patch
embeddings by one position and treats the class embedding as a patch; vimamba does not reproduce that bug.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch.fx.experimental.symbolic_shapes import statically_known_true
from ..errors import InputError

__all__ = ["insert_cls_token", "remove_cls_token", "split_pos_embed", "resize_pos_embed", "infer_square_grid",
           "same_grid"]


def same_grid(a: Tuple[int, int], b: Tuple[int, int]) -> bool:
    """True when two patch grids are known to be equal. A grid traced with a symbolic size (``torch.export`` with a
    dynamic image size) is not known to equal any fixed grid, and asking does not pin the traced size; the resize
    that follows is then an exact identity at the stored size (bicubic at scale 1 copies its input)."""
    return statically_known_true(a[0] == b[0]) and statically_known_true(a[1] == b[1])


def insert_cls_token(patches: torch.Tensor, cls_token: torch.Tensor) -> torch.Tensor:
    """(B, M, D) patches + (B, 1, D) class token -> (B, M + 1, D) with the class token at index M // 2."""
    middle = patches.shape[1] // 2
    if isinstance(middle, int):
        return torch.cat([patches[:, :middle], cls_token, patches[:, middle:]], dim=1)
    # A symbolic length (torch.export with a dynamic image size): the same result by a gather, because slicing at
    # a symbolic middle leaves bounds that a saved program cannot re-check when it is loaded.
    tokens = torch.cat([cls_token, patches], dim=1)
    slots = torch.arange(tokens.shape[1], device=tokens.device)
    source = torch.where(slots < middle, slots + 1, torch.where(slots == middle, torch.zeros_like(slots), slots))
    return tokens.index_select(1, source)


def remove_cls_token(tokens: torch.Tensor) -> torch.Tensor:
    """(B, M + 1, D) tokens with the class token at M // 2 -> (B, M, D) patch tokens in raster order."""
    middle = (tokens.shape[1] - 1) // 2
    return torch.cat([tokens[:, :middle], tokens[:, middle + 1:]], dim=1)


def split_pos_embed(pos_embed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(1, M + 1, D) -> (class slot (1, 1, D), patch slots (1, M, D))."""
    middle = (pos_embed.shape[1] - 1) // 2
    return pos_embed[:, middle:middle + 1], remove_cls_token(pos_embed)


def infer_square_grid(num_tokens: int) -> Tuple[int, int]:
    """The square patch grid of a (1, M + 1, D) position embedding, for checkpoints that do not record theirs."""
    m = num_tokens - 1
    side = int(round(m ** 0.5))
    if side * side != m:
        raise InputError(
            f"a position embedding of {num_tokens} slots is not a square grid plus a class token; "
            "give the source grid explicitly"
        )
    return (side, side)


def resize_pos_embed(
    pos_embed: torch.Tensor, old_grid: Tuple[int, int], new_grid: Tuple[int, int], mode: str = "bicubic"
) -> torch.Tensor:
    """Resize a middle-class-token position embedding from ``old_grid`` to ``new_grid`` (rows, cols).

    The class slot is carried over unchanged; the patch slots are interpolated as an image. Differentiable, so it
    can run inside ``forward`` while training at another resolution.
    """
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise InputError(f"pos_embed must have shape (1, M + 1, D), got {tuple(pos_embed.shape)}")
    if pos_embed.shape[1] != old_grid[0] * old_grid[1] + 1:
        raise InputError(
            f"pos_embed has {pos_embed.shape[1]} slots but the grid {old_grid} needs {old_grid[0] * old_grid[1] + 1}"
        )
    if same_grid(old_grid, new_grid):
        return pos_embed
    cls_slot, patch_slots = split_pos_embed(pos_embed)
    dim = pos_embed.shape[-1]
    image = patch_slots.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    compute_dtype = torch.promote_types(pos_embed.dtype, torch.float32)
    image = F.interpolate(image.to(compute_dtype), size=(new_grid[0], new_grid[1]), mode=mode, align_corners=False)
    patch_slots = image.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return insert_cls_token(patch_slots, cls_slot)
