"""Dense-prediction faults (issue 10): a killed or SIGTERM-ed run resumes to the weights of an uninterrupted one (data
workers, random augmentation and dropout on), a run's folder is its own, ``detect eval`` without ground truth says AP
is undefined, and annotations of a missing image file name that file."""
from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from _engine_tasks import tiny_detector_config
from vimamba.cli import main as cli
from vimamba.data.images import DataError
from vimamba.dense.backbone import BackboneConfig
from vimamba.dense.coco_data import CocoDetection, detection_train_transform
from vimamba.dense.coco_eval import evaluate_coco
from vimamba.dense.seg_data import SegmentationDataset, SegTrainTransform
from vimamba.dense.segmentor import SegmentorConfig
from vimamba.dense.synthetic import write_ade20k_shapes, write_coco_shapes
from vimamba.dense.training import DetectionTask, SegmentationTask
from vimamba.engine.checkpointing import load_training_checkpoint
from vimamba.engine.config import EngineConfig
from vimamba.engine.loop import run

TINY_VIM = dict(embed_dim=16, depth=2, patch_size=8, stride=8, img_size=32, drop_path_rate=0.1)


pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(Exception):
    """Stands for SIGKILL: the process is gone, only what was saved survives."""


def _settings(output, resume=None, **overrides):
    """7 steps, a checkpoint every 3, 2 data workers."""
    values = dict(steps=7, batch_size=2, lr=1e-3, unscale_lr=True, warmup_steps=2, eval_interval=1000, log_interval=1,
                  save_interval=3, workers=2, seed=5, device="cpu", compile="off", output=str(output),
                  resume=str(resume) if resume else None)
    return EngineConfig(**{**values, **overrides})


def _task(task, config, train_set, **kwargs):
    return (SegmentationTask if task == "segmentation" else DetectionTask)(config, train_set, **kwargs)


def _train(task, config, train_set, output, *, resume=None, die_at=None, sigterm_at=None):
    """Train 7 steps; die or get SIGTERM at the given batch. Returns (weights, result)."""
    calls = {"n": 0}
    base = SegmentationTask if task == "segmentation" else DetectionTask

    class Faulty(base):
        def loss(self, model, batch):
            calls["n"] += 1
            if calls["n"] == die_at:
                raise Killed()
            if calls["n"] == sigterm_at:
                os.kill(os.getpid(), signal.SIGTERM)  # the loop finishes this step, saves and stops
            return super().loss(model, batch)

    try:
        result = run(Faulty(config, train_set), _settings(output, resume))
    except Killed:
        return None, None
    return load_training_checkpoint(output / "last.pth")["model"], result


def _assert_resumes_exactly(task, config, train_set, tmp_path, **kwargs):
    straight, _ = _train(task, config, train_set, tmp_path / "straight", **kwargs)
    killed = tmp_path / "killed"
    assert _train(task, config, train_set, killed, die_at=5, **kwargs) == (None, None)
    assert load_training_checkpoint(killed / "last.pth")["step"] == 3
    resumed, result = _train(task, config, train_set, killed, resume=killed / "last.pth", **kwargs)
    assert result.step == 7
    stopped = tmp_path / "sigterm"
    _, result = _train(task, config, train_set, stopped, sigterm_at=5, **kwargs)
    assert result.exit_code == 128 + signal.SIGTERM and result.step == 5
    after_sigterm, _ = _train(task, config, train_set, stopped, resume=stopped / "last.pth", **kwargs)
    for (name, a), b, c in zip(straight.items(), resumed.values(), after_sigterm.values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=f"after a kill: {name}")
        torch.testing.assert_close(c, a, rtol=0, atol=0, msg=f"after SIGTERM: {name}")


def test_segmentation_resume_is_exact_with_workers_augmentation_and_dropout(tmp_path):
    data = tmp_path / "shapes"
    write_ade20k_shapes(data, {"training": 10}, size=(32, 32), seed=3)
    train_set = SegmentationDataset(data, "training", 4, transform=SegTrainTransform((32, 32), (128, 32)))
    config = SegmentorConfig(num_classes=4, dropout=0.1, channels=16, aux_channels=8,
                             backbone=BackboneConfig(vim=TINY_VIM, out_indices=(1,)))
    _assert_resumes_exactly("segmentation", config, train_set, tmp_path)


def test_detection_resume_is_exact_with_workers_and_large_scale_jitter(tmp_path):
    image_dir, annotations = write_coco_shapes(tmp_path / "shapes", 6, sizes=((32, 32),), seed=0)
    train_set = CocoDetection(image_dir, annotations, train=True, masks=False,
                              transform=detection_train_transform(32, lsj_scale=(0.5, 1.5)))
    config = tiny_detector_config(TINY_VIM, width=16)
    _assert_resumes_exactly("detection", config, train_set, tmp_path)


# ---------------------------------------------------------------------------------------------------- run folders
SEG_FLAGS = ["--dataset", "custom", "--num-classes", "4", "--vim", *[f"{k}={v}" for k, v in TINY_VIM.items()],
             "--out-indices", "1", "--channels", "16", "--crop-size", "32", "32", "--scale", "128", "32",
             "--val-split", "", "--iterations", "2", "--batch-size", "2", "--warmup-iters", "1", "--workers", "0",
             "--checkpoint-interval", "1"]


def test_dense_runs_keep_to_their_own_folder(tmp_path, capsys):
    data = tmp_path / "shapes"
    write_ade20k_shapes(data, {"training": 4}, size=(32, 32), seed=1)
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(["segment", "train", "--data", str(data), "--output", str(a), *SEG_FLAGS]) == 0
    shutil.copytree(a, b)
    before = (a / "last.pth").read_bytes()
    # the copy continues in the copy (no --output needed), the original is untouched
    assert cli(["segment", "train", "--data", str(data), "--resume", str(b / "last.pth"), *SEG_FLAGS,
                "--iterations", "3"]) == 0
    assert load_training_checkpoint(b / "last.pth")["step"] == 3 and (a / "last.pth").read_bytes() == before
    capsys.readouterr()
    # a new run into a folder holding a run, or a resume into another run's folder: refused, one line
    assert cli(["segment", "train", "--data", str(data), "--output", str(a), *SEG_FLAGS]) == 1
    assert "already holds a training run" in capsys.readouterr().err
    assert cli(["segment", "train", "--data", str(data), "--resume", str(b / "last.pth"), "--output", str(a),
                *SEG_FLAGS]) == 1
    assert "holds another run" in capsys.readouterr().err and (a / "last.pth").read_bytes() == before
    assert cli(["segment", "train", "--data", str(data), "--output", str(a), "--overwrite", *SEG_FLAGS]) == 0
    assert cli(["segment", "train", "--data", str(data), *SEG_FLAGS]) == 1  # neither --output nor --resume
    assert "pass --output" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- detect data
def test_ap_is_undefined_without_ground_truth(tmp_path, capsys):
    image_dir, annotations = write_coco_shapes(tmp_path / "shapes", 2, sizes=((32, 32),), seed=0)
    data = json.loads(annotations.read_text())
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**data, "annotations": []}))
    dataset = CocoDetection(image_dir, empty)
    detection = {"image_id": dataset.image_ids[0], "category_id": 3, "bbox": [1, 1, 5, 5], "score": 0.9}
    for results in ([], [detection]):  # no detections, or a false positive: either way there is no AP
        metrics = evaluate_coco(dataset.coco, results, dataset.image_ids, ("bbox",))
        assert all(value is None for value in metrics["bbox"].values()), metrics

    run = tmp_path / "run"
    backbone = ["--vim", *[f"{k}={v}" for k, v in TINY_VIM.items()], "--pyramid-channels", "16"]
    assert cli(["detect", "train", "--images", str(image_dir), "--annotations", str(annotations), "--arch",
                "faster_rcnn", "--image-size", "32", "--no-lsj", "--anchor-sizes", "4", "8", "16", "32", "64",
                "--detector", "head_channels=16", "box_fc=32", "box_head_convs=1", *backbone, "--output", str(run),
                "--iterations", "1", "--batch-size", "2", "--warmup-iters", "1", "--workers", "0"]) == 0
    capsys.readouterr()
    assert cli(["detect", "eval", "--checkpoint", str(run / "last.pth"), "--images", str(image_dir), "--annotations",
                str(empty), "--workers", "0"]) == 1
    err = capsys.readouterr().err
    assert "AP is undefined without ground truth" in err and "AP 0.0" not in err


def test_annotations_of_a_missing_image_file_name_the_file(tmp_path):
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    images = [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
              {"id": 2, "file_name": "gone.png", "height": 20, "width": 30}]
    box = {"bbox": [2, 2, 6, 6], "iscrowd": 0, "category_id": 4}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "categories": [{"id": 4, "name": "cat"}],
                                "annotations": [{"id": 1, "image_id": 1, **box}, {"id": 2, "image_id": 2, **box},
                                                {"id": 3, "image_id": 2, **box}]}))
    with pytest.raises(DataError) as info:
        CocoDetection(tmp_path, path, masks=False)
    message = str(info.value)
    assert "1 are images whose file is missing or empty" in message and str(tmp_path / "gone.png") in message
    assert "2 belong to an image whose file is missing" in message
    assert "does not define" not in message
    skipping = CocoDetection(tmp_path, path, masks=False, on_invalid="skip")
    assert len(skipping) == 1 and skipping.report.dropped() == 3


class _Exploding(torch.utils.data.Dataset):
    """A dataset whose sample ``bad`` raises (in a data worker) while ``armed``."""

    def __init__(self, base, bad: int, armed: bool = True):
        self.base, self.bad, self.armed = base, bad, armed

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        if self.armed and index == self.bad:
            raise ValueError(f"sample {index} is broken")
        return self.base[index]


def test_a_failing_data_worker_ends_dense_training_with_the_error_and_a_checkpoint(tmp_path):
    # issue 10, case 2 for segment/detect train: the same guarantee as classification (no hang, a resumable state)
    data = tmp_path / "shapes"
    write_ade20k_shapes(data, {"training": 10}, size=(32, 32), seed=3)
    base = SegmentationDataset(data, "training", 4, transform=SegTrainTransform((32, 32), (128, 32)))
    config = SegmentorConfig(num_classes=4, channels=16, aux_channels=8,
                             backbone=BackboneConfig(vim=TINY_VIM, out_indices=(1,)))
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"sample 9 is broken.*Saved .*last\.pth.*--resume") as failure:
        run(_task("segmentation", config, _Exploding(base, bad=9)), _settings(out, save_interval=1000))
    saved = load_training_checkpoint(out / "last.pth")
    # the state of the last finished step: the broken sample's batch was never trained on
    assert 0 <= saved["step"] < 5 and saved["batch_in_epoch"] == saved["step"]
    assert "data worker raised" in str(failure.value)
    result = run(_task("segmentation", config, _Exploding(base, bad=9, armed=False)),
                 _settings(out, resume=out / "last.pth", save_interval=1000))
    assert result.step == 7
