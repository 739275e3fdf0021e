"""Reading images as tensors, and listing offending items in error messages."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import UnidentifiedImageError

from ..data.images import DataError, load_image

__all__ = ["read_rgb", "list_examples"]


def read_rgb(path: Path) -> torch.Tensor:
    """An image file as a (3, H, W) uint8 tensor (any stored mode converted to RGB); unreadable files raise
    :class:`~vimamba.data.images.DataError` naming them."""
    try:
        image = load_image(path, "RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image '{path}': {e}") from e
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def list_examples(items: Sequence[object], limit: int = 5) -> str:
    """'a, b, c' or 'a, b, c, ... (12 in all)'."""
    items = [str(i) for i in items]
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")
