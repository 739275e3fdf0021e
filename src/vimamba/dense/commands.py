"""``vimamba segment train|eval|predict|shapes`` and ``vimamba detect train|eval|predict|shapes``.

Defaults reproduce the official Vim-Ti settings: UperNet on ADE20K (crop 512, 60k iterations, AdamW 2e-4, weight
decay 0.1, layer decay 0.92, poly schedule with 1,500 warmup iterations, sliding-window evaluation) and the ViTDet
Mask R-CNN on COCO (1024 px with large-scale jitter, AdamW 1e-4, weight decay 0.1, layer decay 0.837, multi-step
decay). Run ``torchrun --nproc_per_node=N -m vimamba.cli segment train ...`` for several GPUs.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import List

from ..cli_args import image_size, non_negative_int, positive_int, probability
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


def _fmt(prog):
    return argparse.ArgumentDefaultsHelpFormatter(prog, max_help_position=36)


def _fmt_plain(prog):  # generated flags say their defaults themselves
    return argparse.HelpFormatter(prog, max_help_position=36)


def _add_train_flags(p, task_config: type, defaults: dict) -> None:
    """The flags of the task's config and of the engine; the recipe's values are the defaults shown."""
    from ..engine.config import EngineConfig, add_config_flags

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


def _load_for_prediction(args, task: str):
    """(model on its device, checkpoint info, device, output folder) for ``predict``."""
    from ..engine.distributed import resolve_device
    from .checkpoint import load_dense_model

    device = resolve_device(args.device)
    model, info = load_dense_model(args.checkpoint, task=task)
    from ..io import ensure_folder

    out = ensure_folder(args.output, "--output folder")
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


# ---------------------------------------------------------------------------------------------------- segment
def _register_segment(subparsers) -> None:
    seg = subparsers.add_parser("segment", help="semantic segmentation with a Vim UperNet (ADE20K layout)")
    sub = seg.add_subparsers(dest="segment_command", metavar="ACTION", required=True)

    p = sub.add_parser("train", help="train a Vim UperNet", formatter_class=_fmt_plain)
    _add_train_flags(p, SegmentationConfig, SEGMENTATION_DEFAULTS)
    p.set_defaults(func=_segment_train)

    p = sub.add_parser("eval", help="mIoU / pixel accuracy / per-class IoU of a trained segmentor",
                       formatter_class=_fmt)
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="validation")
    p.add_argument("--mode", choices=["slide", "whole"], default=None, help="default: the run's setting")
    p.add_argument("--crop-size", type=image_size, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--stride", type=positive_int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--output", default=None, help="write the metrics (with per-class IoU) to this JSON file")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    p.add_argument("--workers", type=non_negative_int, default=2)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_segment_eval)

    p = sub.add_parser("predict", help="segment images: colour-coded mask PNGs and overlays", formatter_class=_fmt)
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--output", required=True, help="folder for NAME_mask.png (class indices) and NAME_overlay.png")
    p.add_argument("--mode", choices=["slide", "whole"], default=None)
    p.add_argument("--alpha", type=probability, default=0.5, help="overlay opacity")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_segment_predict)

    p = sub.add_parser("shapes", help="write a small synthetic dataset (coloured shapes) in the ADE20K layout",
                       formatter_class=_fmt)
    p.add_argument("root")
    p.add_argument("--train", type=positive_int, default=64)
    p.add_argument("--val", type=positive_int, default=16)
    p.add_argument("--size", type=image_size, nargs=2, default=[128, 128], metavar=("H", "W"))
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.set_defaults(func=_segment_shapes)


def _segment_train(args) -> int:
    from .training import segmentation_task

    return _train(args, SegmentationConfig, SEGMENTATION_DEFAULTS, segmentation_task)


def _segment_eval(args) -> int:
    from ..engine.distributed import is_main_process, print_once
    from ..engine.precision import MixedPrecision
    from ..engine.reporting import write_json
    from .checkpoint import load_dense_model
    from .evaluate import evaluate_segmentation
    from .seg_data import SegEvalTransform, SegmentationDataset

    with _distributed(args.device) as dist:
        model, info = load_dense_model(args.checkpoint, task="segmentation")
        data = info.data_config
        dataset = SegmentationDataset(args.data, args.split, info.config.num_classes,
                                      data.get("reduce_zero_label", False),
                                      SegEvalTransform(tuple(data.get("scale", (2048, 512)))))
        mode = args.mode or data.get("eval_mode", "slide")
        metrics = evaluate_segmentation(
            model.to(dist.device), dataset, device=dist.device, mode=mode,
            crop_size=tuple(args.crop_size or data.get("crop_size", (512, 512))),
            stride=tuple(args.stride or data.get("eval_stride", (341, 341))), class_names=info.class_names or None,
            workers=args.workers, precision=MixedPrecision(args.amp, dist.device))
        if is_main_process():
            width = max(len(n) for n in metrics["per_class"])
            for name, values in metrics["per_class"].items():
                iou = "   -  " if values["IoU"] is None else f"{100 * values['IoU']:6.2f}"
                print(f"  {name:<{width}}  IoU {iou}  ({values['pixels']:,} pixels)")
            print_once(f"{args.checkpoint} on {args.data} ({args.split}, {len(dataset)} images, {mode}): "
                       f"mIoU {100 * metrics['mIoU']:.2f}  mAcc {100 * metrics['mAcc']:.2f}  "
                       f"aAcc {100 * metrics['aAcc']:.2f}")
            if args.output:
                write_json(args.output, metrics)
        return 0


def _segment_predict(args) -> int:
    import torch

    from .files import read_rgb
    from .seg_data import SegEvalTransform
    from .visualize import class_mask_png, overlay_classes, save_rgb

    model, info, device, out = _load_for_prediction(args, "segmentation")
    data = info.data_config
    transform = SegEvalTransform(tuple(data.get("scale", (2048, 512))))
    mode = args.mode or data.get("eval_mode", "slide")
    num_classes = info.config.num_classes
    for path in _input_images(args.images):
        image = read_rgb(path)
        with torch.no_grad():
            logits = model.inference(transform(image)[None].to(device), mode=mode,
                                     crop_size=tuple(data.get("crop_size", (512, 512))),
                                     stride=tuple(data.get("eval_stride", (341, 341))),
                                     out_size=tuple(image.shape[-2:]))
        classes = logits.argmax(1)[0].cpu()
        class_mask_png(classes, num_classes).save(out / f"{path.stem}_mask.png")
        save_rgb(overlay_classes(image, classes, num_classes, alpha=args.alpha), out / f"{path.stem}_overlay.png")
        counts = torch.bincount(classes.flatten(), minlength=num_classes)
        top = [f"{info.class_names[c] if c < len(info.class_names) else c} {100 * counts[c] / classes.numel():.0f}%"
               for c in counts.argsort(descending=True)[:3].tolist() if counts[c] > 0]
        print(f"{path}: {', '.join(top)} -> {out / (path.stem + '_overlay.png')}")
    return 0


def _segment_shapes(args) -> int:
    from .synthetic import write_ade20k_shapes

    names = write_ade20k_shapes(args.root, {"training": args.train, "validation": args.val}, tuple(args.size),
                                seed=args.seed)
    print(f"wrote {args.train} + {args.val} images to {args.root} ({len(names)} classes: {', '.join(names)}); "
          f"train with: vimamba segment train --data {args.root} --dataset custom "
          f"--class-names {Path(args.root) / 'classes.txt'} ...")
    return 0


# ---------------------------------------------------------------------------------------------------- detect
def _register_detect(subparsers) -> None:
    det = subparsers.add_parser("detect", help="detection / instance segmentation with a Vim Mask R-CNN (COCO json)")
    sub = det.add_subparsers(dest="detect_command", metavar="ACTION", required=True)

    p = sub.add_parser("train", help="train a Vim Mask R-CNN or Faster R-CNN", formatter_class=_fmt_plain)
    _add_train_flags(p, DetectionConfig, DETECTION_DEFAULTS)
    p.set_defaults(func=_detect_train)

    p = sub.add_parser("eval", help="COCO box / mask AP of a trained detector", formatter_class=_fmt)
    p.add_argument("checkpoint")
    _add_coco_args(p, "evaluation")
    p.add_argument("--output", default=None, help="write the metrics to this JSON file")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    p.add_argument("--workers", type=non_negative_int, default=2)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_detect_eval)

    p = sub.add_parser("predict", help="detect objects: images with boxes and masks drawn", formatter_class=_fmt)
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--output", required=True, help="folder for NAME_detections.png and detections.json")
    p.add_argument("--score-thresh", type=probability, default=0.5)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_detect_predict)

    p = sub.add_parser("shapes", help="write a small synthetic COCO dataset (coloured shapes)", formatter_class=_fmt)
    p.add_argument("root")
    p.add_argument("--train", type=positive_int, default=64)
    p.add_argument("--val", type=positive_int, default=16)
    p.add_argument("--size", type=image_size, nargs=2, default=[128, 128], metavar=("H", "W"))
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.set_defaults(func=_detect_shapes)


def _add_coco_args(p, what: str) -> None:
    p.add_argument("--images", required=True, help=f"{what} image folder")
    p.add_argument("--annotations", required=True, help=f"{what} COCO json")
    p.add_argument("--skip-invalid", action="store_true",
                   help="leave out malformed annotations (counted and reported) instead of stopping")


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

    with _distributed(args.device) as dist:
        model, info = load_dense_model(args.checkpoint, task="detection")
        dataset = CocoDetection(args.images, args.annotations, masks=info.config.masks,
                                on_invalid="skip" if args.skip_invalid else "error")
        if is_main_process():
            print(dataset.report.summary())
        if info.class_names and dataset.class_names != info.class_names:
            raise InputError(f"the dataset's categories {dataset.class_names} are not the ones the model was trained "
                             f"on {info.class_names}")
        if count_ground_truth(dataset.coco, dataset.image_ids) == 0:
            raise UserError(f"AP is undefined without ground truth: '{args.annotations}' holds no (non-crowd) "
                            f"annotation for its {len(dataset.image_ids)} image(s); evaluate on an annotated set")
        metrics = evaluate_detection(model.to(dist.device), dataset, device=dist.device, workers=args.workers,
                                     precision=MixedPrecision(args.amp, dist.device))
        if is_main_process():
            for kind, values in metrics.items():
                shown = "  ".join(f"{k} {'-' if v is None else f'{100 * v:.1f}'}" for k, v in values.items()
                                  if not k.startswith("AR"))
                print(f"{kind:>5}: {shown}")
            if args.output:
                write_json(args.output, metrics)
        return 0


def _detect_predict(args) -> int:
    import torch

    from ..engine.reporting import write_json
    from .coco_eval import detections_to_coco
    from .files import read_rgb
    from .visualize import draw_detections, save_rgb

    model, info, device, out = _load_for_prediction(args, "detection")
    category_ids = info.data_config.get("category_ids") or list(range(1, len(info.class_names) + 1))
    records = []
    for path in _input_images(args.images):
        image = read_rgb(path)
        with torch.no_grad():
            detection = {k: v.cpu() for k, v in model([(image.float() / 255).to(device)])[0].items()}
        save_rgb(draw_detections(image, detection, info.class_names, args.score_thresh),
                 out / f"{path.stem}_detections.png")
        kept = {k: v[detection["scores"] >= args.score_thresh] for k, v in detection.items()}
        for result in detections_to_coco(0, kept, category_ids):
            result.pop("image_id")
            records.append({"file": str(path), **result})
        print(f"{path}: {len(kept['scores'])} detections >= {args.score_thresh} -> "
              f"{out / (path.stem + '_detections.png')}")
    write_json(out / "detections.json", records)
    return 0


def _detect_shapes(args) -> int:
    from .synthetic import write_coco_shapes

    root = Path(args.root)
    sizes = (tuple(args.size),)
    write_coco_shapes(root / "train", args.train, sizes, seed=args.seed, crowd_every=5)
    write_coco_shapes(root / "val", args.val, sizes, seed=args.seed + 1, crowd_every=5)
    print(f"wrote {args.train} + {args.val} images to {root}/train and {root}/val (images/ + annotations.json); train "
          f"with: vimamba detect train --images {root}/train/images --annotations {root}/train/annotations.json ...")
    return 0
