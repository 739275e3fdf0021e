"""Dense datasets: the ADE20K layout and COCO json, their augmentation, and the promised errors for bad files."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from vimamba.data.images import DataError
from vimamba.dense.classes import ADE20K_CLASSES, palette
from vimamba.dense.coco_data import CocoDetection, detection_train_transform
from vimamba.dense.seg_data import SegEvalTransform, SegmentationDataset, SegTrainTransform, rescale_size
from vimamba.dense.synthetic import COCO_CATEGORY_IDS, write_ade20k_shapes, write_coco_shapes


def test_class_tables():
    assert len(ADE20K_CLASSES) == 150 and len(set(ADE20K_CLASSES)) == 150
    colours = palette(150)
    assert len(set(colours)) == 150 and (0, 0, 0) not in colours


# ---------------------------------------------------------------------------------------------------- ADE20K layout
def _write_pair(root, split, stem, label, image=None, mode="L"):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    h, w = label.shape
    image = image if image is not None else np.full((h, w, 3), 128, np.uint8)
    Image.fromarray(image).save(root / "images" / split / f"{stem}.jpg")
    Image.fromarray(label.astype(np.uint8)).convert(mode).save(root / "annotations" / split / f"{stem}.png")


def test_segmentation_dataset_reads_pairs_and_reduces_zero_label(tmp_path):
    label = np.array([[0, 1, 2], [3, 255, 1]])
    _write_pair(tmp_path, "training", "a", label)
    plain = SegmentationDataset(tmp_path, "training", num_classes=4)
    image, read = plain[0]
    assert image.shape == (3, 2, 3) and image.dtype == torch.uint8
    assert read.tolist() == label.tolist()
    reduced = SegmentationDataset(tmp_path, "training", num_classes=3, reduce_zero_label=True)
    assert reduced[0][1].tolist() == [[255, 0, 1], [2, 255, 0]]


def test_segmentation_dataset_errors_name_the_files(tmp_path):
    with pytest.raises(DataError, match="images/training"):
        SegmentationDataset(tmp_path, "training")
    _write_pair(tmp_path, "training", "good", np.zeros((4, 4)))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "training" / "lonely.jpg")
    with pytest.raises(DataError, match="images without an annotation.*lonely"):
        SegmentationDataset(tmp_path, "training")
    (tmp_path / "images" / "training" / "lonely.jpg").unlink()

    _write_pair(tmp_path, "training", "big_label", np.array([[0, 9]]))
    _write_pair(tmp_path, "training", "rgb_label", np.zeros((2, 2)), mode="RGB")
    _write_pair(tmp_path, "training", "size", np.zeros((2, 2)), image=np.zeros((3, 3, 3), np.uint8))
    dataset = SegmentationDataset(tmp_path, "training", num_classes=4)
    names = [image.stem for image, _ in dataset.samples]
    with pytest.raises(DataError, match=r"big_label.png' has labels 9 outside the 4 classes"):
        dataset[names.index("big_label")]
    with pytest.raises(DataError, match="rgb_label.png' is a RGB image"):
        dataset[names.index("rgb_label")]
    with pytest.raises(DataError, match=r"size.jpg' is \(3, 3\).*\(2, 2\)"):
        dataset[names.index("size")]
    (tmp_path / "images" / "training" / "good.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot read image .*good.jpg"):
        dataset[names.index("good")]


def test_rescale_size_fits_long_and_short_side():
    assert rescale_size((512, 683), (2048, 512)) == (512, 683)
    assert rescale_size((1000, 1000), (2048, 512)) == (512, 512)
    assert rescale_size((100, 1000), (400, 100)) == (40, 400)  # the long side limits


def test_segmentation_train_transform_crops_pads_and_keeps_labels(tmp_path):
    random.seed(0)
    label = torch.zeros(40, 60, dtype=torch.long)
    label[10:30, 20:40] = 2
    label[0:5, :] = 255
    image = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    transform = SegTrainTransform(crop_size=(48, 48), scale=(120, 40), ratio_range=(0.5, 2.0))
    for _ in range(10):
        out_image, out_label = transform(image, label)
        assert out_image.shape == (3, 48, 48) and out_image.dtype == torch.float32
        assert out_label.shape == (48, 48)
        assert set(out_label.unique().tolist()) <= {0, 2, 255}  # nearest resampling, 255 padding
    small = SegTrainTransform(crop_size=(48, 48), scale=(30, 10), ratio_range=(1.0, 1.0))(image, label)[1]
    assert (small[15:, :] == 255).all()  # a 10x15 rescaled image padded to the crop size with the ignore index
    evaluated = SegEvalTransform(scale=(120, 20))(image)
    assert evaluated.shape == (3, 20, 30)


def test_synthetic_ade20k_shapes_round_trip(tmp_path):
    names = write_ade20k_shapes(tmp_path, {"training": 3, "validation": 2}, size=(48, 64), seed=1)
    dataset = SegmentationDataset(tmp_path, "validation", num_classes=len(names))
    image, label = dataset[0]
    assert image.shape == (3, 48, 64) and label.max() >= 1 and (label == 0).any()


# ---------------------------------------------------------------------------------------------------- COCO
def _coco(tmp_path, annotations, images=None, categories=None):
    images = images or [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
                        {"id": 2, "file_name": "b.png", "height": 20, "width": 30}]
    for image in images:
        if image["file_name"] != "missing.png":
            pixels = np.zeros((image["height"], image["width"], 3), np.uint8)
            Image.fromarray(pixels).save(tmp_path / image["file_name"])
    square = [[2, 2, 8, 2, 8, 8, 2, 8]]
    anns = [{"id": i + 1, "iscrowd": 0, "segmentation": square, **a} for i, a in enumerate(annotations)]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": categories or [{"id": 4, "name": "cat"}, {"id": 9, "name": "dog"}]}))
    return path


def test_coco_reports_unknown_category_and_out_of_image_box_by_name(tmp_path):
    path = _coco(tmp_path, [
        {"image_id": 1, "category_id": 4, "bbox": [2, 2, 6, 6]},
        {"image_id": 1, "category_id": 77, "bbox": [2, 2, 6, 6]},  # unknown category
        {"image_id": 2, "category_id": 9, "bbox": [20, 5, 25, 5]},  # x + w = 45 > 30
        {"image_id": 2, "category_id": 9, "bbox": [5, 5, 0, 4]},  # zero width
        {"image_id": 3, "category_id": 9, "bbox": [1, 1, 2, 2]},  # no such image
    ])
    with pytest.raises(DataError) as info:
        CocoDetection(tmp_path, path)
    message = str(info.value)
    assert "annotation 2 of 'a.png' (category id 77; known ids [4, 9])" in message
    assert "annotation 3 of 'b.png' (bbox [20, 5, 25, 5] in a 30x20 image)" in message
    assert "zero or negative width" in message and "annotation 4 of 'b.png'" in message
    assert "annotation 5 of '?' (image id 3)" in message
    assert "--skip-invalid" in message

    skipping = CocoDetection(tmp_path, path, on_invalid="skip")
    report = skipping.report
    assert report.annotations == 1 and report.dropped() == 4
    assert {k: len(v) for k, v in report.problems.items()} == {
        "unknown_category": 1, "outside_image": 1, "empty_bbox": 1, "unknown_image": 1}
    assert "left out: 1 that have a category id the json does not define" in report.summary()


def test_coco_clips_small_overshoot_counts_crowds_and_empty_images(tmp_path):
    path = _coco(tmp_path, [
        {"image_id": 1, "category_id": 4, "bbox": [2, 2, 28.5, 6]},  # overshoots by 0.5 px: clipped, counted
        {"image_id": 1, "category_id": 9, "bbox": [0, 0, 10, 10], "iscrowd": 1,
         "segmentation": {"counts": [0, 200, 400], "size": [20, 30]}},
        {"image_id": 2, "category_id": 9, "bbox": [0, 0, 10, 10], "iscrowd": 1,
         "segmentation": {"counts": [0, 200, 400], "size": [20, 30]}},  # image 2: crowd only
    ])
    train = CocoDetection(tmp_path, path, train=True)
    assert train.report.clipped == 1 and train.report.crowd == 2 and train.report.skipped_empty_images == 1
    assert len(train) == 1
    image, target = train[0]
    assert target["boxes"].tolist() == [[2.0, 2.0, 30.0, 8.0]]
    assert target["labels"].tolist() == [1] and target["masks"].shape == (1, 20, 30)  # no crowd target
    evaluation = CocoDetection(tmp_path, path)
    assert len(evaluation) == 2 and len(evaluation.coco.getAnnIds(iscrowd=True)) == 2


def test_coco_file_errors(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        CocoDetection(tmp_path, tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{ not json")
    with pytest.raises(DataError, match="not valid JSON"):
        CocoDetection(tmp_path, tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match=r"lacks the list\(s\) \['annotations', 'categories'\]"):
        CocoDetection(tmp_path, tmp_path / "partial.json")
    images = [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
              {"id": 2, "file_name": "missing.png", "height": 20, "width": 30}]
    path = _coco(tmp_path, [{"image_id": 1, "category_id": 4, "bbox": [2, 2, 6, 6]}], images=images)
    with pytest.raises(DataError, match="1 are images whose file is missing or empty.*missing.png"):
        CocoDetection(tmp_path, path)
    assert len(CocoDetection(tmp_path, path, on_invalid="skip")) == 1


def test_coco_synthetic_shapes_and_lsj_keep_boxes_and_masks_consistent(tmp_path):
    image_dir, annotation_file = write_coco_shapes(tmp_path, 4, sizes=((48, 64),), seed=2, crowd_every=2)
    dataset = CocoDetection(image_dir, annotation_file, train=True,
                            transform=detection_train_transform(lsj_size=64, lsj_scale=(0.5, 1.5)))
    assert dataset.category_ids == list(COCO_CATEGORY_IDS) and dataset.report.crowd == 2
    torch.manual_seed(0)
    for i in range(len(dataset)):
        image, target = dataset[i]
        assert image.shape == (3, 64, 64)  # the LSJ square
        boxes, masks = target["boxes"], target["masks"]
        assert len(boxes) == len(masks) == len(target["labels"])
        for box, mask in zip(boxes, masks):  # every kept mask lies inside its box
            ys, xs = torch.nonzero(mask, as_tuple=True)
            if len(ys):
                assert xs.min() >= box[0] - 1 and xs.max() <= box[2] + 1
                assert ys.min() >= box[1] - 1 and ys.max() <= box[3] + 1
