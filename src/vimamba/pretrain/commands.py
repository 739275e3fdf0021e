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
import textwrap
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional, Tuple

from ..cli_args import image_size, non_negative_int, parse_settings, positive_float, positive_int
from ..command_options import (GROUP_TITLES, batch_size_option, checkpoint_option, dataset_option, device_option,
                               json_option, trust_checkpoint_option, workers_option)
from ..engine.config import add_config_flags, command_config, option
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
    from ..engine.config import EngineConfig, show_value
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
        description=textwrap.fill(
            "Evaluate frozen features: k-NN (k=20, cosine, DINO's exp(sim/T) weighted vote) or a linear probe "
            "(BatchNorm without affine + Linear, trained on features computed once). Works for pretraining "
            "checkpoints (vimamba pretrain), classifiers (vimamba train, exported or official weights) and "
            "random:MODEL_NAME (a freshly initialised Vim, with --override for its size).", 100),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  vimamba probe --checkpoint runs/pretrain-ar/last.pth --dataset fashion-mnist --method knn\n"
               "  vimamba probe --checkpoint random:vim_tiny_patch16_224 --dataset fashion-mnist "
               "--override patch_size=4 embed_dim=96 depth=6 img_size=32 in_chans=1 --method linear")
    add_config_flags(p, [ProbeConfig], group_titles={**GROUP_TITLES, "probe": "probe"})
    p.set_defaults(func=_probe)


@dataclass
class ProbeConfig:
    """``vimamba probe``."""

    checkpoint: Optional[str] = checkpoint_option("a pretraining or classification checkpoint, or random:MODEL_NAME")
    trust_checkpoint: bool = trust_checkpoint_option()
    as_classifier: bool = option(False, "pretraining checkpoint: probe the bidirectional classifier built from it "
                                 "(what fine-tuning starts from) instead of the encoder as pretrained", "checkpoint")
    override: Tuple[str, ...] = option((), "model fields for random: models and --as-classifier (embed_dim=96 depth=6 "
                                       "patch_size=4 ...)", "checkpoint", metavar="KEY=VALUE")
    data: Optional[str] = option(None, "image folder DIR/train/<class>/* and DIR/val/<class>/*", "data",
                                 metavar="DIR")
    dataset: Optional[str] = dataset_option()
    img_size: Optional[int] = option(None, "probe at this resolution (default: the model's)", "data", metavar="S",
                                     check=image_size)
    train_limit: Optional[int] = option(None, "use a random subset of N training images (default: all)", "data",
                                        metavar="N", check=positive_int)
    val_limit: Optional[int] = option(None, "use a random subset of N validation images (default: all)", "data",
                                      metavar="N", check=positive_int)
    method: str = option("knn", "k-NN or linear probe", "probe", choices=("knn", "linear"))
    pool: str = option("avg", "feature: mean of the patch tokens, or the class token (not for AR pretraining)",
                       "probe", choices=("avg", "token"))
    k: int = option(20, "k-NN: neighbours", "probe", check=positive_int)
    temperature: float = option(0.07, "k-NN: vote weight exp(similarity / T)", "probe", metavar="T",
                                check=positive_float)
    vote: str = option("weighted", "k-NN: DINO's temperature-weighted vote or a plain majority", "probe",
                       choices=("weighted", "majority"))
    epochs: int = option(30, "linear probe: epochs over the cached features", "probe", check=positive_int)
    lr: float = option(1e-3, "linear probe: AdamW peak learning rate (cosine decay)", "probe", check=positive_float)
    seed: int = option(0, "seed of the subsets and the linear probe", "probe", check=non_negative_int)
    device: str = device_option()
    batch_size: int = batch_size_option(256)
    workers: int = workers_option(0)
    json: bool = json_option("the result")

    def check(self) -> None:
        if self.data is None and self.dataset is None:
            raise InputError("pass --data DIR (an image folder) or --dataset NAME")


def _probe(args) -> int:
    import torch

    from .probe import load_feature_model, run_probe

    cfg = command_config(args, ProbeConfig)
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    feature_model = load_feature_model(cfg.checkpoint, pool=cfg.pool, as_classifier=cfg.as_classifier,
                                       overrides=parse_settings(cfg.override, "--override"),
                                       trust_pickle=cfg.trust_checkpoint)
    log = (lambda message: print(message, file=sys.stderr, flush=True))
    result = run_probe(feature_model, dataset=cfg.dataset, data=cfg.data, method=cfg.method, k=cfg.k,
                       temperature=cfg.temperature, vote=cfg.vote, epochs=cfg.epochs, lr=cfg.lr,
                       batch_size=cfg.batch_size, workers=cfg.workers, train_limit=cfg.train_limit,
                       val_limit=cfg.val_limit, img_size=cfg.img_size, device=device, seed=cfg.seed, log=log)
    if cfg.json:
        print(json.dumps(result, indent=2))
        return 0
    what = (f"k-NN (k={result['k']}, {result['vote']} vote, T={result['temperature']:g})" if cfg.method == "knn"
            else f"linear probe ({result['epochs']} epochs)")
    print(f"{result['model']} on {result['dataset']}: {what} top-1 {result['top1']:.2f}% "
          f"({result['train_count']:,} train / {result['val_count']:,} val images, {result['feature_dim']}-d features)")
    return 0
