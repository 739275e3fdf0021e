"""Image preprocessing: timm's transforms with the DeiT/Vim recipe, and the preprocessing stored with a model.

:class:`Preprocessing` is what a trained model needs at inference (input size and channels, mean/std, resize
interpolation, crop fraction); it is saved in every checkpoint so ``vimamba eval`` / ``predict`` prepare images
exactly as the training run evaluated them. The official Vim checkpoints use resize 256 (bicubic), centre crop
224, ImageNet mean/std: ``crop_pct = 224 / 256 = 0.875``.

:class:`Augmentation` is the training-time randomness (timm ``create_transform(is_training=True)``): random resized
crop, horizontal flip, RandAugment (``rand-m9-mstd0.5-inc1``; repaired by :mod:`.augment`), colour jitter (off
when RandAugment is on) and random erasing. Mixup/CutMix act on batches and live in the trainer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

from ..errors import InputError
from .augment import make_augmentations_safe

__all__ = ["Preprocessing", "Augmentation", "build_train_transform", "build_eval_transform"]


@dataclass
class Preprocessing:
    """How images are prepared for a model at evaluation time."""

    img_size: Tuple[int, int] = (224, 224)
    in_chans: int = 3
    mean: Tuple[float, ...] = tuple(IMAGENET_DEFAULT_MEAN)
    std: Tuple[float, ...] = tuple(IMAGENET_DEFAULT_STD)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875  # resize the shorter side to img_size / crop_pct, then centre-crop img_size

    def __post_init__(self) -> None:
        if isinstance(self.img_size, int):
            self.img_size = (self.img_size, self.img_size)
        self.img_size = tuple(int(s) for s in self.img_size)  # type: ignore[assignment]
        self.mean, self.std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise InputError(f"mean {self.mean} / std {self.std} must have one value per channel ({self.in_chans})")
        if not 0 < self.crop_pct <= 1:
            raise InputError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @property
    def image_mode(self) -> str:
        """The PIL mode images are converted to: "L" for 1-channel models, else "RGB"."""
        return "L" if self.in_chans == 1 else "RGB"

    def with_size(self, img_size: Optional[int]) -> "Preprocessing":
        return self if img_size is None else Preprocessing(**{**asdict(self), "img_size": (img_size, img_size)})

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(img_size=list(self.img_size), mean=list(self.mean), std=list(self.std))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


@dataclass
class Augmentation:
    """Training-time image augmentation (timm), defaults = the DeiT/Vim ImageNet recipe."""

    scale: Tuple[float, float] = (0.08, 1.0)  # random-resized-crop area fraction
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)  # random-resized-crop aspect ratio
    hflip: float = 0.5
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"  # None/"" = off
    color_jitter: float = 0.3  # only used when auto_augment is off (DeiT behaviour)
    re_prob: float = 0.25  # random erasing probability
    re_mode: str = "pixel"
    re_count: int = 1
    interpolation: str = "bicubic"
    train_crop_mode: str = "rrc"  # timm: 'rrc' random resized crop; 'rkrr' resize-keep-ratio + random crop/pad

    def to_dict(self) -> dict:
        return asdict(self)


def build_train_transform(pre: Preprocessing, aug: Augmentation):
    """The training transform: crop/flip/RandAugment on the PIL image, then to tensor, normalise, erase."""
    auto_augment = aug.auto_augment or None
    if auto_augment and pre.in_chans == 1:
        raise InputError("RandAugment/AutoAugment work on RGB images; turn it off (--aa none) for 1-channel models")
    transform = create_transform(
        pre.img_size, is_training=True, train_crop_mode=aug.train_crop_mode, scale=tuple(aug.scale),
        ratio=tuple(aug.ratio), hflip=aug.hflip, color_jitter=aug.color_jitter or None, auto_augment=auto_augment,
        interpolation=aug.interpolation, mean=pre.mean, std=pre.std, re_prob=aug.re_prob, re_mode=aug.re_mode,
        re_count=aug.re_count,
    )
    # timm's policy, with a posterize that works on Pillow 13 and ops that accept any image mode (augment.py)
    return make_augmentations_safe(transform)


def build_eval_transform(pre: Preprocessing):
    """Resize the shorter side to ``size / crop_pct``, centre-crop ``size``, to tensor, normalise."""
    return create_transform(pre.img_size, is_training=False, interpolation=pre.interpolation, mean=pre.mean,
                            std=pre.std, crop_pct=pre.crop_pct)
