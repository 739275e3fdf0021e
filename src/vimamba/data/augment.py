"""timm's RandAugment / AutoAugment / AugMix, made safe for every image: same policies, two repairs.

1. **Posterize at zero bits.** The Vim/DeiT policy ``rand-m9-mstd0.5-inc1`` includes ``PosterizeIncreasing``,
   whose top magnitude keeps 0 bits per channel (a black image, as Google's TF implementation and Pillow up to
   12 produce). Pillow 13 refuses ``ImageOps.posterize(img, 0)`` (``ValueError: bits must be between or equal to
   1 and 8``), so the recipe died in a data worker within its first steps. :func:`posterize` keeps ``bits``
   (clamped to 0..8) most significant bits itself, with the pre-13 result at 0 bits.
2. **Image modes.** The ops are defined on RGB images (fill colours are RGB triples; invert, solarize, posterize
   and sharpness refuse LA, RGBA, CMYK, I, I;16, F, 1 or P). :class:`SafeAugmentOp` converts any other mode to
   RGB first (:func:`~vimamba.data.images.to_mode`: transparency over white, 16-bit rescaled), which is what
   the datasets feed anyway; an RGB image goes through untouched.

Everything else is timm's: which ops, their probabilities, magnitude noise (``mstd``) and level functions.
:func:`make_augmentations_safe` applies both repairs to the policies inside a transform built by timm's
``create_transform``; :func:`rand_augment` builds a policy from a timm config string directly.
"""
from __future__ import annotations

from typing import Any, List, Optional

from PIL import Image

from .images import to_mode

__all__ = ["posterize", "SafeAugmentOp", "make_augmentations_safe", "rand_augment", "POSTERIZE_OPS"]

POSTERIZE_OPS = ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")


def posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """Keep the ``bits_to_keep`` most significant bits of each 8-bit channel (0 bits: a black image).

    Pillow's ``ImageOps.posterize`` semantics for 1..8 bits, extended to 0 the way Pillow < 13 and TF do.
    """
    bits = int(min(8, max(0, bits_to_keep)))
    if bits >= 8:
        return img
    if img.mode not in ("L", "RGB"):
        img = to_mode(img, "RGB")
    mask = (0xFF << (8 - bits)) & 0xFF
    lut = [i & mask for i in range(256)] * len(img.getbands())
    return img.point(lut)


class SafeAugmentOp:
    """A timm ``AugmentOp`` (probability, magnitude noise, level function kept) that accepts any image mode and
    posterizes with :func:`posterize`."""

    def __init__(self, op: Any):
        if getattr(op, "name", None) in POSTERIZE_OPS:
            op.aug_fn = posterize
        self.op = op

    @property
    def name(self) -> str:
        return self.op.name

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.mode != "RGB":
            img = to_mode(img, "RGB")
        return self.op(img)

    def __repr__(self) -> str:
        return f"Safe{self.op!r}"


def _wrap_ops(policy: Any) -> bool:
    """Wrap the ops of a timm RandAugment / AugMixAugment (``.ops``) or AutoAugment (``.policy``) in place."""
    from timm.data.auto_augment import AugmentOp

    def wrap(op):
        return SafeAugmentOp(op) if isinstance(op, AugmentOp) else op

    if hasattr(policy, "ops") and isinstance(policy.ops, list):
        policy.ops = [wrap(op) for op in policy.ops]
        return True
    if hasattr(policy, "policy") and isinstance(policy.policy, list):
        policy.policy = [[wrap(op) for op in sub] for sub in policy.policy]
        return True
    return False


def make_augmentations_safe(transform: Any) -> Any:
    """Wrap every timm augmentation op inside ``transform`` (a torchvision ``Compose``, possibly nested) with
    :class:`SafeAugmentOp`; returns ``transform`` (changed in place)."""
    from timm.data.auto_augment import AugMixAugment, AutoAugment, RandAugment

    stack: List[Any] = [transform]
    while stack:
        t = stack.pop()
        if isinstance(t, (RandAugment, AutoAugment, AugMixAugment)):
            _wrap_ops(t)
        for child in getattr(t, "transforms", None) or []:
            stack.append(child)
    return transform


def rand_augment(config: str = "rand-m9-mstd0.5-inc1", hparams: Optional[dict] = None):
    """timm's ``rand_augment_transform(config, hparams)`` with safe ops (the policy the recipe uses)."""
    from timm.data.auto_augment import rand_augment_transform

    policy = rand_augment_transform(config, dict(hparams or dict(translate_const=100, img_mean=(124, 116, 104))))
    _wrap_ops(policy)
    return policy

