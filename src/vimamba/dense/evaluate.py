"""Evaluation loops over a dataset, sharded over torchrun processes: mIoU for segmentation, COCO AP for detection.

Every process evaluates its share of the images (``ShardedEvalSampler``: each image exactly once); segmentation
sums the per-process confusion matrices, detection gathers the COCO results on rank 0 for pycocotools, and every
process returns the same metrics.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..data.workers import worker_init
from ..engine.distributed import all_gather_objects, broadcast_object, get_rank, get_world_size, is_main_process
from ..engine.precision import MixedPrecision
from ..engine.reporting import progress
from ..engine.sampling import ShardedEvalSampler
from .coco_data import CocoDetection, collate_detection
from .coco_eval import detections_to_coco, evaluate_coco
from .seg_data import SegmentationDataset
from .seg_metrics import ConfusionMatrix

__all__ = ["evaluate_segmentation", "evaluate_detection", "flatten_coco_metrics"]


def _loader(dataset, workers: int, collate_fn=None) -> DataLoader:
    sampler = ShardedEvalSampler(dataset, rank=get_rank(), world_size=get_world_size())
    # Data workers that end with their main process and end it when they fail, as in training.
    return DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                      worker_init_fn=worker_init if workers > 0 else None)


def _autocast(precision: Optional[MixedPrecision]):
    return precision.autocast() if precision is not None else torch.autocast("cpu", enabled=False)


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, dataset: SegmentationDataset, *, device: torch.device,
                          mode: str = "slide", crop_size: Tuple[int, int] = (512, 512),
                          stride: Tuple[int, int] = (341, 341), class_names=None, workers: int = 2,
                          precision: Optional[MixedPrecision] = None) -> Dict[str, object]:
    """mIoU, mAcc, aAcc and per-class IoU over ``dataset`` (images rescaled by its transform, labels at full size).

    Logits are resized bilinearly to the label size before the argmax, as MMSegmentation does.
    """
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(model.num_classes, dataset.ignore_index)
    for image, label in progress(_loader(dataset, workers), desc=f"eval ({mode})"):
        with _autocast(precision):
            logits = model.inference(image.to(device), mode=mode, crop_size=crop_size, stride=stride,
                                     out_size=tuple(label.shape[-2:]))
        confusion.update(logits.argmax(1), label.to(device))
    total = sum(m.cpu() for m in all_gather_objects(confusion.matrix.cpu()))
    confusion.matrix = total
    model.train(was_training)
    return confusion.compute(class_names)


@torch.no_grad()
def evaluate_detection(model: nn.Module, dataset: CocoDetection, *, device: torch.device, workers: int = 2,
                       precision: Optional[MixedPrecision] = None) -> Dict[str, Dict[str, Optional[float]]]:
    """COCO box (and mask, for Mask R-CNN) AP of ``model`` over ``dataset``: ``{"bbox": {...}, "segm": {...}}``."""
    was_training = model.training
    model.eval()
    results = []
    for images, targets in progress(_loader(dataset, workers, collate_detection), desc="eval"):
        with _autocast(precision):
            outputs = model([image.to(device) for image in images])
        for target, output in zip(targets, outputs):
            output = {k: v.float() if v.is_floating_point() else v for k, v in output.items()}
            results += detections_to_coco(target["image_id"], output, dataset.category_ids)
    gathered = [r for part in all_gather_objects(results) for r in part]
    iou_types = ("bbox", "segm") if getattr(model, "roi_heads", None) is not None and model.roi_heads.has_mask() \
        else ("bbox",)
    metrics = evaluate_coco(dataset.coco, gathered, dataset.image_ids, iou_types) if is_main_process() else None
    model.train(was_training)
    return broadcast_object(metrics)


def flatten_coco_metrics(metrics: Dict[str, Dict[str, Optional[float]]]) -> Dict[str, float]:
    """``{"bbox": {"AP": x}}`` -> ``{"bbox_AP": x}``, leaving out size classes without ground truth."""
    return {f"{kind}_{name}": value for kind, values in metrics.items() for name, value in values.items()
            if value is not None}
