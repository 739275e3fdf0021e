"""The official augmentation recipe never fails, whatever the image mode or size (issue 10, case 1)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from vimamba.data import Augmentation, ImageFolderDataset, Preprocessing, build_train_transform
from vimamba.data.augment import SafeAugmentOp, posterize, rand_augment
from vimamba.data.images import collate_skipping_unreadable

MODES = ("RGB", "L", "LA", "RGBA", "CMYK", "P", "I", "I;16", "F", "1")
SIZES = ((1, 1), (1, 9), (9, 1), (300, 2), (2, 300), (7, 5))
RECIPE = "rand-m9-mstd0.5-inc1"


def image(mode: str, size, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if mode == "I;16":
        return Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))
    if mode in ("I", "F"):
        return Image.fromarray(rgb[..., 0]).convert(mode)
    img = Image.fromarray(rgb, "RGB").convert(mode)
    if mode in ("LA", "RGBA"):
        img.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
    return img


def all_ops():
    from timm.data.auto_augment import _RAND_INCREASING_TRANSFORMS, _RAND_TRANSFORMS

    return sorted(set(_RAND_INCREASING_TRANSFORMS) | set(_RAND_TRANSFORMS) | {"PosterizeOriginal"})


@pytest.mark.parametrize("mode", MODES)
def test_every_op_at_every_magnitude_on_every_mode_and_size(mode):
    from timm.data.auto_augment import AugmentOp

    images = [image(mode, size, seed=i) for i, size in enumerate(SIZES)]
    random.seed(0)
    for name in all_ops():
        for magnitude in range(11):
            for mstd in (0.0, 0.5):
                op = SafeAugmentOp(AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=dict(
                    translate_const=100, img_mean=(124, 116, 104), magnitude_std=mstd)))
                for img in images:
                    out = op(img)
                    assert out.mode == "RGB" and out.size == img.size, (name, magnitude, mode, img.size)


def test_posterize_matches_a_bit_mask_and_zero_bits_is_black():
    img = image("RGB", (9, 4))
    array = np.asarray(img)
    for bits in range(0, 9):
        expected = array & np.uint8((0xFF << (8 - bits)) & 0xFF)
        np.testing.assert_array_equal(np.asarray(posterize(img, bits)), expected)
    assert not np.asarray(posterize(img, 0)).any()
    np.testing.assert_array_equal(np.asarray(posterize(img, -3)), 0)  # clamped
    np.testing.assert_array_equal(np.asarray(posterize(img, 12)), array)


def test_the_recipe_draws_posterize_at_zero_bits_and_survives():
    # PosterizeIncreasing at magnitude 10 keeps 0 bits: the op that killed the official recipe on Pillow 13
    from timm.data.auto_augment import AugmentOp

    op = SafeAugmentOp(AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10))
    assert op.op.level_fn(10, op.op.hparams) == (0,)
    assert not np.asarray(op(image("RGB", (5, 5)))).any()
    policy = rand_augment(RECIPE)
    assert {o.name for o in policy.ops} >= {"PosterizeIncreasing", "SolarizeIncreasing", "Rotate"}
    assert all(isinstance(o, SafeAugmentOp) for o in policy.ops)


def test_train_transform_uses_the_safe_policy_with_timm_semantics():
    transform = build_train_transform(Preprocessing(img_size=(8, 8)), Augmentation())
    policies = [t for t in transform.transforms if hasattr(t, "ops")]
    assert len(policies) == 1 and policies[0].num_layers == 2
    ops = policies[0].ops
    assert len(ops) == 15 and all(isinstance(o, SafeAugmentOp) for o in ops)
    assert {o.op.magnitude for o in ops} == {9} and {o.op.magnitude_std for o in ops} == {0.5}
    assert {o.op.prob for o in ops} == {0.5}


def test_full_official_recipe_over_thousands_of_small_odd_images(tmp_path):
    # RandAugment m9/mstd0.5, random erasing, Mixup/CutMix and repeated augmentation, as `vimamba train` sets them
    from timm.data import Mixup
    from timm.data.distributed_sampler import RepeatAugSampler

    rng = np.random.default_rng(1)
    classes = ("a", "b", "c", "d")
    for c in classes:
        (tmp_path / c).mkdir()
    n = 0
    for i in range(600):
        mode = MODES[i % len(MODES)]
        w, h = (int(v) for v in rng.choice([1, 2, 3, 5, 8, 13], 2))
        img = image(mode, (w, h), seed=i)
        suffix = ".tiff" if mode in ("I", "I;16", "F", "CMYK") else ".png"
        img.save(tmp_path / classes[i % 4] / f"{i}{suffix}")
        n += 1
    transform = build_train_transform(Preprocessing(img_size=(8, 8)), Augmentation())
    dataset = ImageFolderDataset(tmp_path, transform, strict=True)
    assert len(dataset) == n
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1, num_classes=4)
    random.seed(0)
    torch.manual_seed(0)
    seen = 0
    for epoch, rank in ((0, 0), (0, 1), (1, 0), (1, 1)):  # 2 ranks x 2 epochs of repeated augmentation: 2,400 images
        sampler = RepeatAugSampler(dataset, num_replicas=2, rank=rank, num_repeats=3, selected_round=0)
        sampler.set_epoch(epoch)
        order = list(sampler)
        for start in range(0, len(order) - 15, 16):
            images, targets, skipped = collate_skipping_unreadable([dataset[j] for j in order[start:start + 16]])
            assert skipped == 0 and images.shape == (16, 3, 8, 8) and torch.isfinite(images).all()
            mixed, soft = mixup(images, targets)
            assert soft.shape == (16, 4) and torch.allclose(soft.sum(1), torch.ones(16))
            seen += images.shape[0]
    assert seen >= 4 * (n // 2 - 16)
