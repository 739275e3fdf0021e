"""Semantic-segmentation metrics from a confusion matrix accumulated over the whole evaluation set.

For K classes, ``confusion[g, p]`` counts the labelled pixels of ground-truth class g predicted as class p
(pixels labelled ``ignore_index`` are not counted). Then, as MMSegmentation computes them (dataset-level areas,
not per-image averages)::

    IoU_c   = confusion[c, c] / (sum_p confusion[c, p] + sum_g confusion[g, c] - confusion[c, c])
    Acc_c   = confusion[c, c] / sum_p confusion[c, p]
    mIoU    = mean of IoU_c over the classes that occur (in the labels or the predictions)
    mAcc    = mean of Acc_c over the classes that occur in the labels
    aAcc    = trace(confusion) / sum(confusion)                 (pixel accuracy)

A class absent from both labels and predictions has no IoU (NaN) and does not enter the mean.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from ..errors import InputError

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix:
    """Accumulates ``confusion[g, p]`` on the device of the predictions; ``compute()`` gives the metrics."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise InputError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """Add class-index predictions and labels of the same shape (any leading dims)."""
        if predictions.shape != labels.shape:
            raise InputError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape")
        labels = labels.to(predictions.device).long()
        valid = labels != self.ignore_index
        k = self.num_classes
        if bool((labels[valid] >= k).any()) or bool((labels[valid] < 0).any()):
            bad = sorted(set(labels[valid][(labels[valid] >= k) | (labels[valid] < 0)].unique().tolist()))
            raise InputError(f"labels {bad[:10]} are outside the {k} classes and are not the ignore index "
                             f"{self.ignore_index}")
        index = labels[valid] * k + predictions[valid].long()
        counts = torch.bincount(index, minlength=k * k).reshape(k, k)
        self.matrix = self.matrix.to(counts.device) + counts

    def merge(self, matrix: torch.Tensor) -> None:
        """Add another confusion matrix (e.g. the all-reduced sum of other processes)."""
        self.matrix = self.matrix + matrix.to(self.matrix.device, torch.int64)

    def compute(self, class_names: Optional[Sequence[str]] = None) -> Dict[str, object]:
        """mIoU, mAcc, aAcc (fractions in [0, 1]) and per-class IoU / accuracy (None for absent classes)."""
        m = self.matrix.double().cpu()
        true_positive = m.diag()
        label_area = m.sum(1)
        predicted_area = m.sum(0)
        union = label_area + predicted_area - true_positive
        iou = true_positive / union  # NaN where the class occurs nowhere
        acc = true_positive / label_area  # NaN where the class is not in the labels
        total = m.sum()
        names: List[str] = list(class_names) if class_names is not None else [str(c) for c in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise InputError(f"{len(names)} class names for {self.num_classes} classes")
        return {
            "mIoU": _nanmean(iou),
            "mAcc": _nanmean(acc),
            "aAcc": float(true_positive.sum() / total) if total > 0 else float("nan"),
            "per_class": {
                name: {"IoU": _or_none(iou[c]), "Acc": _or_none(acc[c]), "pixels": int(label_area[c])}
                for c, name in enumerate(names)
            },
        }


def _nanmean(values: torch.Tensor) -> float:
    present = values[~values.isnan()]
    return float(present.mean()) if present.numel() else float("nan")


def _or_none(value: torch.Tensor) -> Optional[float]:
    return None if bool(value.isnan()) else float(value)
