"""``vimamba segment train|eval|predict|shapes`` and ``vimamba detect train|eval|predict|shapes``.

Defaults reproduce the official Vim-Ti settings: UperNet on ADE20K (crop 512, 60k iterations, AdamW 2e-4, weight
decay 0.1, layer decay 0.92, poly schedule with 1,500 warmup iterations, sliding-window evaluation) and the ViTDet
Mask R-CNN on COCO (1024 px with large-scale jitter, AdamW 1e-4, weight decay 0.1, layer decay 0.837, multi-step
decay). Run ``torchrun --nproc_per_node=N -m vimamba.cli segment train ...`` for several GPUs.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple

from ..cli_args import image_size, non_negative_int, positive_int, probability
from ..command_options import (GROUP_TITLES, amp_option, checkpoint_option, device_option, json_option,
                               workers_option)
from ..engine.config import add_config_flags, command_config, option
from ..errors import InputError, MissingFileError
from .training import DETECTION_DEFAULTS, SEGMENTATION_DEFAULTS, DetectionConfig, SegmentationConfig

__all__ = ["register"]

_TRAIN_GROUPS = {"backbone": "backbone", "data": "data", "head": "head"}


def register(subparsers) -> None:
    """``vimamba segment ...`` and ``vimamba detect ...``."""
    _register_segment(subparsers)
    _register_detect(subparsers)


# ---------------------------------------------------------------------------------------------------- shared options
@contextlib.contextmanager
def _distributed(device: str):
    """The torchrun process group (if any) for the duration of a command."""
    from ..engine.distributed import cleanup_distributed, init_distributed

    dist = init_distributed(device)
    try:
        yield dist
    finally:
        cleanup_distributed()


def _fmt_plain(prog):  # generated flags say their defaults themselves
    return argparse.HelpFormatter(prog, max_help_position=36)


def _add_train_flags(p, task_config: type, defaults: dict) -> None:
    """The flags of the task's config and of the engine; the recipe's values are the defaults shown."""
    from ..engine.config import EngineConfig

    add_config_flags(p, (task_config, EngineConfig), defaults=defaults, group_titles=_TRAIN_GROUPS)


def _train(args, task_config: type, defaults: dict, make_task) -> int:
    """Build the configs from the flags (and the resumed run's saved ones), the task, and run the engine."""
    from ..engine.checkpointing import load_training_checkpoint
    from ..engine.config import EngineConfig, build_configs, explicit_values, field_defaults
    from ..engine.loop import run

    classes = (task_config, EngineConfig)
    explicit = explicit_values(args, classes)
    saved: dict = {}
    if explicit.get("resume"):
        saved = load_training_checkpoint(explicit["resume"]).get("config") or {}
        if "output" not in explicit:  # a copied run folder continues in the copy
            explicit["output"] = str(Path(explicit["resume"]).parent)
    config, engine = build_configs({**field_defaults(*classes), **defaults, **saved, **explicit}, classes,
                                   unknown="ignore")
    engine.check()  # a missing --output fails before the data is read
    return run(make_task(config), engine).exit_code


def _load_for_prediction(cfg, task: str):
    """(model on its device, checkpoint info, device, output folder) for ``predict``."""
    from ..engine.distributed import resolve_device
    from .checkpoint import load_dense_model

    device = resolve_device(cfg.device)
    model, info = load_dense_model(cfg.checkpoint, task=task)
    from ..io import ensure_folder

    out = ensure_folder(cfg.output, "--output folder")
    return model.to(device), info, device, out


def _input_images(paths: List[str]) -> List[Path]:
    from ..data.images import IMG_EXTENSIONS

    files: List[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            raise MissingFileError(f"no such image or folder: '{path}'", path)
    if not files:
        raise InputError(f"no images found in {paths}")
    return files


# -------------------------------------------------------------------------------------------- eval / predict flags
_CHECKPOINT_EPILOG = ("The checkpoint may also be given as the first positional argument instead of --checkpoint "
                      "CKPT (the older spelling).")


def _dense_checkpoint_option(task: str, command: str) -> Any:
    return checkpoint_option(f"a {task} checkpoint written by `vimamba {command} train` (last.pth or best.pth)",
                             also_positional=True)


def _images_option() -> Any:
    return option((), "image files or folders (every image in a folder)", "data", metavar="IMAGE", nargs="+",
                  positional=True)


def _prediction_folder_option(files: str) -> Any:
    return option(None, f"folder for {files} (created if needed)", "output", metavar="DIR", required=True)


def _metrics_file_option(what: str) -> Any:
    return option(None, f"also write {what} to this JSON file", "output", metavar="FILE")


def _mode_option() -> Any:
    return option(None, "slide (overlapping crops, the official evaluation) or whole (the image at once) (default: "
                  "the run's setting)", "data", choices=("slide", "whole"))


@dataclass
class SegmentEvalConfig:
    """``vimamba segment eval``."""

    checkpoint: Optional[str] = _dense_checkpoint_option("segmentation", "segment")
    data: Optional[str] = option(None, "dataset root in the ADE20K layout (images/SPLIT/, annotations/SPLIT/)", "data",
                                 metavar="DIR", required=True)
    split: str = option("validation", "the split to evaluate", "data")
    mode: Optional[str] = _mode_option()
    crop_size: Optional[Tuple[int, int]] = option(None, "slide mode: window size (default: the run's)", "data",
                                                  metavar=("H", "W"), check=image_size)
    stride: Optional[Tuple[int, int]] = option(None, "slide mode: window stride (default: the run's)", "data",
                                               metavar=("H", "W"), check=positive_int)
    device: str = device_option()
    amp: str = amp_option()
    workers: int = workers_option(2)
    output: Optional[str] = _metrics_file_option("the metrics (with per-class IoU)")
    json: bool = json_option("the metrics (with per-class IoU)")


@dataclass
class SegmentPredictConfig:
    """``vimamba segment predict``."""

    checkpoint: Optional[str] = _dense_checkpoint_option("segmentation", "segment")
    images: Tuple[str, ...] = _images_option()
    mode: Optional[str] = _mode_option()
    alpha: float = option(0.5, "overlay opacity", "output", check=probability)
    output: Optional[str] = _prediction_folder_option("NAME_mask.png (class indices) and NAME_overlay.png")
    device: str = device_option()


@dataclass
class DetectEvalConfig:
    """``vimamba detect eval``."""

    checkpoint: Optional[str] = _dense_checkpoint_option("detection", "detect")
    images: Optional[str] = option(None, "evaluation image folder", "data", metavar="DIR", required=True)
    annotations: Optional[str] = option(None, "evaluation COCO json", "data", metavar="FILE", required=True)
    skip_invalid: bool = option(False, "leave out malformed annotations (counted and reported) instead of stopping",
                                "data")
    device: str = device_option()
    amp: str = amp_option()
    workers: int = workers_option(2)
    output: Optional[str] = _metrics_file_option("the metrics")
    json: bool = json_option()


@dataclass
class DetectPredictConfig:
    """``vimamba detect predict``."""

    checkpoint: Optional[str] = _dense_checkpoint_option("detection", "detect")
    images: Tuple[str, ...] = _images_option()
    score_thresh: float = option(0.5, "draw and list the detections scoring at least this", "output",
                                 check=probability)
    output: Optional[str] = _prediction_folder_option("NAME_detections.png and detections.json")
    device: str = device_option()


@dataclass
class ShapesConfig:
    """``vimamba segment shapes`` and ``vimamba detect shapes``."""

    root: str = option("", "the folder to write the dataset into", "data", metavar="DIR", positional=True)
    train: int = option(64, "training images", "data", check=positive_int)
    val: int = option(16, "validation images", "data", check=positive_int)
    size: Tuple[int, int] = option((128, 128), "image size", "data", metavar=("H", "W"), check=image_size)
    seed: int = option(0, "random seed of the shapes", "data", check=non_negative_int)


# ---------------------------------------------------------------------------------------------------- segment
def _register_segment(subparsers) -> None:
    seg = subparsers.add_parser("segment", help="semantic segmentation with a Vim UperNet (ADE20K layout)")
    sub = seg.add_subparsers(dest="segment_command", metavar="ACTION", required=True)

    p = sub.add_parser("train", help="train a Vim UperNet", formatter_class=_fmt_plain)
    _add_train_flags(p, SegmentationConfig, SEGMENTATION_DEFAULTS)
    p.set_defaults(func=_segment_train)

    p = sub.add_parser("eval", help="mIoU / pixel accuracy / per-class IoU of a trained segmentor",
                       formatter_class=_fmt_plain, epilog=_CHECKPOINT_EPILOG)
    add_config_flags(p, [SegmentEvalConfig], group_titles=GROUP_TITLES)
    p.set_defaults(func=_segment_eval)

    p = sub.add_parser("predict", help="segment images: colour-coded mask PNGs and overlays",
                       formatter_class=_fmt_plain, epilog=_CHECKPOINT_EPILOG)
    add_config_flags(p, [SegmentPredictConfig], group_titles=GROUP_TITLES)
    p.set_defaults(func=_segment_predict)

    p = sub.add_parser("shapes", help="write a small synthetic dataset (coloured shapes) in the ADE20K layout",
                       formatter_class=_fmt_plain)
    add_config_flags(p, [ShapesConfig], group_titles=GROUP_TITLES)
    p.set_defaults(func=_segment_shapes)


def _segment_train(args) -> int:
    from .training import segmentation_task

    return _train(args, SegmentationConfig, SEGMENTATION_DEFAULTS, segmentation_task)


def _segment_eval(args) -> int:
    from ..engine.distributed import is_main_process
    from ..engine.precision import MixedPrecision
    from ..engine.reporting import write_json
    from .checkpoint import load_dense_model
    from .evaluate import evaluate_segmentation
    from .seg_data import SegEvalTransform, SegmentationDataset

    cfg = command_config(args, SegmentEvalConfig)
    with _distributed(cfg.device) as dist:
        model, info = load_dense_model(cfg.checkpoint, task="segmentation")
        data = info.data_config
        dataset = SegmentationDataset(cfg.data, cfg.split, info.config.num_classes,
                                      data.get("reduce_zero_label", False),
                                      SegEvalTransform(tuple(data.get("scale", (2048, 512)))))
        mode = cfg.mode or data.get("eval_mode", "slide")
        metrics = evaluate_segmentation(
            model.to(dist.device), dataset, device=dist.device, mode=mode,
            crop_size=tuple(cfg.crop_size or data.get("crop_size", (512, 512))),
            stride=tuple(cfg.stride or data.get("eval_stride", (341, 341))), class_names=info.class_names or None,
            workers=cfg.workers, precision=MixedPrecision(cfg.amp, dist.device))
        if not is_main_process():
            return 0
        if cfg.json:
            print(json.dumps(metrics, indent=2))
        else:
            width = max(len(n) for n in metrics["per_class"])
            for name, values in metrics["per_class"].items():
                iou = "   -  " if values["IoU"] is None else f"{100 * values['IoU']:6.2f}"
                print(f"  {name:<{width}}  IoU {iou}  ({values['pixels']:,} pixels)")
            print(f"{cfg.checkpoint} on {cfg.data} ({cfg.split}, {len(dataset)} images, {mode}): "
                  f"mIoU {100 * metrics['mIoU']:.2f}  mAcc {100 * metrics['mAcc']:.2f}  "
                  f"aAcc {100 * metrics['aAcc']:.2f}")
        if cfg.output:
            write_json(cfg.output, metrics)
        return 0


def _segment_predict(args) -> int:
    import torch

    from .files import read_rgb
    from .seg_data import SegEvalTransform
    from .visualize import class_mask_png, overlay_classes, save_rgb

    cfg = command_config(args, SegmentPredictConfig)
    model, info, device, out = _load_for_prediction(cfg, "segmentation")
    data = info.data_config
    transform = SegEvalTransform(tuple(data.get("scale", (2048, 512))))
    mode = cfg.mode or data.get("eval_mode", "slide")
    num_classes = info.config.num_classes
    for path in _input_images(list(cfg.images)):
        image = read_rgb(path)
        with torch.no_grad():
            logits = model.inference(transform(image)[None].to(device), mode=mode,
                                     crop_size=tuple(data.get("crop_size", (512, 512))),
                                     stride=tuple(data.get("eval_stride", (341, 341))),
                                     out_size=tuple(image.shape[-2:]))
        classes = logits.argmax(1)[0].cpu()
        class_mask_png(classes, num_classes).save(out / f"{path.stem}_mask.png")
        save_rgb(overlay_classes(image, classes, num_classes, alpha=cfg.alpha), out / f"{path.stem}_overlay.png")
        counts = torch.bincount(classes.flatten(), minlength=num_classes)
        top = [f"{info.class_names[c] if c < len(info.class_names) else c} {100 * counts[c] / classes.numel():.0f}%"
               for c in counts.argsort(descending=True)[:3].tolist() if counts[c] > 0]
        print(f"{path}: {', '.join(top)} -> {out / (path.stem + '_overlay.png')}")
    return 0


def _segment_shapes(args) -> int:
    from .synthetic import write_ade20k_shapes

    cfg = command_config(args, ShapesConfig)
    names = write_ade20k_shapes(cfg.root, {"training": cfg.train, "validation": cfg.val}, tuple(cfg.size),
                                seed=cfg.seed)
    print(f"wrote {cfg.train} + {cfg.val} images to {cfg.root} ({len(names)} classes: {', '.join(names)}); "
          f"train with: vimamba segment train --data {cfg.root} --dataset custom "
          f"--class-names {Path(cfg.root) / 'classes.txt'} ...")
    return 0


# ---------------------------------------------------------------------------------------------------- detect
def _register_detect(subparsers) -> None:
    det = subparsers.add_parser("detect", help="detection / instance segmentation with a Vim Mask R-CNN (COCO json)")
    sub = det.add_subparsers(dest="detect_command", metavar="ACTION", required=True)

    p = sub.add_parser("train", help="train a Vim Mask R-CNN or Faster R-CNN", formatter_class=_fmt_plain)
    _add_train_flags(p, DetectionConfig, DETECTION_DEFAULTS)
    p.set_defaults(func=_detect_train)

    p = sub.add_parser("eval", help="COCO box / mask AP of a trained detector", formatter_class=_fmt_plain,
                       epilog=_CHECKPOINT_EPILOG)
    add_config_flags(p, [DetectEvalConfig], group_titles=GROUP_TITLES)
    p.set_defaults(func=_detect_eval)

    p = sub.add_parser("predict", help="detect objects: images with boxes and masks drawn", formatter_class=_fmt_plain,
                       epilog=_CHECKPOINT_EPILOG)
    add_config_flags(p, [DetectPredictConfig], group_titles=GROUP_TITLES)
    p.set_defaults(func=_detect_predict)

    p = sub.add_parser("shapes", help="write a small synthetic COCO dataset (coloured shapes)",
                       formatter_class=_fmt_plain)
    add_config_flags(p, [ShapesConfig], group_titles=GROUP_TITLES)
    p.set_defaults(func=_detect_shapes)


def _detect_train(args) -> int:
    from .training import detection_task

    return _train(args, DetectionConfig, DETECTION_DEFAULTS, detection_task)


def _detect_eval(args) -> int:
    from ..engine.distributed import is_main_process
    from ..engine.precision import MixedPrecision
    from ..engine.reporting import write_json
    from .checkpoint import load_dense_model
    from ..errors import UserError
    from .coco_data import CocoDetection
    from .coco_eval import count_ground_truth
    from .evaluate import evaluate_detection

    cfg = command_config(args, DetectEvalConfig)
    with _distributed(cfg.device) as dist:
        model, info = load_dense_model(cfg.checkpoint, task="detection")
        dataset = CocoDetection(cfg.images, cfg.annotations, masks=info.config.masks,
                                on_invalid="skip" if cfg.skip_invalid else "error")
        if is_main_process():  # with --json, stdout holds the JSON only
            print(dataset.report.summary(), file=sys.stderr if cfg.json else sys.stdout)
        if info.class_names and dataset.class_names != info.class_names:
            raise InputError(f"the dataset's categories {dataset.class_names} are not the ones the model was trained "
                             f"on {info.class_names}")
        if count_ground_truth(dataset.coco, dataset.image_ids) == 0:
            raise UserError(f"AP is undefined without ground truth: '{cfg.annotations}' holds no (non-crowd) "
                            f"annotation for its {len(dataset.image_ids)} image(s); evaluate on an annotated set")
        metrics = evaluate_detection(model.to(dist.device), dataset, device=dist.device, workers=cfg.workers,
                                     precision=MixedPrecision(cfg.amp, dist.device))
        if not is_main_process():
            return 0
        if cfg.json:
            print(json.dumps(metrics, indent=2))
        else:
            for kind, values in metrics.items():
                shown = "  ".join(f"{k} {'-' if v is None else f'{100 * v:.1f}'}" for k, v in values.items()
                                  if not k.startswith("AR"))
                print(f"{kind:>5}: {shown}")
        if cfg.output:
            write_json(cfg.output, metrics)
        return 0


def _detect_predict(args) -> int:
    import torch

    from ..engine.reporting import write_json
    from .coco_eval import detections_to_coco
    from .files import read_rgb
    from .visualize import draw_detections, save_rgb

    cfg = command_config(args, DetectPredictConfig)
    model, info, device, out = _load_for_prediction(cfg, "detection")
    category_ids = info.data_config.get("category_ids") or list(range(1, len(info.class_names) + 1))
    records = []
    for path in _input_images(list(cfg.images)):
        image = read_rgb(path)
        with torch.no_grad():
            detection = {k: v.cpu() for k, v in model([(image.float() / 255).to(device)])[0].items()}
        save_rgb(draw_detections(image, detection, info.class_names, cfg.score_thresh),
                 out / f"{path.stem}_detections.png")
        kept = {k: v[detection["scores"] >= cfg.score_thresh] for k, v in detection.items()}
        for result in detections_to_coco(0, kept, category_ids):
            result.pop("image_id")
            records.append({"file": str(path), **result})
        print(f"{path}: {len(kept['scores'])} detections >= {cfg.score_thresh} -> "
              f"{out / (path.stem + '_detections.png')}")
    write_json(out / "detections.json", records)
    return 0


def _detect_shapes(args) -> int:
    from .synthetic import write_coco_shapes

    cfg = command_config(args, ShapesConfig)
    root = Path(cfg.root)
    sizes = (tuple(cfg.size),)
    write_coco_shapes(root / "train", cfg.train, sizes, seed=cfg.seed, crowd_every=5)
    write_coco_shapes(root / "val", cfg.val, sizes, seed=cfg.seed + 1, crowd_every=5)
    print(f"wrote {cfg.train} + {cfg.val} images to {root}/train and {root}/val (images/ + annotations.json); train "
          f"with: vimamba detect train --images {root}/train/images --annotations {root}/train/annotations.json ...")
    return 0
