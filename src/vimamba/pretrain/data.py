"""Unlabelled images for pretraining: any folder of images (nested folders allowed), an ImageNet-layout folder's
training split, or a named dataset's training split, labels ignored.

Items are ``(transform(image), 0)`` so the project's loaders and :func:`~vimamba.data.images.collate_skipping_unreadable`
work unchanged; an unreadable file is named once and skipped (``None``), or raises with ``strict=True``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, List, Optional, Union

from torch.utils.data import Dataset

from ..data.datasets import find_split_dir, open_split, resolve_dataset
from ..data.images import IMG_EXTENSIONS, DataError, load_image

__all__ = ["UnlabelledImageFolder", "open_unlabelled", "list_images"]

PathLike = Union[str, os.PathLike]


def list_images(root: PathLike) -> List[Path]:
    """Every image file under ``root`` at any depth (hidden files and folders skipped), sorted."""
    root = Path(root)
    found = []
    for directory, subdirs, files in os.walk(root, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found += [Path(directory) / f for f in files
                  if not f.startswith(".") and Path(f).suffix.lower() in IMG_EXTENSIONS]
    return sorted(found)


class UnlabelledImageFolder(Dataset):
    """All images under a folder, at any depth, without labels."""

    def __init__(self, root: PathLike, transform: Optional[Callable] = None, *, mode: str = "RGB",
                 strict: bool = False):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"image folder not found: '{root}'")
        self.files = list_images(root)
        if not self.files:
            raise DataError(f"no images under '{root}' (looked at every depth for {', '.join(IMG_EXTENSIONS)})")
        self.root, self.transform, self.mode, self.strict = root, transform, mode, strict
        self._reported: set = set()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path = self.files[index]
        try:
            img = load_image(path, self.mode)
        except Exception as e:  # any unreadable file: name it, skip it (or stop when strict)
            if self.strict:
                raise DataError(f"cannot read image '{path}': {e}") from e
            if path not in self._reported:
                self._reported.add(path)
                print(f"warning: skipping unreadable image '{path}': {e}", file=sys.stderr, flush=True)
            return None
        return (self.transform(img) if self.transform is not None else img), 0


def open_unlabelled(dataset: Optional[str], data: Optional[PathLike], transform: Optional[Callable] = None, *,
                    in_chans: int = 3, strict: bool = False) -> Dataset:
    """The pretraining images: a named dataset's training split, DIR/train when DIR has one, else all of DIR."""
    mode = "L" if in_chans == 1 else "RGB"
    if dataset is not None:
        spec = resolve_dataset(dataset, data)
        return open_split(spec, "train", transform, in_chans=in_chans, strict=strict)
    if data is None:
        raise ValueError("pass --data DIR (any folder of images) or --dataset NAME")
    train_dir = find_split_dir(data, "train")
    return UnlabelledImageFolder(train_dir if train_dir is not None else data, transform, mode=mode, strict=strict)
