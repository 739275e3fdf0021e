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
from pathlib import Path
from typing import Dict, List, Optional

from ..cli_args import (image_size, non_negative_float, non_negative_int, positive_float, positive_int, probability,
                        unit_interval_open)

__all__ = ["register"]

_SEG_TRAIN_DEFAULTS = dict(iterations=60000, batch_size=8, lr=2e-4, weight_decay=0.1, layer_decay=0.92,
                           schedule="poly", warmup_iters=1500, eval_interval=4000)
# ViTDet Vim-Ti (cascade_mask_rcnn_vimdet_t_100ep_adj1): 184,375 iterations at total batch 64, decay x0.1 at 88.9% and
# 96.3% of training, warmup 250 iterations.
_DET_TRAIN_DEFAULTS = dict(iterations=184375, batch_size=16, lr=1e-4, weight_decay=0.1, layer_decay=0.837,
                           schedule="multistep", milestones=(163889, 177546), warmup_iters=250, eval_interval=10000)


def register(subparsers) -> None:
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


def _parse_overrides(pairs: Optional[List[str]]) -> Dict[str, object]:
    """``["embed_dim=32", "img_size=512"]`` -> ``{"embed_dim": 32, "img_size": 512}`` (values parsed as JSON)."""
    out: Dict[str, object] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"expected key=value settings (e.g. embed_dim=192), got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _add_backbone_args(p, feature: str, out_indices_help: str) -> None:
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", default="vim_tiny_patch16_224", help="registered Vim model name (vimamba models)")
    g.add_argument("--pretrained", default=None, help="Vim classification checkpoint to start the backbone from "
                                                       "(head dropped, position embedding resized)")
    g.add_argument("--vim", nargs="*", metavar="KEY=VALUE",
                   help="Vim settings to override, e.g. drop_path_rate=0.1 (img_size defaults to the training size)")
    g.add_argument("--out-indices", type=non_negative_int, nargs="+", default=None, help=out_indices_help)
    g.add_argument("--feature", choices=["mixer", "residual"], default=feature,
                   help="block feature: mixer output or residual stream")
    g.add_argument("--feature-norm", action="store_true", help="apply the final RMSNorm to the block features")


def _add_train_args(p, defaults: dict) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--output", default=None, help="run folder: checkpoints, metrics.jsonl, curves.png, summary.json "
                                                  "(required for a new run; with --resume: the checkpoint's folder)")
    g.add_argument("--iterations", type=positive_int, default=defaults["iterations"])
    g.add_argument("--batch-size", type=positive_int, default=defaults["batch_size"], help="images per process")
    g.add_argument("--accum-steps", type=positive_int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=positive_float, default=defaults["lr"])
    g.add_argument("--weight-decay", type=non_negative_float, default=defaults["weight_decay"])
    g.add_argument("--layer-decay", type=unit_interval_open, default=defaults["layer_decay"],
                   help="layer-wise LR decay over the Vim blocks (1 = off)")
    g.add_argument("--no-decay-ssm", action="store_true", help="no weight decay on A_log (the official code decays it)")
    g.add_argument("--schedule", choices=["poly", "multistep"], default=defaults["schedule"])
    g.add_argument("--milestones", type=positive_int, nargs="*", default=list(defaults.get("milestones", ())),
                   help="multistep: iterations at which the LR drops x0.1")
    g.add_argument("--warmup-iters", type=non_negative_int, default=defaults["warmup_iters"])
    g.add_argument("--clip-grad", type=positive_float, default=None)
    g.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off", help="mixed precision")
    g.add_argument("--eval-interval", type=positive_int, default=defaults["eval_interval"])
    g.add_argument("--checkpoint-interval", type=positive_int, default=1000)
    g.add_argument("--log-interval", type=positive_int, default=50)
    g.add_argument("--workers", type=non_negative_int, default=4)
    g.add_argument("--seed", type=non_negative_int, default=0)
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations (less memory)")
    g.add_argument("--resume", default=None, help="last.pth of an interrupted run (continues in its folder)")
    g.add_argument("--overwrite", action="store_true",
                   help="start over in an --output folder that already holds a run (its checkpoints are replaced)")
    g.add_argument("--device", default="auto")


def _train_config(args):
    from .engine import DenseTrainConfig

    return DenseTrainConfig(
        iterations=args.iterations, batch_size=args.batch_size, accum_steps=args.accum_steps, lr=args.lr,
        weight_decay=args.weight_decay, layer_decay=args.layer_decay, no_decay_ssm=args.no_decay_ssm,
        schedule=args.schedule, milestones=tuple(args.milestones), warmup_iters=args.warmup_iters,
        warmup_lr=args.lr * 1e-6, clip_grad=args.clip_grad, amp=args.amp, eval_interval=args.eval_interval,
        checkpoint_interval=args.checkpoint_interval, log_interval=args.log_interval, workers=args.workers,
        seed=args.seed, grad_checkpointing=args.grad_checkpointing,
    )


def _backbone_config(args, img_size, **fixed):
    """The backbone settings of the command line; the position embedding is stored for the training size."""
    from .backbone import BackboneConfig

    vim = {"img_size": list(img_size), **_parse_overrides(args.vim)}
    settings = dict(model=args.backbone, vim=vim, feature=args.feature, norm=args.feature_norm)
    if args.out_indices is not None:
        settings["out_indices"] = tuple(args.out_indices)
    return BackboneConfig(**{**fixed, **settings})


def _run_training(args, task: str, config, class_names, data_config, train_set, to_inputs, collate_fn, evaluate,
                  metric: str, dist) -> int:
    from ..engine.distributed import print_once, seed_everything
    from .checkpoint import build_dense_model, dense_checkpoint_extra
    from .engine import train_iterations

    output = _run_folder(args)
    seed_everything(args.seed)  # the same initial weights on every process
    model = build_dense_model(task, config, args.pretrained)
    print_once(f"{task} model: {sum(p.numel() for p in model.parameters()):,} parameters; "
               f"{len(train_set)} training images")
    result = train_iterations(
        model, train_set, cfg=_train_config(args), output_dir=output, dist=dist, to_inputs=to_inputs,
        collate_fn=collate_fn, evaluate=evaluate, metric=metric,
        checkpoint_extra=dense_checkpoint_extra(task, config, class_names, data_config), resume=args.resume,
        overwrite=args.overwrite,
    )
    return result.exit_code


def _run_folder(args) -> Path:
    """--output, or the folder of the --resume checkpoint (a copied run folder continues in the copy)."""
    from ..errors import UserError

    if args.output is not None:
        return Path(args.output)
    if args.resume is None:
        raise UserError("pass --output DIR: the folder for the run's checkpoints and logs")
    return Path(args.resume).parent


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
            raise FileNotFoundError(f"no such image or folder: '{path}'")
    if not files:
        raise FileNotFoundError(f"no images found in {paths}")
    return files


# ---------------------------------------------------------------------------------------------------- segment
def _register_segment(subparsers) -> None:
    seg = subparsers.add_parser("segment", help="semantic segmentation with a Vim UperNet (ADE20K layout)")
    sub = seg.add_subparsers(dest="segment_command", metavar="ACTION", required=True)

    p = sub.add_parser("train", help="train a Vim UperNet", formatter_class=_fmt)
    p.add_argument("--data", required=True, help="dataset root: images/{training,validation}, annotations/...")
    p.add_argument("--dataset", choices=["ade20k", "custom"], default="ade20k",
                   help="ade20k: 150 classes, reduce-zero-label, the ADE20K class names")
    p.add_argument("--num-classes", type=positive_int, default=None, help="custom datasets: number of classes")
    p.add_argument("--class-names", default=None, help="custom datasets: text file, one class name per line")
    p.add_argument("--reduce-zero-label", action="store_true", help="custom datasets: label 0 is 'ignore'")
    p.add_argument("--train-split", default="training")
    p.add_argument("--val-split", default="validation", help="'' to train without evaluation")
    p.add_argument("--crop-size", type=image_size, nargs=2, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--scale", type=image_size, nargs=2, default=[2048, 512], metavar=("LONG", "SHORT"),
                   help="rescale target (x ratio-range in training, x1 in evaluation)")
    p.add_argument("--ratio-range", type=positive_float, nargs=2, default=[0.5, 2.0], metavar=("MIN", "MAX"),
                   help="random rescale range of the training images")
    p.add_argument("--eval-mode", choices=["slide", "whole"], default="slide")
    p.add_argument("--eval-stride", type=positive_int, nargs=2, default=[341, 341], metavar=("H", "W"))
    _add_backbone_args(p, "mixer", "blocks giving the 4 pyramid levels (default: 5 11 17 23 for depth 24)")
    p.add_argument("--channels", type=positive_int, default=None, help="UperNet width (default: the backbone's embed_dim)")
    p.add_argument("--aux-weight", type=non_negative_float, default=0.4, help="auxiliary FCN loss weight (0: no auxiliary head)")
    _add_train_args(p, _SEG_TRAIN_DEFAULTS)
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


def _seg_classes(args):
    from .classes import ADE20K_CLASSES

    if args.dataset == "ade20k":
        return list(ADE20K_CLASSES), True
    if args.class_names:
        names = [line.strip() for line in Path(args.class_names).read_text().splitlines() if line.strip()]
        if args.num_classes is not None and args.num_classes != len(names):
            raise ValueError(f"--num-classes {args.num_classes} but {args.class_names} names {len(names)} classes")
        return names, args.reduce_zero_label
    if args.num_classes is None:
        raise ValueError("a custom dataset needs --num-classes or --class-names")
    return [f"class_{c}" for c in range(args.num_classes)], args.reduce_zero_label


def _segment_train(args) -> int:
    from .evaluate import evaluate_segmentation
    from .seg_data import SegEvalTransform, SegmentationDataset, SegTrainTransform
    from .segmentor import SegmentorConfig

    _run_folder(args)  # a missing --output fails before the data is read
    class_names, reduce_zero = _seg_classes(args)
    num_classes = len(class_names)
    config = SegmentorConfig(num_classes=num_classes, backbone=_backbone_config(args, args.crop_size), channels=args.channels,
                             aux_weight=args.aux_weight)
    data_config = dict(reduce_zero_label=reduce_zero, scale=list(args.scale), crop_size=list(args.crop_size),
                       eval_mode=args.eval_mode, eval_stride=list(args.eval_stride))
    augment = SegTrainTransform(tuple(args.crop_size), tuple(args.scale), tuple(args.ratio_range))
    train_set = SegmentationDataset(args.data, args.train_split, num_classes, reduce_zero, augment)
    evaluate = None
    if args.val_split:
        val_set = SegmentationDataset(args.data, args.val_split, num_classes, reduce_zero,
                                      SegEvalTransform(tuple(args.scale)))

        def evaluate_val(model, precision):
            metrics = evaluate_segmentation(model, val_set, device=dist.device, mode=args.eval_mode,
                                            crop_size=tuple(args.crop_size), stride=tuple(args.eval_stride),
                                            class_names=class_names, workers=min(args.workers, 2),
                                            precision=precision)
            return {k: v for k, v in metrics.items() if k != "per_class"}

        evaluate = evaluate_val

    def to_inputs(batch, device):
        images, labels = batch
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    with _distributed(args.device) as dist:
        return _run_training(args, "segmentation", config, class_names, data_config, train_set, to_inputs, None,
                             evaluate, "mIoU", dist)


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

    p = sub.add_parser("train", help="train a Vim Mask R-CNN or Faster R-CNN", formatter_class=_fmt)
    _add_coco_args(p, "train")
    p.add_argument("--val-images", default=None, help="validation image folder")
    p.add_argument("--val-annotations", default=None, help="validation COCO json")
    p.add_argument("--arch", choices=["mask_rcnn", "faster_rcnn"], default="mask_rcnn")
    p.add_argument("--image-size", type=image_size, default=1024, help="images are resized to fit this square")
    p.add_argument("--lsj", action=argparse.BooleanOptionalAction, default=True,
                   help="large-scale jitter (scale 0.1-2 and crop to --image-size)")
    p.add_argument("--anchor-sizes", type=positive_int, nargs=5, default=[32, 64, 128, 256, 512])
    p.add_argument("--pyramid-channels", type=positive_int, default=256)
    p.add_argument("--detector", nargs="*", metavar="KEY=VALUE",
                   help="other DetectorConfig settings, e.g. head_channels=128 box_fc=512 rpn_post_nms_top_n_test=300")
    _add_backbone_args(p, "residual", "blocks feeding the pyramid (default: the last one, ViTDet)")
    _add_train_args(p, _DET_TRAIN_DEFAULTS)
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
    from ..engine.distributed import print_once
    from .coco_data import CocoDetection, collate_detection, detection_train_transform
    from .detector import DetectorConfig
    from .evaluate import evaluate_detection, flatten_coco_metrics

    _run_folder(args)  # a missing --output fails before the data is read
    on_invalid = "skip" if args.skip_invalid else "error"
    masks = args.arch == "mask_rcnn"
    train_set = CocoDetection(args.images, args.annotations, train=True, masks=masks, on_invalid=on_invalid,
                              transform=detection_train_transform(args.image_size if args.lsj else None))
    print_once(f"training data: {train_set.report.summary()}")
    backbone = _backbone_config(args, (args.image_size, args.image_size), out_indices=(-1,), out_channels=args.pyramid_channels, pyramid_norm="ln",
                                extra_pool=True)
    settings = dict(num_classes=len(train_set.class_names), backbone=backbone, masks=masks,
                    min_size=args.image_size, max_size=args.image_size, anchor_sizes=tuple(args.anchor_sizes))
    config = DetectorConfig.from_dict({**settings, **_parse_overrides(args.detector)})
    evaluate = None
    if args.val_annotations:
        val_set = CocoDetection(args.val_images or args.images, args.val_annotations, masks=masks,
                                on_invalid=on_invalid)
        print_once(f"validation data: {val_set.report.summary()}")
        if val_set.category_ids != train_set.category_ids:
            raise ValueError(f"the validation categories {val_set.category_ids} differ from the training ones "
                             f"{train_set.category_ids}")

        def evaluate_val(model, precision):
            return flatten_coco_metrics(evaluate_detection(model, val_set, device=dist.device,
                                                           workers=min(args.workers, 2), precision=precision))

        evaluate = evaluate_val

    def to_inputs(batch, device):
        images, targets = batch
        return ([image.to(device, non_blocking=True) for image in images],
                [{k: v.to(device) if hasattr(v, "to") else v for k, v in t.items()} for t in targets])

    with _distributed(args.device) as dist:
        return _run_training(args, "detection", config, train_set.class_names, {"category_ids": train_set.category_ids},
                             train_set, to_inputs, collate_detection, evaluate, "bbox_AP", dist)


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
            raise ValueError(f"the dataset's categories {dataset.class_names} are not the ones the model was trained "
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
