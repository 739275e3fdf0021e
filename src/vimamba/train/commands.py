"""Training subcommands: ``vimamba train``, ``vimamba eval``, ``vimamba predict``.

``vimamba train``'s flags are generated from :class:`~.config.TrainConfig` (one flag per field, its help, its
default and the recipes' defaults), so the command line, the config saved in checkpoints and the Python API
cannot drift apart.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli_args import image_size, non_negative_int, positive_int, unit_interval_open
from ..engine.config import EngineConfig, add_config_flags, show_value
from .config import ENGINE_DEFAULTS, RECIPE_NOTES, RECIPES, ClassificationConfig

_GROUP_TITLES = {"data": "data", "model": "model", "augmentation": "augmentation and regularisation"}


def _recipe_epilog() -> str:
    lines = ["recipes (--recipe; auto = vim_tiny/vim_small/vim_base by model name, vim_ft_stride8 for --finetune into "
             "a stride-8 Vim, deit for other models, demo without --data/--dataset):"]
    for name, overrides in RECIPES.items():
        lines.append(f"  {name:<15} {RECIPE_NOTES[name]}")
        if overrides:
            shown = ", ".join(f"{k.replace('_', '-')}={show_value(v)}" for k, v in overrides.items())
            lines.append(f"  {'':<15}   {shown}")
    lines.append("")
    lines.append("examples:")
    lines.append("  vimamba train                                   # the Fashion-MNIST demo on CPU")
    lines.append("  torchrun --nproc_per_node=8 -m vimamba.cli train --data /imagenet --model vim_tiny_patch16_224 "
                 "--output runs/vim_t")
    lines.append("  vimamba train --data /imagenet --model vim_tiny_patch16_stride8_224 --finetune vim_t.pth")
    lines.append("  vimamba train --resume runs/vim_t/last.pth")
    return "\n".join(lines)


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of :class:`ClassificationConfig` and :class:`EngineConfig`, with the recipes' values in the help."""
    notes = {}
    for name in {k for r in RECIPES.values() for k in r}:
        values = {recipe: r[name] for recipe, r in RECIPES.items() if name in r}
        notes[name] = "recipes: " + ", ".join(f"{n} {show_value(v)}" for n, v in values.items())
    add_config_flags(parser, (ClassificationConfig, EngineConfig), defaults=ENGINE_DEFAULTS, notes=notes,
                     group_titles=_GROUP_TITLES)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a classifier (no arguments: the Fashion-MNIST demo)",
        description="Train a Vim (or timm DeiT) classifier with the DeiT/Vim recipe, on one CPU/GPU or under "
                    "torchrun. Every flag defaults to the recipe's value; learning rates are per 512 images.",
        epilog=_recipe_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_arguments(p)
    p.set_defaults(func=_train)

    p = subparsers.add_parser("eval", help="top-1 / top-5 / loss of a checkpoint on a labelled dataset",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="a vimamba training checkpoint, exported weights, or an official Vim .pth")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="image folder: DIR/val/<class>/* (ImageNet layout) or DIR/<class>/*")
    p.add_argument("--dataset", default=None, choices=("fashion-mnist", "cifar10", "imagenet"),
                   help="a named dataset's test split instead (with --data: where it lives)")
    _add_inference_arguments(p)
    p.add_argument("--batch-size", type=positive_int, default=128, help="images per batch")
    p.add_argument("--workers", type=non_negative_int, default=4, help="data-loading worker processes")
    p.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"), help="autocast precision")
    p.add_argument("--strict-data", action="store_true", help="stop on an unreadable image instead of skipping it")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=_eval)

    p = subparsers.add_parser("predict", help="top-5 classes of image files",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="CKPT",
                        help="a vimamba training checkpoint, exported weights, or an official Vim .pth")
    source.add_argument("--onnx", metavar="MODEL",
                        help="an ONNX model written by `vimamba export` (runs in onnxruntime on the CPU, with the "
                             "preprocessing stored in it)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--top-k", type=positive_int, default=5, help="how many classes to show per image")
    _add_inference_arguments(p)
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(func=_predict)


def _add_inference_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--img-size", type=image_size, default=None, metavar="S",
                   help="evaluate at this resolution (default: the checkpoint's; resize S / crop-pct, crop S)")
    p.add_argument("--crop-pct", type=unit_interval_open, default=None,
                   help="centre-crop fraction (default: the checkpoint's; 0.875 for the official models)")
    p.add_argument("--weights", default="auto", choices=("auto", "model", "ema"),
                   help="with a training checkpoint: the trained or the EMA weights")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow pickled Python objects in a .pth you trust")


# ---------------------------------------------------------------------------------------------------- train
def _train(args) -> int:
    from ..engine.checkpointing import load_training_checkpoint
    from ..engine.config import explicit_values
    from .classification import run_training
    from .config import resolve_config

    explicit = explicit_values(args, (ClassificationConfig, EngineConfig))
    saved = None
    if explicit.get("resume"):
        saved = load_training_checkpoint(explicit["resume"]).get("config")
        if not saved or saved.get("recipe") is None:
            raise ValueError(f"'{explicit['resume']}' holds no classification training configuration to resume")
        changed = sorted(k for k in explicit if k != "resume" and saved.get(k) != explicit[k])
        if changed:
            print(f"resuming with changed settings: {', '.join(changed)}", file=sys.stderr)
        if "output" not in explicit:
            # A resumed run writes where its checkpoint lives (a copied run folder continues in the copy), not into
            # the folder saved in its configuration, which may be another run's now.
            explicit["output"] = str(Path(explicit["resume"]).parent)
    cfg = resolve_config(explicit, saved)
    result = run_training(cfg)
    summary = result.summary
    if result.status == "interrupted":
        return result.exit_code
    if summary.get("final_top1") is not None and summary.get("dataset") == "fashion-mnist" and \
            cfg.task.recipe == "demo":
        print(f"\nFashion-MNIST test accuracy: {summary['final_top1']:.2f}% (curves: {summary['curves']}). Try:\n"
              f"    vimamba predict --checkpoint {summary['checkpoint']} IMAGE.png")
    return 0


# ---------------------------------------------------------------------------------------------------- eval / predict
def _load_for_inference(args):
    from ..engine.distributed import init_distributed
    from .models import load_classifier

    dist_info = init_distributed(args.device)
    loaded = load_classifier(args.checkpoint, weights=args.weights, trust_pickle=args.trust_checkpoint)
    pre = loaded.preprocessing.with_size(args.img_size)
    if args.crop_pct is not None:
        from ..data.transforms import Preprocessing

        pre = Preprocessing(**{**pre.to_dict(), "img_size": tuple(pre.img_size), "crop_pct": args.crop_pct})
    return dist_info, loaded, pre


def _load_onnx_for_inference(args):
    """Like :func:`_load_for_inference` for ``--onnx``: onnxruntime on the CPU, the model's stored preprocessing."""
    from ..export.runtime import load_onnx_classifier
    from ..engine.distributed import init_distributed

    if args.weights != "auto" or args.trust_checkpoint:
        raise ValueError("--weights and --trust-checkpoint apply to --checkpoint, not to --onnx")
    loaded = load_onnx_classifier(args.onnx)
    pre = loaded.preprocessing.with_size(args.img_size)
    if args.crop_pct is not None:
        from ..data.transforms import Preprocessing

        pre = Preprocessing(**{**pre.to_dict(), "img_size": tuple(pre.img_size), "crop_pct": args.crop_pct})
    loaded.model.metadata.check_size(*pre.img_size)
    return init_distributed("cpu"), loaded, pre


def _eval(args) -> int:
    from ..engine.distributed import cleanup_distributed, print_once
    from .inference import evaluate_classifier

    if args.data is None and args.dataset is None:
        raise ValueError("pass --data DIR (an image folder) or --dataset NAME")
    dist_info, loaded, pre = _load_for_inference(args)
    try:
        metrics = evaluate_classifier(loaded, dataset=args.dataset, data=args.data, preprocessing=pre,
                                      batch_size=args.batch_size, workers=args.workers, dist_info=dist_info,
                                      amp=args.amp, strict=args.strict_data)
    finally:
        cleanup_distributed()
    metrics.update(checkpoint=loaded.description, preprocessing=pre.to_dict())
    if args.json:
        print_once(json.dumps(metrics, indent=2))
        return 0
    print_once(f"{loaded.description} on {metrics['dataset']}, {metrics['count']:,} images at "
               f"{pre.img_size[0]}x{pre.img_size[1]} (resize {pre.interpolation} / crop {pre.crop_pct:g}):")
    print_once(f"top-1 {metrics['top1']:.3f}%   top-5 {metrics['top5']:.3f}%   loss {metrics['loss']:.4f}")
    if metrics["skipped"]:
        print_once(f"warning: {metrics['skipped']} unreadable image(s) skipped (named above)")
    return 0


def _predict(args) -> int:
    from .inference import predict_images

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.onnx:
        dist_info, loaded, pre = _load_onnx_for_inference(args)
    else:
        dist_info, loaded, pre = _load_for_inference(args)
    results = predict_images(loaded, args.images, preprocessing=pre, top_k=args.top_k, device=dist_info.device)
    if args.json:
        print(json.dumps([{"image": r.path, "top": [{"class": c, "probability": p} for c, p in r.top],
                           **({"error": r.error} if r.error else {})} for r in results], indent=2))
    else:
        for r in results:
            if r.error:
                print(f"{r.path}: cannot read: {r.error}", file=sys.stderr)
                continue
            print(f"{r.path}:")
            for name, prob in r.top:
                print(f"  {100 * prob:6.2f}%  {name}")
    return 1 if any(r.error for r in results) else 0
