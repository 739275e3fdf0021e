"""Small image datasets the training tests make for themselves (no downloads)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

CLASSES = ("bottom", "left", "top")


def pattern(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 image whose class is where a bright half is: 0 bottom, 1 left, 2 top (plus noise)."""
    img = rng.normal(60, 25, (size, size, 3))
    half = size // 2
    region = {0: (slice(half, None), slice(None)), 1: (slice(None), slice(None, half)),
              2: (slice(None, half), slice(None))}[label]
    img[region] += 140
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(root: Path, per_class: Sequence[int] = (8, 4), size: int = 16, seed: int = 0,
                      odd_modes: bool = True, corrupt: bool = True) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png`` with learnable classes.

    ``odd_modes`` stores some images as grayscale (L), RGBA, palette (P) and CMYK (JPEG); ``corrupt`` adds one
    truncated PNG to the training split.
    """
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val"), per_class):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = Image.fromarray(pattern(label, size, rng))
                kind = i % 5 if odd_modes else 0
                if kind == 1:
                    img.convert("L").save(folder / f"{i}.png")
                elif kind == 2:
                    rgba = img.convert("RGBA")
                    rgba.putalpha(255)
                    rgba.save(folder / f"{i}.png")
                elif kind == 3:
                    img.convert("P").save(folder / f"{i}.png")
                elif kind == 4:
                    img.convert("CMYK").save(folder / f"{i}.jpg", quality=95)
                else:
                    img.save(folder / f"{i}.png")
    if corrupt:
        good = (root / "train" / CLASSES[0] / "0.png").read_bytes()
        (root / "train" / CLASSES[0] / "broken.png").write_bytes(good[: len(good) // 2])
    return root
