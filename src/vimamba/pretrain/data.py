"""Unlabelled images for pretraining: any folder of images (nested folders allowed), an ImageNet-layout folder's
training split, or a named dataset's training split, labels ignored.

:func:`resolve_unlabelled` also sets the held-out images aside, on which ``vimamba pretrain`` measures its
evaluation loss and draws its reconstructions: a fixed, seeded sample of the data's validation split when it has one
(a named dataset's test split, ``DIR/val``), otherwise of the images themselves, which are then never trained on.

Items are ``(transform(image), 0)`` so the project's loaders and :func:`~vimamba.data.images.collate_skipping_unreadable`
work unchanged; an unreadable file is named once and skipped (``None``), or raises with ``strict=True``.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
from torch.utils.data import Dataset, Subset

from ..data.datasets import DatasetSpec, find_split_dir, open_split, resolve_dataset
from ..data.images import IMG_EXTENSIONS, DataError, load_image
from ..data.transforms import Preprocessing
from ..errors import InputError

__all__ = ["UnlabelledImageFolder", "UnlabelledSource", "resolve_unlabelled", "list_images",
           "HELDOUT_FRACTION_LIMIT"]

# at most this fraction of a folder without a validation split is set aside as held-out images
HELDOUT_FRACTION_LIMIT = 0.1

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
                 strict: bool = False, files: Optional[Sequence[Path]] = None):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"image folder not found: '{root}'")
        self.files = list(files) if files is not None else list_images(root)
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


def _seeded_sample(count: int, size: int, seed: int) -> List[int]:
    """``size`` indices out of ``count``, drawn without replacement from ``seed``, ascending."""
    return sorted(np.random.default_rng(seed).permutation(count)[:size].tolist())


@dataclass
class UnlabelledSource:
    """The pretraining images, resolved once: what to train on, what is held out, how images are prepared.

    A folder source holds its file lists (``train_files``, ``heldout_files``); a named dataset holds its
    :class:`~vimamba.data.datasets.DatasetSpec` and the indices of its held-out test images.
    """

    description: str
    preprocessing: Preprocessing  # the data's native preprocessing (size, channels, mean/std)
    root: Optional[Path] = None
    train_files: Optional[List[Path]] = None
    heldout_files: Optional[List[Path]] = None
    spec: Optional[DatasetSpec] = None
    heldout_indices: Optional[List[int]] = None
    strict: bool = False

    def train(self, transform: Optional[Callable], in_chans: int) -> Dataset:
        if self.spec is not None:
            return open_split(self.spec, "train", transform, in_chans=in_chans, strict=self.strict)
        return UnlabelledImageFolder(self.root, transform, mode=_mode(in_chans), strict=self.strict,
                                     files=self.train_files)

    def heldout(self, transform: Optional[Callable], in_chans: int) -> Optional[Dataset]:
        """The held-out images, or None when there are none (no evaluation)."""
        if self.spec is not None:
            if not self.heldout_indices:
                return None
            return Subset(open_split(self.spec, "val", transform, in_chans=in_chans, strict=self.strict),
                          self.heldout_indices)
        if not self.heldout_files:
            return None
        return UnlabelledImageFolder(self.root, transform, mode=_mode(in_chans), strict=self.strict,
                                     files=self.heldout_files)

    @property
    def num_heldout(self) -> int:
        return len(self.heldout_indices or self.heldout_files or ())


def _mode(in_chans: int) -> str:
    return "L" if in_chans == 1 else "RGB"


def resolve_unlabelled(dataset: Optional[str], data: Optional[PathLike], *, heldout_images: int, seed: int = 0,
                       strict: bool = False) -> UnlabelledSource:
    """Find the pretraining images and set ``heldout_images`` of them aside (see the module docs).

    A folder without a validation split gives up at most :data:`HELDOUT_FRACTION_LIMIT` of its images (none when
    it has fewer than 10). Folders use ImageNet's preprocessing at 224 px; named datasets their own.
    """
    if heldout_images < 0:
        raise InputError(f"the number of held-out images must be >= 0, got {heldout_images}")
    if dataset is not None:
        spec = resolve_dataset(dataset, data)
        val_count = len(open_split(spec, "val", None))
        indices = _seeded_sample(val_count, min(heldout_images, val_count), seed)
        return UnlabelledSource(f"{spec.name} (training split, labels ignored)", spec.preprocessing, spec=spec,
                                heldout_indices=indices, strict=strict)
    if data is None:
        raise InputError("pass --data DIR (any folder of images) or --dataset NAME")
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder not found: '{root}'")
    train_dir = find_split_dir(root, "train")
    val_dir = find_split_dir(root, "val") if train_dir is not None else None
    images_dir = train_dir if train_dir is not None else root
    files = list_images(images_dir)
    if not files:
        raise DataError(f"no images under '{images_dir}' (looked at every depth for {', '.join(IMG_EXTENSIONS)})")
    if val_dir is not None:
        candidates = list_images(val_dir)
        heldout = [candidates[i] for i in _seeded_sample(len(candidates), min(heldout_images, len(candidates)),
                                                         seed)]
    else:
        count = min(heldout_images, int(len(files) * HELDOUT_FRACTION_LIMIT))
        chosen = set(_seeded_sample(len(files), count, seed))
        heldout = [f for i, f in enumerate(files) if i in chosen]
        files = [f for i, f in enumerate(files) if i not in chosen]
    return UnlabelledSource(f"{len(files):,} images under '{images_dir}' (labels ignored)", Preprocessing(),
                            root=images_dir if val_dir is None else root, train_files=files, heldout_files=heldout,
                            strict=strict)
