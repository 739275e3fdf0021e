"""Pictures of predictions: colour-coded class masks over images, boxes and instance masks (torchvision.utils)."""
from __future__ import annotations

from typing import Mapping, Sequence, Tuple

import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..errors import InputError
from .classes import palette

__all__ = ["class_mask_png", "overlay_classes", "draw_detections", "save_rgb"]


def class_mask_png(classes: torch.Tensor, num_classes: int) -> Image.Image:
    """(H, W) class indices -> a palette PNG: the pixel values are the classes, viewers show their colours."""
    if num_classes > 256:
        raise InputError("a palette PNG holds at most 256 classes")
    png = Image.fromarray(classes.to(torch.uint8).cpu().numpy(), mode="P")
    png.putpalette([v for colour in palette(num_classes) for v in colour])
    return png


def overlay_classes(image: torch.Tensor, classes: torch.Tensor, num_classes: int, alpha: float = 0.5,
                    ignore: Sequence[int] = ()) -> torch.Tensor:
    """(3, H, W) uint8 image with each class's pixels tinted by its palette colour (classes in ``ignore`` not)."""
    present = [c for c in classes.unique().tolist() if c not in set(ignore) and 0 <= c < num_classes]
    if not present:
        return image
    masks = torch.stack([classes == c for c in present])
    colours = palette(num_classes)
    return draw_segmentation_masks(image, masks, alpha=alpha, colors=[colours[c] for c in present])


def draw_detections(image: torch.Tensor, detection: Mapping[str, torch.Tensor], class_names: Sequence[str],
                    score_thresh: float = 0.5, mask_threshold: float = 0.5, alpha: float = 0.45) -> torch.Tensor:
    """(3, H, W) uint8 image with the detections above ``score_thresh``: masks, boxes, "name 0.93" labels.

    ``detection`` is one image's detector output (labels 1..K index ``class_names[label - 1]``).
    """
    keep = detection["scores"] >= score_thresh
    labels = detection["labels"][keep].tolist()
    colours = palette(max(len(class_names), 1))
    box_colours: list[Tuple[int, int, int]] = [colours[(label - 1) % len(colours)] for label in labels]
    if not labels:
        return image
    if "masks" in detection:
        masks = detection["masks"][keep][:, 0] > mask_threshold
        image = draw_segmentation_masks(image, masks.cpu(), alpha=alpha, colors=box_colours)
    captions = [f"{class_names[label - 1] if 0 < label <= len(class_names) else label} {score:.2f}"
                for label, score in zip(labels, detection["scores"][keep].tolist())]
    return draw_bounding_boxes(image, detection["boxes"][keep].cpu(), labels=captions, colors=box_colours, width=2)


def save_rgb(image: torch.Tensor, path) -> None:
    """Save a (3, H, W) uint8 tensor as an image file."""
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(path)
