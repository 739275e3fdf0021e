"""Semantic-segmentation data in the ADE20K layout, and the MMSegmentation-style augmentation.

Layout (ADEChallengeData2016 and any dataset written like it)::

    root/images/training/*.jpg        root/annotations/training/*.png      (same file stems)
    root/images/validation/*.jpg      root/annotations/validation/*.png

Annotations are single-channel PNGs of class indices; 255 is ignored. With ``reduce_zero_label`` (ADE20K) label 0
("other") becomes 255 and every other label drops by one, so the 150 ADE20K classes are 0..149.

Training augmentation (the official Vim / MMSegmentation ADE20K pipeline): rescale so the image fits a random
multiple r in [0.5, 2] of (2048, 512) keeping its aspect ratio, random crop (re-drawn up to 10 times until no class
covers more than ``cat_max_ratio`` of the crop), horizontal flip, photometric distortion, normalisation, padding to
the crop size (image 0, label 255). Evaluation: the same rescale with r = 1, the label kept at its original size.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..data.images import IMG_EXTENSIONS, DataError
from .files import list_examples, read_rgb

__all__ = ["SegmentationDataset", "SegTrainTransform", "SegEvalTransform", "rescale_size"]

_LABEL_MODES = ("L", "P", "I", "I;16")


def rescale_size(size: Tuple[int, int], scale: Tuple[int, int]) -> Tuple[int, int]:
    """(H, W) rescaled keeping the aspect ratio so the long side <= max(scale) and the short side <= min(scale)."""
    height, width = size
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


class SegmentationDataset(torch.utils.data.Dataset):
    """(image, label) pairs of an ADE20K-layout folder; ``transform(image_uint8, label_int64)`` makes the sample."""

    def __init__(self, root, split: str = "training", num_classes: int = 150, reduce_zero_label: bool = False,
                 transform: Optional[Callable] = None, ignore_index: int = 255):
        self.root = Path(root)
        self.split = split
        self.num_classes = num_classes
        self.reduce_zero_label = reduce_zero_label
        self.transform = transform
        self.ignore_index = ignore_index
        image_dir, label_dir = self.root / "images" / split, self.root / "annotations" / split
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise DataError(
                    f"'{folder}' is not a folder. A segmentation dataset needs images/{split}/*.jpg and "
                    f"annotations/{split}/*.png under '{self.root}' (the ADE20K layout)"
                )
        images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMG_EXTENSIONS}
        labels = {p.stem: p for p in sorted(label_dir.iterdir()) if p.suffix.lower() == ".png"}
        if not images:
            raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) in '{image_dir}'")
        unlabelled = sorted(set(images) - set(labels))
        orphans = sorted(set(labels) - set(images))
        if unlabelled or orphans:
            lines = [f"images and annotations of '{self.root}' ({split}) do not pair up by file name:"]
            if unlabelled:
                lines.append(f"  images without an annotation in '{label_dir}': {list_examples(unlabelled)}")
            if orphans:
                lines.append(f"  annotations without an image in '{image_dir}': {list_examples(orphans)}")
            raise DataError("\n".join(lines))
        self.samples: List[Tuple[Path, Path]] = [(images[stem], labels[stem]) for stem in sorted(images)]

    def __len__(self) -> int:
        return len(self.samples)

    def read_label(self, path: Path) -> torch.Tensor:
        """A label PNG as (H, W) int64 class indices (after ``reduce_zero_label``), checked against the classes."""
        try:
            with Image.open(path) as png:
                if png.mode not in _LABEL_MODES:
                    raise DataError(
                        f"annotation '{path}' is a {png.mode} image; expected a single-channel PNG of class indices "
                        f"(mode {' or '.join(_LABEL_MODES)})"
                    )
                label = torch.from_numpy(np.asarray(png).astype(np.int64))
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"cannot read annotation '{path}': {e}") from e
        if self.reduce_zero_label:
            ignored = label == self.ignore_index
            label = label - 1
            label[(label == -1) | ignored] = self.ignore_index
        bad = (label != self.ignore_index) & ((label < 0) | (label >= self.num_classes))
        if bool(bad.any()):
            values = sorted(set(label[bad].unique().tolist()))
            shift = " (after reduce_zero_label)" if self.reduce_zero_label else ""
            raise DataError(
                f"annotation '{path}' has labels {list_examples(values)}{shift} outside the {self.num_classes} "
                f"classes 0..{self.num_classes - 1} and not the ignore index {self.ignore_index}"
            )
        return label

    def read(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The raw (3, H, W) uint8 image and (H, W) int64 label of sample ``index``."""
        image_path, label_path = self.samples[index]
        image, label = read_rgb(image_path), self.read_label(label_path)
        if tuple(image.shape[-2:]) != tuple(label.shape):
            raise DataError(f"image '{image_path}' is {tuple(image.shape[-2:])} (H, W) but its annotation "
                               f"'{label_path}' is {tuple(label.shape)}")
        return image, label

    def __getitem__(self, index: int):
        image, label = self.read(index)
        return self.transform(image, label) if self.transform is not None else (image, label)


def _normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    return TF.normalize(image.float() / 255.0, list(mean), list(std))


def _photometric_distortion(image: torch.Tensor) -> torch.Tensor:
    """MMSegmentation's PhotoMetricDistortion on a uint8 image: each step with probability 1/2.

    Brightness +-32 (additive), contrast x[0.5, 1.5] before or after saturation x[0.5, 1.5] and hue +-18 degrees.
    """
    if random.random() < 0.5:
        image = (image.int() + random.randint(-32, 32)).clamp(0, 255).to(torch.uint8)
    contrast_first = random.random() < 0.5
    contrast = random.uniform(0.5, 1.5) if random.random() < 0.5 else None
    if contrast_first and contrast is not None:
        image = TF.adjust_contrast(image, contrast)
    if random.random() < 0.5:
        image = TF.adjust_saturation(image, random.uniform(0.5, 1.5))
    if random.random() < 0.5:
        image = TF.adjust_hue(image, random.uniform(-18 / 360, 18 / 360))
    if not contrast_first and contrast is not None:
        image = TF.adjust_contrast(image, contrast)
    return image


class SegTrainTransform:
    """Random rescale, cat-max-ratio crop, flip, photometric distortion, normalise, pad: (image, label) tensors."""

    def __init__(self, crop_size: Tuple[int, int] = (512, 512), scale: Tuple[int, int] = (2048, 512),
                 ratio_range: Tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75, flip_prob: float = 0.5,
                 photometric: bool = True, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD, ignore_index: int = 255):
        self.crop_size = tuple(crop_size)
        self.scale, self.ratio_range = tuple(scale), tuple(ratio_range)
        self.cat_max_ratio, self.flip_prob, self.photometric = cat_max_ratio, flip_prob, photometric
        self.mean, self.std, self.ignore_index = mean, std, ignore_index

    def _crop_box(self, label: torch.Tensor) -> Tuple[int, int, int, int]:
        height, width = label.shape
        crop_h, crop_w = min(self.crop_size[0], height), min(self.crop_size[1], width)
        box = (0, 0, crop_h, crop_w)
        for _ in range(10):
            top, left = random.randint(0, height - crop_h), random.randint(0, width - crop_w)
            box = (top, left, crop_h, crop_w)
            if self.cat_max_ratio >= 1:
                break
            crop = label[top:top + crop_h, left:left + crop_w]
            _, counts = crop[crop != self.ignore_index].unique(return_counts=True)
            if len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio:
                break
        return box

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        ratio = random.uniform(*self.ratio_range)
        size = rescale_size(tuple(image.shape[-2:]), (int(self.scale[0] * ratio), int(self.scale[1] * ratio)))
        image = TF.resize(image, list(size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        label = TF.resize(label[None], list(size), interpolation=TF.InterpolationMode.NEAREST)[0]
        top, left, crop_h, crop_w = self._crop_box(label)
        image = image[:, top:top + crop_h, left:left + crop_w]
        label = label[top:top + crop_h, left:left + crop_w]
        if random.random() < self.flip_prob:
            image, label = image.flip(-1), label.flip(-1)
        if self.photometric:
            image = _photometric_distortion(image)
        image = _normalize(image, self.mean, self.std)
        pad_h, pad_w = self.crop_size[0] - crop_h, self.crop_size[1] - crop_w
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            label = F.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return image.contiguous(), label.contiguous()


class SegEvalTransform:
    """Rescale the image to fit ``scale`` (keeping its aspect ratio) and normalise; the label keeps its size."""

    def __init__(self, scale: Optional[Tuple[int, int]] = (2048, 512), mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD):
        self.scale, self.mean, self.std = scale, mean, std

    def __call__(self, image: torch.Tensor, label: Optional[torch.Tensor] = None):
        if self.scale is not None:
            size = rescale_size(tuple(image.shape[-2:]), tuple(self.scale))
            image = TF.resize(image, list(size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        image = _normalize(image, self.mean, self.std)
        return image if label is None else (image, label)
