"""Semantic segmentation and object detection as tasks of the engine (:func:`vimamba.engine.loop.run`).

Dense-prediction recipes count optimizer steps, not epochs (the official Vim UperNet: 60k iterations, poly schedule
with 1,500 warmup iterations; ViTDet Mask R-CNN: multi-step decay); :data:`SEGMENTATION_DEFAULTS` and
:data:`DETECTION_DEFAULTS` are those recipes as engine settings. A task supplies the model (its config, and a Vim
classification checkpoint for the backbone), the datasets, the loss of a batch (the models return a dict of losses
in training mode; the engine logs each one as ``train_<name>``) and the evaluation (mIoU / COCO AP).

Every checkpoint stores the backbone as ``arch`` and the whole model as ``task_config = {"dense_config":
SegmentorConfig/DetectorConfig.to_dict()}``, with the class names and the data settings evaluation reuses, so
``vimamba segment|detect eval|predict`` need nothing but the file.

The command-line settings of a run are :class:`SegmentationConfig` / :class:`DetectionConfig` (one flag per field,
:func:`vimamba.engine.config.add_config_flags`); :func:`segmentation_task` / :func:`detection_task` build the task
they describe.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch.nn as nn
from torch.utils.data import Dataset

from ..cli_args import (image_size, non_negative_float, non_negative_int, parse_settings, positive_float,
                        positive_int)
from ..engine.config import ConfigMixin
from ..engine.config import option as _f
from ..engine.distributed import print_once
from ..engine.task import StepOutput, Task
from ..errors import InputError, UserError
from .backbone import BackboneConfig
from .checkpoint import build_dense_model
from .detector import DetectorConfig
from .segmentor import SegmentorConfig

__all__ = ["SegmentationTask", "DetectionTask", "SegmentationConfig", "DetectionConfig", "SEGMENTATION_DEFAULTS",
           "DETECTION_DEFAULTS", "segmentation_task", "detection_task", "dense_checkpoint_fields"]

# The official Vim-Ti UperNet on ADE20K (4 GPUs x 8): AdamW 2e-4 for the total batch (no scaling), weight decay 0.1,
# layer decay 0.92, poly schedule with 1,500 warmup iterations from 1e-6 x lr.
SEGMENTATION_DEFAULTS: Dict[str, Any] = dict(
    steps=60000, batch_size=8, lr=2e-4, unscale_lr=True, weight_decay=0.1, layer_decay=0.92, sched="poly",
    poly_power=1.0, min_lr=0.0, warmup_steps=1500, warmup_lr=2e-10, eval_interval=4000, save_interval=1000,
    log_interval=50, model_ema=False, compile="off")
# ViTDet Vim-Ti (cascade_mask_rcnn_vimdet_t_100ep_adj1): 184,375 iterations at total batch 64, decay x0.1 at 88.9% and
# 96.3% of training, warmup 250 iterations.
DETECTION_DEFAULTS: Dict[str, Any] = dict(
    steps=184375, batch_size=16, lr=1e-4, unscale_lr=True, weight_decay=0.1, layer_decay=0.837, sched="multistep",
    milestones=(163889, 177546), decay_rate=0.1, min_lr=0.0, warmup_steps=250, warmup_lr=1e-10, eval_interval=10000,
    save_interval=1000, log_interval=50, model_ema=False, compile="off")


# ---------------------------------------------------------------------------------------------------- settings
@dataclass
class BackboneOptions(ConfigMixin):
    """The Vim backbone of a dense model, as flags."""

    backbone: str = _f("vim_tiny_patch16_224", "registered Vim model name (vimamba models)", "backbone",
                       metavar="NAME")
    pretrained: Optional[str] = _f(None, "Vim classification checkpoint to start the backbone from (head dropped, "
                                   "position embedding resized)", "backbone", metavar="CKPT")
    vim: Tuple[str, ...] = _f((), "Vim settings to override, e.g. drop_path_rate=0.1 (img_size defaults to the "
                              "training size)", "backbone", metavar="KEY=VALUE")
    out_indices: Optional[Tuple[int, ...]] = _f(None, "blocks feeding the feature pyramid (default: 5 11 17 23 for "
                                                "depth 24 in segmentation, the last block in detection)",
                                                "backbone", check=non_negative_int)
    feature: str = _f("mixer", "block feature: mixer output or residual stream", "backbone",
                      choices=("mixer", "residual"))
    feature_norm: bool = _f(False, "apply the final RMSNorm to the block features", "backbone")

    def backbone_config(self, img_size: Sequence[int], **fixed: Any) -> BackboneConfig:
        """The backbone settings; the position embedding is stored for the training size."""
        vim = {"img_size": list(img_size), **parse_settings(self.vim, "--vim")}
        settings: Dict[str, Any] = dict(model=self.backbone, vim=vim, feature=self.feature, norm=self.feature_norm)
        if self.out_indices is not None:
            settings["out_indices"] = tuple(self.out_indices)
        return BackboneConfig(**{**fixed, **settings})


@dataclass
class SegmentationConfig(BackboneOptions):
    """What ``vimamba segment train`` trains: the data (ADE20K layout), augmentation and the UperNet."""

    data: Optional[str] = _f(None, "dataset root: images/{training,validation}, annotations/... (required)", "data",
                             metavar="DIR")
    dataset: str = _f("ade20k", "ade20k: 150 classes, reduce-zero-label, the ADE20K class names", "data",
                      choices=("ade20k", "custom"))
    num_classes: Optional[int] = _f(None, "custom datasets: number of classes", "data", check=positive_int)
    class_names: Optional[str] = _f(None, "custom datasets: text file, one class name per line", "data",
                                    metavar="FILE")
    reduce_zero_label: bool = _f(False, "custom datasets: label 0 is 'ignore'", "data")
    train_split: str = _f("training", "training split folder", "data")
    val_split: str = _f("validation", "validation split folder ('' to train without evaluation)", "data")
    crop_size: Tuple[int, int] = _f((512, 512), "training crop (and sliding-window size)", "data",
                                    metavar=("H", "W"), check=image_size)
    scale: Tuple[int, int] = _f((2048, 512), "rescale target (x ratio-range in training, x1 in evaluation)", "data",
                                metavar=("LONG", "SHORT"), check=image_size)
    ratio_range: Tuple[float, float] = _f((0.5, 2.0), "random rescale range of the training images", "data",
                                          metavar=("MIN", "MAX"), check=positive_float)
    eval_mode: str = _f("slide", "evaluation: sliding window or whole image", "data", choices=("slide", "whole"))
    eval_stride: Tuple[int, int] = _f((341, 341), "sliding-window stride", "data", metavar=("H", "W"),
                                      check=positive_int)
    channels: Optional[int] = _f(None, "UperNet width (default: the backbone's embed_dim)", "head",
                                 check=positive_int)
    aux_weight: float = _f(0.4, "auxiliary FCN loss weight (0: no auxiliary head)", "head",
                           check=non_negative_float)


@dataclass
class DetectionConfig(BackboneOptions):
    """What ``vimamba detect train`` trains: the data (COCO json), augmentation and the Mask / Faster R-CNN."""

    images: Optional[str] = _f(None, "training image folder (required)", "data", metavar="DIR")
    annotations: Optional[str] = _f(None, "training COCO json (required)", "data", metavar="JSON")
    skip_invalid: bool = _f(False, "leave out malformed annotations (counted and reported) instead of stopping",
                            "data")
    val_images: Optional[str] = _f(None, "validation image folder (default: --images)", "data", metavar="DIR")
    val_annotations: Optional[str] = _f(None, "validation COCO json (none: train without evaluation)", "data",
                                        metavar="JSON")
    image_size: int = _f(1024, "images are resized to fit this square", "data", check=image_size)
    lsj: bool = _f(True, "large-scale jitter (scale 0.1-2 and crop to --image-size)", "data")
    arch: str = _f("mask_rcnn", "detector", "head", choices=("mask_rcnn", "faster_rcnn"))
    anchor_sizes: Tuple[int, ...] = _f((32, 64, 128, 256, 512), "RPN anchor size per pyramid level (5 levels)",
                                       "head", check=positive_int)
    pyramid_channels: int = _f(256, "feature pyramid width", "head", check=positive_int)
    detector: Tuple[str, ...] = _f((), "other DetectorConfig settings, e.g. head_channels=128 box_fc=512 "
                                   "rpn_post_nms_top_n_test=300", "head", metavar="KEY=VALUE")
    feature: str = _f("residual", "block feature: mixer output or residual stream", "backbone",
                      choices=("mixer", "residual"))


# ---------------------------------------------------------------------------------------------------- tasks
def dense_checkpoint_fields(config: Union[SegmentorConfig, DetectorConfig], class_names: Sequence[str],
                            data_config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What a dense checkpoint stores to rebuild its model: the backbone as ``arch``, the model as
    ``task_config["dense_config"]``, the class names and the data settings evaluation reuses."""
    backbone = config.backbone
    return dict(arch={"name": backbone.model, "family": "vim", "overrides": dict(backbone.vim)},
                task_config={"dense_config": config.to_dict()}, class_names=list(class_names),
                data_config=dict(data_config or {}))


class _DenseTask(Task):
    """What segmentation and detection share: the model from its config, given datasets, the sum of the model's
    losses. ``settings``: the flags the task was made from (stored in the checkpoints' ``config``)."""

    model_kind = ""

    def __init__(self, model_config: Union[SegmentorConfig, DetectorConfig], train_set: Dataset, *,
                 eval_set: Optional[Dataset] = None, class_names: Sequence[str] = (),
                 data_config: Optional[Dict[str, Any]] = None, pretrained: Optional[str] = None,
                 settings: Optional[ConfigMixin] = None):
        self.model_config, self.train_set, self.eval_set = model_config, train_set, eval_set
        self.class_names, self.data_config = list(class_names), dict(data_config or {})
        self.pretrained, self.settings = pretrained, settings

    def build_model(self) -> nn.Module:
        return build_dense_model(self.name, self.model_config, self.pretrained)

    def train_dataset(self) -> Dataset:
        return self.train_set

    def eval_dataset(self) -> Optional[Dataset]:
        return self.eval_set

    def eval_batch_size(self, train_batch_size: int) -> int:
        return 1  # images of different sizes; sliding-window inference

    def loss(self, model: nn.Module, batch: Any) -> StepOutput:
        images, targets = batch
        losses = model(images, targets)
        return StepOutput(loss=sum(losses.values()), batch_size=len(images),
                          metrics={name: float(value.detach()) for name, value in losses.items()})

    def checkpoint_fields(self) -> Dict[str, Any]:
        return dense_checkpoint_fields(self.model_config, self.class_names, self.data_config)

    def task_config_dict(self) -> Dict[str, Any]:
        return self.settings.to_dict() if self.settings is not None else {}

    def resume_hint(self, checkpoint: Path) -> str:
        command = "segment" if self.name == "segmentation" else "detect"
        return f"vimamba {command} train --resume {checkpoint}"

    def describe(self, model: nn.Module) -> str:
        backbone = self.model_config.backbone
        overrides = ", ".join(f"{k}={v}" for k, v in backbone.vim.items() if k != "img_size")
        return (f"{self.model_kind} on {backbone.model}" + (f" ({overrides})" if overrides else "") +
                f", {sum(p.numel() for p in model.parameters()):,} parameters, {len(self.class_names)} classes")


class SegmentationTask(_DenseTask):
    """A Vim UperNet (:class:`SegmentorConfig`) on an ADE20K-layout dataset; ``best.pth`` by mIoU.
    ``eval_settings``: ``mode``, ``crop_size``, ``stride`` of the evaluation (default: the data config's)."""

    name = "segmentation"
    best_metric = ("mIoU", "max")
    model_kind = "Vim UperNet"

    def evaluate(self, model: nn.Module, loader) -> Dict[str, float]:
        from .evaluate import evaluate_segmentation

        data = self.data_config
        metrics = evaluate_segmentation(model, loader, device=next(model.parameters()).device,
                                        mode=data.get("eval_mode", "slide"),
                                        crop_size=tuple(data.get("crop_size", (512, 512))),
                                        stride=tuple(data.get("eval_stride", (341, 341))),
                                        class_names=self.class_names or None)
        return {k: v for k, v in metrics.items() if k != "per_class"}


class DetectionTask(_DenseTask):
    """A Vim Mask R-CNN / Faster R-CNN (:class:`DetectorConfig`) on a COCO-json dataset; ``best.pth`` by box AP."""

    name = "detection"
    best_metric = ("bbox_AP", "max")

    @property
    def model_kind(self) -> str:  # type: ignore[override]
        return "Vim Mask R-CNN" if self.model_config.masks else "Vim Faster R-CNN"

    def collate_fn(self):
        from .coco_data import collate_detection

        return collate_detection

    def evaluate(self, model: nn.Module, loader) -> Dict[str, float]:
        from .evaluate import evaluate_detection, flatten_coco_metrics

        return flatten_coco_metrics(evaluate_detection(model, loader, device=next(model.parameters()).device))


# ---------------------------------------------------------------------------------------------------- from flags
def _segmentation_classes(cfg: SegmentationConfig) -> Tuple[List[str], bool]:
    from .classes import ADE20K_CLASSES

    if cfg.dataset == "ade20k":
        return list(ADE20K_CLASSES), True
    if cfg.class_names:
        names = [line.strip() for line in Path(cfg.class_names).read_text().splitlines() if line.strip()]
        if cfg.num_classes is not None and cfg.num_classes != len(names):
            raise InputError(f"--num-classes {cfg.num_classes} but {cfg.class_names} names {len(names)} classes")
        return names, cfg.reduce_zero_label
    if cfg.num_classes is None:
        raise InputError("a custom dataset needs --num-classes or --class-names")
    return [f"class_{c}" for c in range(cfg.num_classes)], cfg.reduce_zero_label


def segmentation_task(cfg: SegmentationConfig) -> SegmentationTask:
    """The task ``vimamba segment train`` flags describe (the datasets are opened and checked here)."""
    from .seg_data import SegEvalTransform, SegmentationDataset, SegTrainTransform

    if not cfg.data:
        raise UserError("pass --data DIR: the dataset root (images/..., annotations/...)")
    class_names, reduce_zero = _segmentation_classes(cfg)
    num_classes = len(class_names)
    config = SegmentorConfig(num_classes=num_classes, backbone=cfg.backbone_config(cfg.crop_size),
                             channels=cfg.channels, aux_weight=cfg.aux_weight)
    data_config = dict(reduce_zero_label=reduce_zero, scale=list(cfg.scale), crop_size=list(cfg.crop_size),
                       eval_mode=cfg.eval_mode, eval_stride=list(cfg.eval_stride))
    augment = SegTrainTransform(tuple(cfg.crop_size), tuple(cfg.scale), tuple(cfg.ratio_range))
    train_set = SegmentationDataset(cfg.data, cfg.train_split, num_classes, reduce_zero, augment)
    eval_set = None
    if cfg.val_split:
        eval_set = SegmentationDataset(cfg.data, cfg.val_split, num_classes, reduce_zero,
                                       SegEvalTransform(tuple(cfg.scale)))
    print_once(f"segmentation data: {len(train_set)} training images" +
               (f", {len(eval_set)} validation images" if eval_set is not None else ", no evaluation"))
    return SegmentationTask(config, train_set, eval_set=eval_set, class_names=class_names, data_config=data_config,
                            pretrained=cfg.pretrained, settings=cfg)


def detection_task(cfg: DetectionConfig) -> DetectionTask:
    """The task ``vimamba detect train`` flags describe (the datasets are opened and checked here)."""
    from .coco_data import CocoDetection, detection_train_transform

    if not cfg.images or not cfg.annotations:
        raise UserError("pass --images DIR and --annotations JSON: the training images and their COCO json")
    on_invalid = "skip" if cfg.skip_invalid else "error"
    masks = cfg.arch == "mask_rcnn"
    train_set = CocoDetection(cfg.images, cfg.annotations, train=True, masks=masks, on_invalid=on_invalid,
                              transform=detection_train_transform(cfg.image_size if cfg.lsj else None))
    print_once(f"training data: {train_set.report.summary()}")
    backbone = cfg.backbone_config((cfg.image_size, cfg.image_size), out_indices=(-1,),
                                   out_channels=cfg.pyramid_channels, pyramid_norm="ln", extra_pool=True)
    settings = dict(num_classes=len(train_set.class_names), backbone=backbone, masks=masks,
                    min_size=cfg.image_size, max_size=cfg.image_size, anchor_sizes=tuple(cfg.anchor_sizes))
    config = DetectorConfig.from_dict({**settings, **parse_settings(cfg.detector, "--detector")})
    eval_set = None
    if cfg.val_annotations:
        eval_set = CocoDetection(cfg.val_images or cfg.images, cfg.val_annotations, masks=masks,
                                 on_invalid=on_invalid)
        print_once(f"validation data: {eval_set.report.summary()}")
        if eval_set.category_ids != train_set.category_ids:
            raise InputError(f"the validation categories {eval_set.category_ids} differ from the training ones "
                             f"{train_set.category_ids}")
    return DetectionTask(config, train_set, eval_set=eval_set, class_names=train_set.class_names,
                         data_config={"category_ids": train_set.category_ids}, pretrained=cfg.pretrained,
                         settings=cfg)
