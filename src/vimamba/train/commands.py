"""Training subcommands: ``vimamba train``, ``vimamba eval``, ``vimamba predict``.

``vimamba train``'s flags are generated from :class:`~.config.TrainConfig` (one flag per field, its help, its
default and the recipes' defaults), so the command line, the config saved in checkpoints and the Python API
cannot drift apart.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from ..cli_args import image_size, positive_int, unit_interval_open
from ..command_options import (CLASSIFIER_CHECKPOINT, GROUP_TITLES, amp_option, batch_size_option, checkpoint_option,
                               dataset_option, device_option, json_option, trust_checkpoint_option, weights_option,
                               workers_option)
from ..engine.config import EngineConfig, add_config_flags, command_config, option, show_value
from ..errors import InputError
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
                              description="Top-1 / top-5 accuracy and loss of a classifier on a labelled image folder "
                                          "or a named dataset's test split; under torchrun the images are shared "
                                          "between the processes.")
    add_config_flags(p, [ClassifierEvalConfig], group_titles=GROUP_TITLES)
    p.set_defaults(func=_eval)

    p = subparsers.add_parser("predict", help="top-5 classes of image files",
                              description="The most likely classes of each image, from a checkpoint (--checkpoint) "
                                          "or an exported ONNX model (--onnx).")
    add_config_flags(p, [ClassifierPredictConfig], group_titles=GROUP_TITLES)
    p.set_defaults(func=_predict)


# -------------------------------------------------------------------------------------------- eval / predict flags
def _img_size_option():
    return option(None, "evaluate at this resolution (default: the checkpoint's; resize S / crop-pct, crop S)",
                  "data", metavar="S", check=image_size)


def _crop_pct_option():
    return option(None, "centre-crop fraction (default: the checkpoint's; 0.875 for the official models)", "data",
                  metavar="F", check=unit_interval_open)


@dataclass
class ClassifierEvalConfig:
    """``vimamba eval``."""

    checkpoint: Optional[str] = checkpoint_option()
    weights: str = weights_option()
    trust_checkpoint: bool = trust_checkpoint_option()
    data: Optional[str] = option(None, "image folder: DIR/val/<class>/* (ImageNet layout) or DIR/<class>/*", "data",
                                 metavar="DIR")
    dataset: Optional[str] = dataset_option()
    strict_data: bool = option(False, "stop on an unreadable image instead of skipping it", "data")
    img_size: Optional[int] = _img_size_option()
    crop_pct: Optional[float] = _crop_pct_option()
    device: str = device_option()
    batch_size: int = batch_size_option(128)
    workers: int = workers_option(4)
    amp: str = amp_option()
    json: bool = json_option()

    def check(self) -> None:
        if self.data is None and self.dataset is None:
            raise InputError("pass --data DIR (an image folder) or --dataset NAME")


@dataclass
class ClassifierPredictConfig:
    """``vimamba predict``."""

    checkpoint: Optional[str] = checkpoint_option(CLASSIFIER_CHECKPOINT + " (or --onnx)", required=False)
    onnx: Optional[str] = option(None, "an ONNX model written by `vimamba export` instead of --checkpoint (runs in "
                                 "onnxruntime on the CPU, with the preprocessing stored in it)", "checkpoint",
                                 metavar="MODEL")
    weights: str = weights_option()
    trust_checkpoint: bool = trust_checkpoint_option()
    images: Tuple[str, ...] = option((), "image files", "data", metavar="IMAGE", nargs="+", positional=True)
    img_size: Optional[int] = _img_size_option()
    crop_pct: Optional[float] = _crop_pct_option()
    device: str = device_option()
    top_k: int = option(5, "how many classes to show per image", "output", check=positive_int)
    json: bool = json_option("the predictions")

    def check(self) -> None:
        if (self.checkpoint is None) == (self.onnx is None):
            raise InputError("pass one model: --checkpoint CKPT or --onnx MODEL")
        if self.onnx is not None and (self.weights != "auto" or self.trust_checkpoint):
            raise InputError("--weights and --trust-checkpoint apply to --checkpoint, not to --onnx")


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
            raise InputError(f"'{explicit['resume']}' holds no classification training configuration to resume")
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
def _load_for_inference(cfg):
    from ..engine.distributed import init_distributed
    from .models import load_classifier

    dist_info = init_distributed(cfg.device)
    loaded = load_classifier(cfg.checkpoint, weights=cfg.weights, trust_pickle=cfg.trust_checkpoint)
    return dist_info, loaded, _preprocessing(loaded, cfg)


def _preprocessing(loaded, cfg):
    """The model's stored preprocessing with ``--img-size`` / ``--crop-pct`` applied."""
    pre = loaded.preprocessing.with_size(cfg.img_size)
    if cfg.crop_pct is None:
        return pre
    from ..data.transforms import Preprocessing

    return Preprocessing(**{**pre.to_dict(), "img_size": tuple(pre.img_size), "crop_pct": cfg.crop_pct})


def _load_onnx_for_inference(cfg):
    """Like :func:`_load_for_inference` for ``--onnx``: onnxruntime on the CPU, the model's stored preprocessing."""
    from ..export.runtime import load_onnx_classifier
    from ..engine.distributed import init_distributed

    loaded = load_onnx_classifier(cfg.onnx)
    pre = _preprocessing(loaded, cfg)
    loaded.model.metadata.check_size(*pre.img_size)
    return init_distributed("cpu"), loaded, pre


def _eval(args) -> int:
    from ..engine.distributed import cleanup_distributed, print_once
    from .inference import evaluate_classifier

    cfg = command_config(args, ClassifierEvalConfig)
    dist_info, loaded, pre = _load_for_inference(cfg)
    try:
        metrics = evaluate_classifier(loaded, dataset=cfg.dataset, data=cfg.data, preprocessing=pre,
                                      batch_size=cfg.batch_size, workers=cfg.workers, dist_info=dist_info,
                                      amp=cfg.amp, strict=cfg.strict_data)
    finally:
        cleanup_distributed()
    metrics.update(checkpoint=loaded.description, preprocessing=pre.to_dict())
    if cfg.json:
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

    cfg = command_config(args, ClassifierPredictConfig)
    if cfg.onnx:
        dist_info, loaded, pre = _load_onnx_for_inference(cfg)
    else:
        dist_info, loaded, pre = _load_for_inference(cfg)
    results = predict_images(loaded, list(cfg.images), preprocessing=pre, top_k=cfg.top_k, device=dist_info.device)
    if cfg.json:
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
