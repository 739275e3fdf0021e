"""Pretraining subcommands: ``vimamba pretrain`` (a task of the training engine) and ``vimamba probe`` (k-NN /
linear probe of frozen features).

``vimamba pretrain``'s flags are generated from the objectives' configs and the engine's
(:func:`vimamba.engine.config.add_config_flags`): one flag per field, the defaults shown being the objective's (MAE's
recipe for the engine's fields, :attr:`~.config.PretrainConfig.ENGINE_DEFAULTS`).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any, Dict

from ..cli_args import image_size, non_negative_int, parse_settings, positive_float, positive_int
from ..errors import InputError


# ---------------------------------------------------------------------------------------------------- pretrain
def _objective_defaults(objective: str) -> Dict[str, Any]:
    """Every flag's default for one objective: the engine's fields with the pretraining recipe, and the objective's."""
    from ..engine.config import EngineConfig, field_defaults
    from .config import OBJECTIVES

    cls = OBJECTIVES[objective]
    return {**field_defaults(EngineConfig), **cls.ENGINE_DEFAULTS, **field_defaults(cls)}


def _shown_defaults() -> Dict[str, Any]:
    """The default each flag's help shows: the value, or "ar X, mae Y" where the objectives differ."""
    from ..engine.config import show_value
    from .config import OBJECTIVES

    per_objective = {name: _objective_defaults(name) for name in OBJECTIVES}
    shown: Dict[str, Any] = {}
    for field_name in {k for defaults in per_objective.values() for k in defaults}:
        values = {name: defaults[field_name] for name, defaults in per_objective.items() if field_name in defaults}
        if len({show_value(v) for v in values.values()}) == 1:
            shown[field_name] = next(iter(values.values()))
        else:
            shown[field_name] = ", ".join(f"{name} {show_value(v)}" for name, v in values.items())
    return shown


def _register_pretrain(subparsers) -> None:
    from ..engine.config import EngineConfig, add_config_flags, show_value
    from .config import OBJECTIVES, PretrainConfig

    p = subparsers.add_parser(
        "pretrain", help="self-supervised pretraining of a Vim on unlabelled images (ar or mae)",
        description="Pretrain a Vim encoder without labels: --objective ar (ARM: a forward-only Vim predicts the next "
                    "cluster of patches) or mae (masked autoencoding, the kept patches in raster order). Any folder "
                    "of images (nested folders allowed, labels ignored), an ImageNet-layout folder or a named dataset. "
                    "The run folder holds last.pth / best.pth (lowest held-out loss), metrics.jsonl, curves.png, "
                    "summary.json and reconstructions/step_N.png; fine-tune with `vimamba train --init "
                    "OUT/last.pth`, probe with `vimamba probe --checkpoint OUT/last.pth`. Defaults: MAE's recipe.",
        epilog="examples:\n"
               "  vimamba pretrain --data ~/photos --objective mae --img-size 192 --output runs/mae\n"
               "  vimamba pretrain --dataset fashion-mnist --objective ar --img-size 32 --patch-size 4 "
               "--cluster-size 2 --embed-dim 96 --depth 6 --decoder-dim 64 --decoder-depth 2 --output runs/ar\n"
               "  vimamba pretrain --resume runs/ar/last.pth",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objective", choices=sorted(OBJECTIVES), default=argparse.SUPPRESS,
                   help="ar: next-cluster prediction (ARM); mae: masked autoencoding (required unless --resume)")
    shown = _shown_defaults()
    titles = {"data": "data and held-out images", "model": "encoder", "objective": "decoder",
              "augmentation": "augmentation (MAE's)", "ar": "--objective ar (next-cluster prediction, ARM)",
              "mae": "--objective mae (masked autoencoding)"}
    add_config_flags(p, [PretrainConfig], defaults=shown, group_titles=titles)
    shared = [f.name for f in fields(PretrainConfig)]
    for cls in OBJECTIVES.values():  # each objective's own fields, in a section of their own
        add_config_flags(p, [cls], defaults=shown, group_titles=titles, skip=shared)
    # an engine help text that states its own default ("default: off") would hide the pretraining one: say it
    restated = {f.name: f"pretraining default: {show_value(shown[f.name])}" for f in fields(EngineConfig)
                if "default:" in f.metadata.get("help", "") and show_value(shown[f.name]) != show_value(f.default)}
    add_config_flags(p, [EngineConfig], defaults=shown, notes=restated)
    p.set_defaults(func=_pretrain)


def _pretrain(args) -> int:
    from ..engine.checkpointing import load_training_checkpoint
    from ..engine.config import EngineConfig, explicit_values
    from ..engine.loop import run
    from .config import OBJECTIVES, pretrain_configs
    from .training import PretrainTask

    explicit = explicit_values(args, [EngineConfig, *OBJECTIVES.values()])
    objective = getattr(args, "objective", None)
    values: Dict[str, Any] = {}
    if explicit.get("resume"):
        saved = load_training_checkpoint(explicit["resume"]).get("config") or {}
        saved_objective = saved.get("objective")
        if saved_objective not in OBJECTIVES:
            raise InputError(f"'{explicit['resume']}' is not a pretraining run (no objective in its configuration); "
                             "resume it with the command that started it")
        if objective is not None and objective != saved_objective:
            raise InputError(f"'{explicit['resume']}' is a {saved_objective} pretraining run; it cannot continue as "
                             f"--objective {objective}")
        objective = saved_objective
        known = {f.name for cls in (EngineConfig, OBJECTIVES[objective]) for f in fields(cls)}
        values = {k: v for k, v in saved.items() if k in known and k not in ("resume", "output", "overwrite")}
    if objective is None:
        raise InputError("pass --objective ar (next-cluster prediction) or --objective mae (masked autoencoding)")
    task_cfg, engine_cfg = pretrain_configs(objective, {**values, **explicit})
    engine_cfg.check()
    result = run(PretrainTask(task_cfg, seed=engine_cfg.seed), engine_cfg)
    return result.exit_code


# ---------------------------------------------------------------------------------------------------- probe
def register(subparsers) -> None:
    _register_pretrain(subparsers)
    _register_probe(subparsers)


def _register_probe(subparsers) -> None:
    p = subparsers.add_parser(
        "probe", help="k-NN / linear-probe accuracy of a model's frozen features",
        description="Evaluate frozen features: k-NN (k=20, cosine, DINO's exp(sim/T) weighted vote) or a linear probe "
                    "(BatchNorm without affine + Linear, trained on features computed once). Works for pretraining "
                    "checkpoints (vimamba pretrain), classifiers (vimamba train, exported or official weights) and "
                    "random:MODEL_NAME (a freshly initialised Vim, with --override for its size).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="examples:\n"
               "  vimamba probe --checkpoint runs/pretrain-ar/last.pth --dataset fashion-mnist --method knn\n"
               "  vimamba probe --checkpoint random:vim_tiny_patch16_224 --dataset fashion-mnist "
               "--override patch_size=4 embed_dim=96 depth=6 img_size=32 in_chans=1 --method linear")
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="a pretraining or classification checkpoint, or random:MODEL_NAME")
    p.add_argument("--data", default=None, metavar="DIR", help="image folder DIR/train/<class>/* and DIR/val/<class>/*")
    p.add_argument("--dataset", default=None, choices=("fashion-mnist", "cifar10", "imagenet"),
                   help="a named dataset instead (with --data: where it lives)")
    p.add_argument("--method", default="knn", choices=("knn", "linear"), help="k-NN or linear probe")
    p.add_argument("--k", type=positive_int, default=20, help="k-NN: neighbours")
    p.add_argument("--temperature", type=positive_float, default=0.07, help="k-NN: vote weight exp(similarity / T)")
    p.add_argument("--vote", default="weighted", choices=("weighted", "majority"),
                   help="k-NN: DINO's temperature-weighted vote or a plain majority")
    p.add_argument("--epochs", type=positive_int, default=30, help="linear probe: epochs over the cached features")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="linear probe: AdamW peak learning rate (cosine decay)")
    p.add_argument("--pool", default="avg", choices=("avg", "token"),
                   help="feature: mean of the patch tokens, or the class token (not for AR pretraining)")
    p.add_argument("--as-classifier", action="store_true",
                   help="pretraining checkpoint: probe the bidirectional classifier built from it (what fine-tuning "
                        "starts from) instead of the encoder as pretrained")
    p.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                   help="model fields for random: models and --as-classifier (embed_dim=96 depth=6 patch_size=4 ...)")
    p.add_argument("--img-size", type=image_size, default=None, metavar="S", help="probe at this resolution")
    p.add_argument("--train-limit", type=positive_int, default=None, help="use a random subset of N training images")
    p.add_argument("--val-limit", type=positive_int, default=None, help="use a random subset of N validation images")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch")
    p.add_argument("--workers", type=non_negative_int, default=0, help="data-loading worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the subsets and the linear probe")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow pickled Python objects in a .pth you trust")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_probe)


def _probe(args) -> int:
    import torch

    from .probe import load_feature_model, run_probe

    if args.data is None and args.dataset is None:
        raise InputError("pass --data DIR (an image folder) or --dataset NAME")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    feature_model = load_feature_model(args.checkpoint, pool=args.pool, as_classifier=args.as_classifier,
                                       overrides=parse_settings(args.override, "--override"),
                                       trust_pickle=args.trust_checkpoint)
    log = (lambda message: print(message, file=sys.stderr, flush=True))
    result = run_probe(feature_model, dataset=args.dataset, data=args.data, method=args.method, k=args.k,
                       temperature=args.temperature, vote=args.vote, epochs=args.epochs, lr=args.lr,
                       batch_size=args.batch_size, workers=args.workers, train_limit=args.train_limit,
                       val_limit=args.val_limit, img_size=args.img_size, device=device, seed=args.seed, log=log)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    what = (f"k-NN (k={result['k']}, {result['vote']} vote, T={result['temperature']:g})" if args.method == "knn"
            else f"linear probe ({result['epochs']} epochs)")
    print(f"{result['model']} on {result['dataset']}: {what} top-1 {result['top1']:.2f}% "
          f"({result['train_count']:,} train / {result['val_count']:,} val images, {result['feature_dim']}-d features)")
    return 0
