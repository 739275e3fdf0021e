"""The reconstruction picture: one row per test image, columns image | visible input | prediction (a PNG)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..io import atomic_write

__all__ = ["to_display", "save_reconstruction_grid", "write_reconstructions"]

PathLike = Union[str, os.PathLike]
COLUMNS = ("image", "visible input", "prediction")


def to_display(images: torch.Tensor, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None
               ) -> np.ndarray:
    """(B, C, H, W) normalised tensors -> (B, H, W, 3) uint8, undoing the dataset's mean/std (if given)."""
    x = images.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    x = x.clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def save_reconstruction_grid(images: torch.Tensor, visible: torch.Tensor, prediction: torch.Tensor, path: PathLike,
                             mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                             title: Optional[str] = None, min_tile: int = 96) -> Path:
    """Write the grid as a PNG (atomically). Small images are enlarged by an integer factor (nearest)."""
    columns = [to_display(t, mean, std) for t in (images, visible, prediction)]
    rows, h, w = columns[0].shape[:3]
    scale = max(1, -(-min_tile // max(h, w)))
    tile_h, tile_w, gap = h * scale, w * scale, 4
    header = 16 + (16 if title else 0)
    canvas = Image.new("RGB", (3 * tile_w + 4 * gap, header + rows * (tile_h + gap) + gap), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, 2), title, fill=(0, 0, 0))
    for c, name in enumerate(COLUMNS):
        draw.text((gap + c * (tile_w + gap), header - 14), name, fill=(0, 0, 0))
    for r in range(rows):
        for c, column in enumerate(columns):
            tile = Image.fromarray(column[r]).resize((tile_w, tile_h), Image.NEAREST)
            canvas.paste(tile, (gap + c * (tile_w + gap), header + r * (tile_h + gap)))
    path = Path(path)
    with atomic_write(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


@torch.no_grad()
def write_reconstructions(objective: torch.nn.Module, images: torch.Tensor, path: PathLike,
                          mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                          title: Optional[str] = None, generator: Optional[torch.Generator] = None) -> Path:
    """Run ``objective.reconstruct`` on fixed test images (eval mode, then restored) and write the grid.

    ``generator`` draws the objective's random choices (MAE's mask), so that pictures of one run are comparable."""
    was_training = objective.training
    objective.eval()
    try:
        visible, prediction = objective.reconstruct(images, generator=generator)
    finally:
        objective.train(was_training)
    return save_reconstruction_grid(images, visible, prediction, path, mean, std, title)
