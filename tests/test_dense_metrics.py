"""Metric code against hand-computed cases: mIoU / pixel accuracy, and COCO box / mask AP through pycocotools."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vimamba.dense.coco_data import CocoDetection
from vimamba.dense.coco_eval import detections_to_coco, evaluate_coco
from vimamba.dense.seg_metrics import ConfusionMatrix


# ---------------------------------------------------------------------------------------------------- mIoU
def test_perfect_segmentation_gives_miou_one():
    labels = torch.randint(0, 4, (2, 16, 16))
    cm = ConfusionMatrix(4)
    cm.update(labels.clone(), labels)
    metrics = cm.compute()
    assert metrics["mIoU"] == 1.0 and metrics["aAcc"] == 1.0 and metrics["mAcc"] == 1.0


def test_known_partial_overlap():
    # 4x4 image: ground truth left half class 0, right half class 1; prediction puts class 1 on columns 1..3.
    labels = torch.zeros(4, 4, dtype=torch.long)
    labels[:, 2:] = 1
    predictions = torch.zeros(4, 4, dtype=torch.long)
    predictions[:, 1:] = 1
    labels[0, 0] = 255  # one ignored pixel: counts nowhere
    cm = ConfusionMatrix(3)  # class 2 occurs nowhere: no IoU, not in the mean
    cm.update(predictions, labels)
    metrics = cm.compute(["a", "b", "c"])
    # class 0: TP = 3 (rows 1..3 of column 0), label area 7, predicted area 3 -> IoU 3/7, Acc 3/7
    # class 1: TP = 8, label area 8, predicted area 12 -> IoU 8/12, Acc 1
    assert metrics["per_class"]["a"]["IoU"] == pytest.approx(3 / 7)
    assert metrics["per_class"]["b"]["IoU"] == pytest.approx(8 / 12)
    assert metrics["per_class"]["c"]["IoU"] is None
    assert metrics["mIoU"] == pytest.approx((3 / 7 + 8 / 12) / 2)
    assert metrics["mAcc"] == pytest.approx((3 / 7 + 1) / 2)
    assert metrics["aAcc"] == pytest.approx(11 / 15)
    assert metrics["per_class"]["a"]["pixels"] == 7


def test_areas_accumulate_over_images_not_per_image_means():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 0]))  # perfect on image 1 (class 0 only)
    cm.update(torch.tensor([0, 1]), torch.tensor([1, 1]))  # image 2: one of two class-1 pixels right
    metrics = cm.compute()
    assert metrics["per_class"]["0"]["IoU"] == pytest.approx(4 / 5)
    assert metrics["per_class"]["1"]["IoU"] == pytest.approx(1 / 2)


def test_labels_outside_the_classes_are_an_error():
    with pytest.raises(ValueError, match=r"labels \[7\] are outside the 3 classes"):
        ConfusionMatrix(3).update(torch.tensor([0, 1]), torch.tensor([0, 7]))


# ---------------------------------------------------------------------------------------------------- COCO AP
def _one_box_dataset(tmp_path, box=(10, 10, 10, 10), height=40, width=40):
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(tmp_path / "a.png")
    x, y, w, h = box
    polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
    data = {"images": [{"id": 1, "file_name": "a.png", "height": height, "width": width}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": list(box), "iscrowd": 0,
                             "segmentation": [polygon]}],
            "categories": [{"id": 5, "name": "thing"}]}
    (tmp_path / "a.json").write_text(json.dumps(data))
    return CocoDetection(tmp_path, tmp_path / "a.json")


def _detection(x1, y1, x2, y2, height=40, width=40):
    mask = torch.zeros(1, 1, height, width)
    mask[..., int(y1):int(y2), int(x1):int(x2)] = 1.0
    return {"boxes": torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32), "scores": torch.tensor([0.9]),
            "labels": torch.tensor([1]), "masks": mask}


def test_perfect_detection_gives_ap_one(tmp_path):
    dataset = _one_box_dataset(tmp_path)
    image, target = dataset[0]
    results = detections_to_coco(1, {"boxes": target["boxes"], "scores": torch.ones(1), "labels": target["labels"],
                                     "masks": target["masks"][:, None].float()}, dataset.category_ids)
    assert results[0]["category_id"] == 5 and results[0]["bbox"] == [10.0, 10.0, 10.0, 10.0]
    metrics = evaluate_coco(dataset.coco, results, dataset.image_ids)
    for kind in ("bbox", "segm"):
        assert metrics[kind]["AP"] == pytest.approx(1.0)
        assert metrics[kind]["AP50"] == pytest.approx(1.0) and metrics[kind]["AP75"] == pytest.approx(1.0)
        assert metrics[kind]["APs"] == pytest.approx(1.0)  # a 10x10 object is "small" (< 32^2)
        assert metrics[kind]["APm"] is None and metrics[kind]["APl"] is None  # no ground truth of those sizes


def test_known_partial_overlap_gives_the_known_ap(tmp_path):
    dataset = _one_box_dataset(tmp_path)
    # the detection covers rows 10..16 of the 10..20 box: IoU 0.6 (box and mask) -> a match at the IoU
    # thresholds 0.50, 0.55 and 0.60 only (3 of the 10), each with precision 1 at recall 1: AP = 3/10
    results = detections_to_coco(1, _detection(10, 10, 20, 16), dataset.category_ids)
    metrics = evaluate_coco(dataset.coco, results, dataset.image_ids)
    for kind in ("bbox", "segm"):
        assert metrics[kind]["AP"] == pytest.approx(0.3, abs=1e-6)
        assert metrics[kind]["AP50"] == pytest.approx(1.0) and metrics[kind]["AP75"] == pytest.approx(0.0)


def test_wrong_class_and_no_detection_give_zero(tmp_path):
    dataset = _one_box_dataset(tmp_path)
    assert evaluate_coco(dataset.coco, [], dataset.image_ids)["bbox"]["AP"] == 0.0
    wrong = detections_to_coco(1, _detection(10, 10, 20, 20), [9, 5])  # label 1 -> category 9, not 5
    assert evaluate_coco(dataset.coco, wrong, dataset.image_ids)["bbox"]["AP"] == 0.0
