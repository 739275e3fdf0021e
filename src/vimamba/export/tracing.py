"""``torch.export`` of a Vim (classifier or segmentor) with a dynamic batch and image size.

The model runs in its :func:`~vimamba.export.traceable.traceable` form, so the program holds one scan operator per
mixer and resizes the position embedding in the graph. The example batch has two images: torch.export
specialises dimensions whose example value is 0 or 1.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn

from .traceable import traceable

__all__ = ["export_program", "example_images", "MAX_SIDE"]

MAX_SIDE = 8192  # the largest image side a dynamic program declares
MAX_BATCH = 4096


def example_images(in_chans: int, size: Tuple[int, int], batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, in_chans, int(size[0]), int(size[1]), generator=generator)


def export_program(model: nn.Module, in_chans: int, size: Tuple[int, int], dynamic: bool,
                   min_size: int = 1, multiple: int = 1) -> torch.export.ExportedProgram:
    """The model's forward as an ExportedProgram traced at ``size``: any batch size; if ``dynamic`` any image side
    >= ``min_size`` that is a multiple of ``multiple``, else ``size`` only."""
    model = model.eval()
    example = example_images(in_chans, size)
    dims = {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}
    if dynamic:
        for axis, name in ((2, "height"), (3, "width")):
            if multiple == 1:
                dims[axis] = torch.export.Dim(name, min=min_size, max=MAX_SIDE)
            else:
                cells = torch.export.Dim(f"{name}_cells", min=-(-min_size // multiple), max=MAX_SIDE // multiple)
                dims[axis] = multiple * cells
    dynamic_shapes = (dims,)
    try:
        with traceable(model), torch.no_grad():
            return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as e:  # torch.export's messages span many lines: keep the first, chain the rest
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"torch.export could not trace the model at {size[0]}x{size[1]}: {first} "
                           "(VIMAMBA_DEBUG=1 shows the details)") from e
