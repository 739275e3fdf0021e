"""Reading images robustly, and ImageFolder datasets (``DIR/<class>/*.jpg``, ImageNet's layout).

Every image is converted to the mode the model takes ("RGB", or "L" for 1-channel models) whatever it was stored
as: grayscale, grayscale + alpha, RGBA and palette images (transparent pixels composited over white), CMYK, and
16-bit grayscale (rescaled, not clipped). An unreadable file (truncated, corrupt, not an image) is reported by
name and skipped: the dataset returns ``None`` for it and :func:`collate_skipping_unreadable` leaves it out of the
batch and counts it. With ``strict=True`` it raises :class:`DataError` naming the file instead.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import InputError, UserError

__all__ = ["DataError", "load_image", "to_mode", "ImageFolderDataset", "collate_skipping_unreadable",
           "IMG_EXTENSIONS", "is_image_folder"]

PathLike = Union[str, os.PathLike]

# Errors PIL raises on broken files (SyntaxError for some corrupt PNG chunks, DecompressionBombError is a
# ValueError subclass in recent Pillow, zlib errors surface as OSError).
_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


class DataError(UserError, RuntimeError):
    """A dataset that cannot be found, read or used as asked."""


def to_mode(img: Image.Image, mode: str = "RGB", background: Tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL image to ``mode`` ("RGB" or "L"), compositing transparency over ``background``."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode.startswith("I;16") or img.mode in ("I", "F"):
        # 16/32-bit grayscale: rescale to 8 bits instead of letting convert() clip at 255
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I") else max(1.0, float(array.max()))
        img = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        img = Image.alpha_composite(canvas, rgba)
    if img.mode != mode:
        img = img.convert(mode)
    return img


def load_image(path: PathLike, mode: str = "RGB", exif_transpose: bool = False) -> Image.Image:
    """Open an image file fully (decoding errors surface here, not later) and convert it to ``mode``.

    ``exif_transpose`` turns photos upright by their EXIF orientation (for prediction on camera pictures;
    training and evaluation keep the pixels as stored, as the official pipeline does).
    """
    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
    if exif_transpose:
        img = ImageOps.exif_transpose(img)
    return to_mode(img, mode)


def is_image_folder(path: PathLike) -> bool:
    """True if ``path`` has at least one class sub-directory holding an image file."""
    path = Path(path)
    if not path.is_dir():
        return False
    for sub in path.iterdir():
        if sub.is_dir() and any(f.suffix.lower() in IMG_EXTENSIONS for f in sub.iterdir() if f.is_file()):
            return True
    return False


class ImageFolderDataset(ImageFolder):
    """torchvision's ImageFolder with robust loading, a fixed class index, and unreadable-file handling.

    Args:
        root: a directory with one sub-directory per class.
        transform: applied to the PIL image.
        mode: "RGB" or "L" (the model's input channels).
        strict: raise :class:`DataError` on an unreadable file instead of skipping it.
        class_to_idx: the class index to use (e.g. the training split's, so a validation split that lacks a class
            keeps the same label numbers); class folders not in it are refused.
    """

    def __init__(self, root: PathLike, transform: Optional[Callable] = None, *, mode: str = "RGB",
                 strict: bool = False, class_to_idx: Optional[Dict[str, int]] = None):
        if mode not in ("RGB", "L"):
            raise InputError(f"mode must be 'RGB' or 'L', got {mode!r}")
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder not found: '{root}'")
        self._fixed_class_to_idx = dict(class_to_idx) if class_to_idx is not None else None
        self.mode = mode
        self.strict = strict
        self._reported: set = set()
        try:
            # with a given class index (a validation split) a class may have no images here
            super().__init__(str(root), transform=transform, loader=self._load, allow_empty=class_to_idx is not None,
                             is_valid_file=lambda p: Path(p).suffix.lower() in IMG_EXTENSIONS)
        except FileNotFoundError as e:
            raise DataError(f"no usable images under '{root}': {e}. Expected the layout {root}/<class name>/<image>"
                            f" with extensions {', '.join(IMG_EXTENSIONS)}") from e
        if not self.samples:
            raise DataError(f"no images under '{root}'; expected {root}/<class name>/<image>")

    def find_classes(self, directory: str) -> Tuple[List[str], Dict[str, int]]:
        classes, class_to_idx = super().find_classes(directory)
        if self._fixed_class_to_idx is None:
            return classes, class_to_idx
        unknown = sorted(set(classes) - set(self._fixed_class_to_idx))
        if unknown:
            raise DataError(f"'{directory}' has class folders the training set does not have: {unknown[:10]}")
        ordered = sorted(self._fixed_class_to_idx, key=self._fixed_class_to_idx.get)
        return ordered, dict(self._fixed_class_to_idx)

    def _load(self, path: str) -> Image.Image:
        return load_image(path, self.mode)

    def __getitem__(self, index: int) -> Optional[Tuple[Any, int]]:
        path, target = self.samples[index]
        try:
            img = self._load(path)
        except _READ_ERRORS as e:
            if self.strict:
                raise DataError(f"cannot read image '{path}': {e}. Fix or remove the file, or run without "
                                "--strict-data to skip unreadable files.") from e
            if path not in self._reported:
                self._reported.add(path)
                print(f"warning: skipping unreadable image '{path}': {e}", file=sys.stderr, flush=True)
            return None
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def collate_skipping_unreadable(batch: Sequence[Optional[Tuple[Any, int]]]) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Stack ``(image, target)`` samples, leaving out ``None`` (unreadable) ones: ``(images, targets, skipped)``.

    A batch whose images were all unreadable (e.g. the one image of a batch of 1) comes out empty: zero images,
    zero targets, ``skipped = len(batch)``; the training and evaluation loops pass over it.
    """
    good = [sample for sample in batch if sample is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([torch.as_tensor(img) for img, _ in good])
    targets = torch.as_tensor([int(t) for _, t in good], dtype=torch.long)
    return images, targets, skipped
