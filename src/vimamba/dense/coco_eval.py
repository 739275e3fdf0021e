"""COCO box and mask AP with pycocotools, from the detector's per-image outputs.

Detections (boxes x1 y1 x2 y2 in original-image pixels, scores, labels 1..K, mask probabilities) are turned into
COCO results (``[x, y, w, h]`` boxes, category ids, RLE masks of the masks thresholded at 0.5) and scored by
``COCOeval`` on the images evaluated: AP averaged over IoU 0.50:0.95, AP50, AP75, AP for small / medium / large
objects, and average recall. Values are fractions in [0, 1]; a size class with no ground truth gives None, and
so does every value when the evaluated images hold no ground-truth object at all (AP is undefined then, not 0).
"""
from __future__ import annotations

import contextlib
import io
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["detections_to_coco", "evaluate_coco", "count_ground_truth", "STAT_NAMES"]

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def detections_to_coco(image_id: int, detection: Mapping[str, torch.Tensor], category_ids: Sequence[int],
                       mask_threshold: float = 0.5) -> List[dict]:
    """One image's detector output -> COCO result dicts (``category_ids[label - 1]`` is the json's category id)."""
    boxes = detection["boxes"].detach().float().cpu()
    scores = detection["scores"].detach().float().cpu().tolist()
    labels = detection["labels"].detach().cpu().tolist()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    rles: Optional[list] = None
    if "masks" in detection:
        binary = (detection["masks"].detach().cpu()[:, 0] > mask_threshold).numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")  # JSON-friendly
    results = []
    for k, (box, score, label) in enumerate(zip(xywh, scores, labels)):
        result = {"image_id": int(image_id), "category_id": int(category_ids[label - 1]), "bbox": box,
                  "score": float(score)}
        if rles is not None:
            result["segmentation"] = rles[k]
        results.append(result)
    return results


def count_ground_truth(coco_gt: COCO, image_ids: Iterable[int]) -> int:
    """The number of non-crowd annotations (the objects AP is computed over) on ``image_ids``."""
    ids = coco_gt.getAnnIds(imgIds=list(image_ids), iscrowd=False)
    return sum(1 for a in coco_gt.loadAnns(ids) if not a.get("iscrowd", 0))


def evaluate_coco(coco_gt: COCO, results: List[dict], image_ids: Iterable[int],
                  iou_types: Sequence[str] = ("bbox", "segm")) -> Dict[str, Dict[str, Optional[float]]]:
    """COCOeval summary per IoU type: ``{"bbox": {"AP": ..., "AP50": ...}, "segm": {...}}`` over ``image_ids``.

    With no detections at all every AP is 0 (pycocotools cannot load an empty result list); without ground truth
    (no non-crowd annotation on these images) every value is None: nothing can be found, precision is undefined.
    """
    image_ids = sorted(set(int(i) for i in image_ids))
    out: Dict[str, Dict[str, Optional[float]]] = {}
    if count_ground_truth(coco_gt, image_ids) == 0:
        return {iou_type: {name: None for name in STAT_NAMES} for iou_type in iou_types}
    for iou_type in iou_types:
        # Copies (loadRes writes into them). Mask AP from results without their box, so that pycocotools takes the
        # mask area, not the box area, for the small / medium / large split (as Detectron2 does).
        if iou_type == "segm":
            usable = [{k: v for k, v in r.items() if k != "bbox"} for r in results if "segmentation" in r]
        else:
            usable = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
        if not usable:
            out[iou_type] = {name: 0.0 for name in STAT_NAMES}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(usable)
            evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        out[iou_type] = {name: (float(v) if v >= 0 else None) for name, v in zip(STAT_NAMES, evaluator.stats)}
    return out
