"""Small synthetic dense-prediction datasets: coloured shapes on a noisy background, with exact labels.

Each image holds 1..``max_shapes`` non-overlapping shapes of three classes (square, disc, triangle), each class with
its own hue (jittered) on a textured grey background. They are written in the two formats vimamba reads:

* ADE20K layout (:func:`write_ade20k_shapes`): ``images/<split>/*.jpg`` and ``annotations/<split>/*.png`` with
  label 0 = background, 1..3 = the shapes (use ``num_classes=4``, no ``reduce_zero_label``), and ``classes.txt``;
* COCO json (:func:`write_coco_shapes`): ``images/*.jpg`` and ``annotations.json`` with one polygon instance per
  shape, categories ``square`` / ``disc`` / ``triangle`` under non-contiguous ids (to exercise the id mapping),
  and optionally crowd regions.

They exist to check the whole pipeline end to end (data, training, metrics) on a CPU in seconds; they say nothing
about accuracy on real data.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPE_CLASSES", "COCO_CATEGORY_IDS", "draw_shapes", "write_ade20k_shapes", "write_coco_shapes"]

SHAPE_CLASSES = ("square", "disc", "triangle")
COCO_CATEGORY_IDS = (3, 7, 11)
_HUES = ((220, 60, 50), (50, 190, 70), (60, 90, 230))  # base colour per class


def _polygon(kind: str, cx: float, cy: float, r: float) -> List[Tuple[float, float]]:
    if kind == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == "disc":
        return [(cx + r * math.cos(2 * math.pi * k / 24), cy + r * math.sin(2 * math.pi * k / 24)) for k in range(24)]
    return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]  # triangle


def draw_shapes(rng: random.Random, height: int, width: int, max_shapes: int = 3):
    """One sample: (RGB uint8 array (H, W, 3), label array (H, W) with 0 = background, list of (class, polygon))."""
    noise = np.random.default_rng(rng.randrange(2**32))
    image = np.clip(110 + 25 * noise.standard_normal((height, width, 1)) + noise.integers(-20, 20, (1, 1, 3)),
                    0, 255).astype(np.uint8)
    canvas = Image.fromarray(image)
    label = Image.new("L", (width, height), 0)
    draw_image, draw_label = ImageDraw.Draw(canvas), ImageDraw.Draw(label)
    placed: List[Tuple[float, float, float]] = []
    instances = []
    for _ in range(rng.randint(1, max_shapes)):
        for _attempt in range(20):
            r = rng.uniform(0.12, 0.22) * min(height, width)
            cx, cy = rng.uniform(r + 1, width - r - 1), rng.uniform(r + 1, height - r - 1)
            if all(math.hypot(cx - x, cy - y) > (r + s) * 1.45 for x, y, s in placed):
                break
        else:
            continue
        placed.append((cx, cy, r))
        cls = rng.randrange(len(SHAPE_CLASSES))
        polygon = _polygon(SHAPE_CLASSES[cls], cx, cy, r)
        colour = tuple(int(min(255, max(0, c + rng.randint(-25, 25)))) for c in _HUES[cls])
        draw_image.polygon(polygon, fill=colour)
        draw_label.polygon(polygon, fill=cls + 1)
        instances.append((cls, polygon))
    return np.asarray(canvas), np.asarray(label), instances


def write_ade20k_shapes(root, splits: Dict[str, int] = None, size: Tuple[int, int] = (64, 64),
                        seed: int = 0) -> List[str]:
    """Write a shapes dataset in the ADE20K layout (and ``classes.txt``); returns the class names (index = label)."""
    root = Path(root)
    rng = random.Random(seed)
    names = ["background", *SHAPE_CLASSES]
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    for split, count in (splits or {"training": 16, "validation": 8}).items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label, _ = draw_shapes(rng, *size)
            Image.fromarray(image).save(root / "images" / split / f"shapes_{i:05d}.jpg", quality=95)
            Image.fromarray(label).save(root / "annotations" / split / f"shapes_{i:05d}.png")
    return names


def write_coco_shapes(root, num_images: int = 16, sizes: Sequence[Tuple[int, int]] = ((64, 64),), seed: int = 0,
                      crowd_every: int = 0, annotation_name: str = "annotations.json") -> Tuple[Path, Path]:
    """Write a shapes dataset as COCO json + images; every ``crowd_every``-th image also gets a crowd region.

    Returns (image folder, annotation file).
    """
    root = Path(root)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    images, annotations = [], []
    for i in range(num_images):
        height, width = sizes[i % len(sizes)]
        image, _, instances = draw_shapes(rng, height, width)
        name = f"shapes_{i:05d}.jpg"
        Image.fromarray(image).save(image_dir / name, quality=95)
        images.append({"id": i + 1, "file_name": name, "height": height, "width": width})
        for cls, polygon in instances:
            xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": COCO_CATEGORY_IDS[cls], "iscrowd": 0,
                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                "segmentation": [[round(v, 2) for point in polygon for v in point]],
            })
        if crowd_every and i % crowd_every == 0:  # a crowd region in a corner, as an uncompressed RLE
            mask = np.zeros((height, width), dtype=np.uint8)
            mask[: height // 5, : width // 5] = 1
            counts, flat, current, run = [], mask.flatten(order="F"), 0, 0
            for v in flat:  # run lengths, starting with zeros, column-major (COCO's convention)
                if v != current:
                    counts.append(run)
                    current, run = v, 0
                run += 1
            counts.append(run)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": COCO_CATEGORY_IDS[0], "iscrowd": 1,
                "bbox": [0, 0, width // 5, height // 5], "segmentation": {"counts": counts, "size": [height, width]},
            })
    categories = [{"id": cid, "name": name} for cid, name in zip(COCO_CATEGORY_IDS, SHAPE_CLASSES)]
    annotation_file = root / annotation_name
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return image_dir, annotation_file
