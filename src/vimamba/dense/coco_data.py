"""COCO-format detection / instance-segmentation data, checked on load, and its augmentation.

A dataset is an image folder and a COCO json (``images``, ``annotations``, ``categories``). Every annotation is
checked when the dataset is opened; problems are reported by annotation id, image file name and value:

* an ``image_id`` or ``category_id`` that the json does not define, a missing or malformed ``bbox``, a box of zero
  width or height, a box outside its image by more than ``box_tolerance`` pixels, a malformed ``segmentation``
  (masks on), an image file that is missing or empty.

With ``on_invalid="error"`` (default) any of these raises :class:`~vimamba.data.images.DataError` listing them;
with ``on_invalid="skip"`` the offending annotations (and missing images) are left out and counted in
:attr:`CocoDetection.report`. Nothing is dropped without a count. Boxes that overshoot the image by less than the
tolerance (COCO's own rounding) are clipped, and counted too.

Crowd annotations (``iscrowd=1``) are not training targets (as in torchvision's and Detectron2's COCO training); they
stay in :attr:`CocoDetection.coco`, the ground truth the COCO evaluation uses, where they mark regions in which
detections are neither rewarded nor penalised. Training skips images without a (non-crowd) annotation, counted;
evaluation keeps them.

Samples are ``(image, target)``: a float (3, H, W) image in [0, 1] (the detector normalises it) and a dict with
``boxes`` (N, 4) x1 y1 x2 y2 in pixels, ``labels`` (N,) in 1..K (0 is background), ``masks`` (N, H, W) uint8 when
masks are on, and ``image_id``.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torchvision.transforms.v2 as T
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision import tv_tensors

from ..data.images import DataError
from ..errors import InputError
from .files import list_examples, read_rgb

__all__ = ["CocoDetection", "AnnotationReport", "detection_train_transform", "collate_detection"]

_PROBLEMS = {
    "unknown_image": "refer to an image id the json does not define",
    "unknown_category": "have a category id the json does not define",
    "bad_bbox": "have a missing or malformed bbox (want [x, y, width, height], 4 finite numbers)",
    "empty_bbox": "have a box of zero or negative width or height",
    "outside_image": "have a box outside their image",
    "bad_segmentation": "have a missing or malformed segmentation (want polygons or RLE of the image size)",
    "missing_file": "are images whose file is missing or empty",
    "of_missing_file": "belong to an image whose file is missing or empty",
}


@dataclass
class AnnotationReport:
    """What loading the json found: counts, and a few named examples of each problem."""

    images: int = 0
    annotations: int = 0
    crowd: int = 0  # crowd annotations: evaluation ignore regions, not training targets
    clipped: int = 0  # boxes overshooting the image by less than the tolerance, clipped to it
    skipped_empty_images: int = 0  # training images without a non-crowd annotation, left out
    problems: Dict[str, List[str]] = field(default_factory=lambda: defaultdict(list))

    def dropped(self) -> int:
        return sum(len(v) for v in self.problems.values())

    def summary(self) -> str:
        lines = [f"{self.images} images, {self.annotations} annotations ({self.crowd} crowd)"]
        if self.clipped:
            lines.append(f"{self.clipped} boxes overshooting their image slightly were clipped to it")
        if self.skipped_empty_images:
            lines.append(f"{self.skipped_empty_images} images without a non-crowd annotation are not used for training")
        for kind, items in self.problems.items():
            lines.append(f"left out: {len(items)} that {_PROBLEMS[kind]}: {list_examples(items, 3)}")
        return "\n".join(lines)


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"annotation file not found: '{path}'")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"'{path}' is not valid JSON: {e}") from e
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)] \
        if isinstance(data, dict) else ["images", "annotations", "categories"]
    if missing:
        raise DataError(f"'{path}' is not a COCO annotation file: it lacks the list(s) {missing}")
    for kind, keys in (("images", ("id", "file_name", "width", "height")), ("categories", ("id", "name"))):
        for entry in data[kind]:
            if not isinstance(entry, dict) or any(k not in entry for k in keys):
                raise DataError(f"'{path}': an entry of '{kind}' lacks one of {list(keys)}: {str(entry)[:200]}")
    return data


def _segmentation_ok(segmentation, height: int, width: int) -> bool:
    if isinstance(segmentation, list):  # polygons: lists of x, y pairs, at least a triangle each
        return len(segmentation) > 0 and all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(isinstance(v, (int, float)) for v in p)
            for p in segmentation
        )
    if isinstance(segmentation, dict):  # RLE, compressed or not
        return "counts" in segmentation and list(segmentation.get("size", [])) == [height, width]
    return False


class CocoDetection(torch.utils.data.Dataset):
    """A COCO json + image folder, validated (see the module docstring). ``coco``: the cleaned ground truth."""

    def __init__(self, image_dir, annotation_file, *, train: bool = False, masks: bool = True,
                 transform: Optional[Callable] = None, on_invalid: str = "error", box_tolerance: float = 1.0):
        if on_invalid not in ("error", "skip"):
            raise InputError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        self.train, self.masks, self.transform = train, masks, transform
        if not self.image_dir.is_dir():
            raise DataError(f"image folder not found: '{self.image_dir}'")
        data = _load_json(self.annotation_file)

        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids: List[int] = [c["id"] for c in categories]
        self.class_names: List[str] = [str(c["name"]) for c in categories]
        self.label_of_category: Dict[int, int] = {cid: k + 1 for k, cid in enumerate(self.category_ids)}

        self.report = report = AnnotationReport()
        images, missing = {}, {}
        for image in data["images"]:
            path = self.image_dir / image["file_name"]
            if not path.is_file() or path.stat().st_size == 0:
                report.problems["missing_file"].append(f"'{path}' (image id {image['id']})")
                missing[image["id"]] = path
            else:
                images[image["id"]] = image
        annotations = []
        for ann in data["annotations"]:
            if ann.get("image_id") in missing:  # the json defines the image; its file is what is missing
                report.problems["of_missing_file"].append(
                    f"annotation {ann.get('id', '?')} of missing '{missing[ann['image_id']]}'")
                continue
            kind, detail = self._check(ann, images, box_tolerance)
            if kind is not None:
                name = images[ann["image_id"]]["file_name"] if ann.get("image_id") in images else "?"
                report.problems[kind].append(f"annotation {ann.get('id', '?')} of '{name}' ({detail})")
            else:
                annotations.append(ann)
        if report.problems and on_invalid == "error":
            lines = [f"'{self.annotation_file}' has annotations vimamba cannot use as given:"]
            for kind, items in report.problems.items():
                lines.append(f"  {len(items)} {_PROBLEMS[kind]}: {list_examples(items, 3)}")
            lines.append("  fix the file, or pass on_invalid='skip' (command line: --skip-invalid) to leave them out "
                         "with a count")
            raise DataError("\n".join(lines))
        if not images:
            raise DataError(f"'{self.annotation_file}' defines no usable image")

        cleaned = {k: v for k, v in data.items() if k not in ("images", "annotations")}
        cleaned.update(images=list(images.values()), annotations=annotations)
        self.coco = _quiet_coco(cleaned)
        report.images, report.annotations = len(images), len(annotations)
        report.crowd = sum(1 for a in annotations if a.get("iscrowd", 0))
        ids = sorted(images)
        if train:
            with_targets = {a["image_id"] for a in annotations if not a.get("iscrowd", 0)}
            report.skipped_empty_images = sum(1 for i in ids if i not in with_targets)
            ids = [i for i in ids if i in with_targets]
            if not ids:
                raise DataError(f"'{self.annotation_file}' has no image with a non-crowd annotation to train on")
        self.image_ids: List[int] = ids

    def _check(self, ann: dict, images: dict, tolerance: float) -> Tuple[Optional[str], str]:
        """(problem kind, detail) of one annotation, or (None, "") after clipping a slightly overshooting box."""
        if ann.get("image_id") not in images:
            return "unknown_image", f"image id {ann.get('image_id')!r}"
        if ann.get("category_id") not in self.label_of_category:
            return "unknown_category", f"category id {ann.get('category_id')!r}; known ids {self.category_ids}"
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                                for v in box)):
            return "bad_bbox", f"bbox {box!r}"
        x, y, w, h = box
        if w <= 0 or h <= 0:
            return "empty_bbox", f"bbox {box}"
        image = images[ann["image_id"]]
        width, height = image["width"], image["height"]
        if x < -tolerance or y < -tolerance or x + w > width + tolerance or y + h > height + tolerance:
            return "outside_image", f"bbox {box} in a {width}x{height} image"
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + w, float(width)), min(y + h, float(height))
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            if x2 - x1 <= 0 or y2 - y1 <= 0:
                return "empty_bbox", f"bbox {box} clipped to the {width}x{height} image"
            ann["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            self.report.clipped += 1
        if self.masks and not _segmentation_ok(ann.get("segmentation"), height, width):
            return "bad_segmentation", f"segmentation {str(ann.get('segmentation'))[:80]}"
        if "area" not in ann:  # COCOeval's size ranges read it
            ann["area"] = float(mask_utils.area(self._rle(ann, height, width))) if self.masks else w * h
        return None, ""

    @staticmethod
    def _rle(ann: dict, height: int, width: int):
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list):
            return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, height, width)
        return segmentation

    def __len__(self) -> int:
        return len(self.image_ids)

    def read(self, index: int) -> Tuple[torch.Tensor, dict]:
        """The (3, H, W) float image in [0, 1] and its non-crowd targets, before any transform."""
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        image = read_rgb(path)
        height, width = image.shape[-2:]
        if (height, width) != (info["height"], info["width"]):
            raise DataError(f"image '{path}' is {width}x{height} but the json says {info['width']}x{info['height']}")
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([self.label_of_category[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": image_id,
        }
        if self.masks:
            with warnings.catch_warnings():  # pycocotools' decode trips a numpy 2 DeprecationWarning on every call
                warnings.simplefilter("ignore", DeprecationWarning)
                stacked = [torch.from_numpy(mask_utils.decode(self._rle(a, height, width))) for a in anns]
            target["masks"] = tv_tensors.Mask(torch.stack(stacked) if stacked else
                                              torch.zeros(0, height, width, dtype=torch.uint8))
        return tv_tensors.Image(image.float() / 255.0), target

    def __getitem__(self, index: int):
        image, target = self.read(index)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image.as_subclass(torch.Tensor), _plain(target)


def _plain(target: dict) -> dict:
    """tv_tensors -> plain tensors (the detector's losses do not need the wrappers)."""
    return {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in target.items()}


def _quiet_coco(data: dict) -> COCO:
    """A pycocotools COCO index of ``data`` without its progress prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def detection_train_transform(lsj_size: Optional[int] = None, lsj_scale: Tuple[float, float] = (0.1, 2.0),
                              flip_prob: float = 0.5) -> Callable:
    """Horizontal flip, and with ``lsj_size`` ViTDet's large-scale jitter: rescale by r in ``lsj_scale`` of the
    size that fits ``lsj_size`` x ``lsj_size``, then a random ``lsj_size`` square crop (padded where smaller).

    Boxes cut below 1 pixel by the crop go, with their masks and labels (``SanitizeBoundingBoxes``).
    """
    steps: List[Callable] = [T.RandomHorizontalFlip(flip_prob)]
    if lsj_size is not None:
        steps += [T.ScaleJitter((lsj_size, lsj_size), scale_range=lsj_scale),
                  T.RandomCrop((lsj_size, lsj_size), pad_if_needed=True, fill=0.0)]
    steps.append(T.SanitizeBoundingBoxes(min_size=1.0))
    return T.Compose(steps)


def collate_detection(batch):
    """A list of (image, target) -> (list of images, list of targets): images keep their own sizes."""
    images, targets = zip(*batch)
    return list(images), list(targets)
