"""Tiny runs of every task of the engine, for tests/test_engine.py (also imported by the subprocess it kills).

``build(kind, data, output, resume=None)`` -> ``(task, engine_config)``: 6 optimizer steps of a tiny model on tiny
synthetic data, with the randomness a resume must reproduce (random crops / jitter in the data, stochastic depth or
dropout in the model), ``last.pth`` every 2 steps. ``make_data(kind, root)`` writes the data once.
"""
from __future__ import annotations

from pathlib import Path

from vimamba.engine.config import EngineConfig

KINDS = ("classification", "segmentation", "detection")
TINY_VIM = dict(embed_dim=8, depth=2, patch_size=8, stride=8, img_size=32, drop_path_rate=0.1)


def make_data(kind: str, root: Path) -> Path:
    if kind == "classification":
        from _train_data import make_image_folder

        return make_image_folder(root, per_class=(8, 2), odd_modes=False, corrupt=False)
    if kind == "segmentation":
        from vimamba.dense.synthetic import write_ade20k_shapes

        write_ade20k_shapes(root, {"training": 8}, size=(32, 32), seed=3)
        return root
    from vimamba.dense.synthetic import write_coco_shapes

    write_coco_shapes(root, 6, sizes=((32, 32),), seed=0)
    return root


def build(kind: str, data: Path, output: Path, resume=None):
    common = dict(steps=6, lr=1e-3, unscale_lr=True, warmup_steps=2, min_lr=1e-5, save_interval=2, log_interval=1,
                  workers=0, seed=7, device="cpu", compile="off", output=str(output),
                  resume=str(resume) if resume else None)
    if kind == "classification":
        from vimamba.train.classification import ClassificationTask
        from vimamba.train.config import resolve_config

        cfg = resolve_config(dict(data=str(data), model="vim_tiny_patch16_224", embed_dim=8, depth=2, patch_size=4,
                                  img_size=16, batch_size=8, aa="none", mixup=0.0, cutmix=0.0, reprob=0.0,
                                  scale=(0.5, 1.0), drop_path=0.1, repeated_aug=False, model_ema=True,
                                  model_ema_decay=0.9, export=False, **common))
        return ClassificationTask(cfg.task, cfg.engine), cfg.engine
    from vimamba.dense.backbone import BackboneConfig

    engine = EngineConfig(batch_size=2, sched="poly", **common)
    if kind == "segmentation":
        from vimamba.dense.seg_data import SegmentationDataset, SegTrainTransform
        from vimamba.dense.segmentor import SegmentorConfig
        from vimamba.dense.training import SegmentationTask

        train_set = SegmentationDataset(data, "training", 4, transform=SegTrainTransform((32, 32), (128, 32)))
        config = SegmentorConfig(num_classes=4, dropout=0.1, channels=8, aux_channels=8,
                                 backbone=BackboneConfig(vim=TINY_VIM, out_indices=(1,)))
        return SegmentationTask(config, train_set, class_names=[f"c{i}" for i in range(4)]), engine
    from vimamba.dense.coco_data import CocoDetection, detection_train_transform
    from vimamba.dense.training import DetectionTask

    image_dir, annotations = data / "images", data / "annotations.json"
    train_set = CocoDetection(image_dir, annotations, train=True, masks=False,
                              transform=detection_train_transform(32, lsj_scale=(0.5, 1.5)))
    config = tiny_detector_config(TINY_VIM, width=8)
    return DetectionTask(config, train_set, class_names=train_set.class_names,
                         data_config={"category_ids": train_set.category_ids}), engine


def tiny_detector_config(vim: dict, width: int):
    """A Faster R-CNN on 32x32 images, every part ``width`` channels wide (proposal counts scaled alike)."""
    from vimamba.dense.backbone import BackboneConfig
    from vimamba.dense.detector import DetectorConfig

    backbone = BackboneConfig(vim=vim, out_indices=(-1,), out_channels=width, pyramid_norm="ln", extra_pool=True)
    return DetectorConfig(num_classes=3, backbone=backbone, masks=False, min_size=32, max_size=32,
                          anchor_sizes=(4, 8, 16, 32, 64), head_channels=width, box_fc=2 * width, box_head_convs=1,
                          rpn_batch_size_per_image=2 * width, box_batch_size_per_image=2 * width,
                          rpn_post_nms_top_n_train=3 * width, rpn_post_nms_top_n_test=3 * width,
                          detections_per_img=width // 2 + 2)


def hang_in_step(task, call: int, marker: Path) -> None:
    """Make ``task.loss`` write ``marker`` at its ``call``-th call and then wait (up to 2 minutes) until the file is
    deleted: the moment a test kills or signals the process, inside a step."""
    import time

    original, calls = task.loss, {"n": 0}

    def loss(model, batch):
        calls["n"] += 1
        if calls["n"] == call:
            marker.write_text("waiting")
            deadline = time.time() + 120
            while marker.exists() and time.time() < deadline:
                time.sleep(0.05)
        return original(model, batch)

    task.loss = loss


if __name__ == "__main__":  # python _engine_tasks.py KIND DATA OUTPUT HANG_AT_CALL: a run that waits to be killed
    import sys

    from vimamba.engine.loop import run

    kind, data, output, call = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    task, engine = build(kind, data, output)
    hang_in_step(task, call, output.parent / f"{output.name}.waiting")
    sys.exit(run(task, engine).exit_code)
