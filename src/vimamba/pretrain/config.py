"""The configuration of a pretraining run: one dataclass per objective, MAE's recipe by default.

Every field carries its help text, group and flag name in its metadata, the convention of
:class:`vimamba.train.config.TrainConfig`, so a ``vimamba pretrain`` parser can be generated from these classes the
way ``vimamba train``'s is. Defaults are MAE's pretraining recipe (facebookresearch/mae ``PRETRAIN.md`` /
``main_pretrain.py``), which ARM also uses, except where a field says otherwise:

* AdamW, betas (0.9, 0.95), weight decay 0.05 (none on biases, norms, position embeddings, class/mask tokens);
* ``lr = blr * global_batch / 256`` with ``blr = 1.5e-4`` (note: per **256** images, where ``vimamba train``'s rates
  are per 512), linear warm-up then cosine decay to ``min_lr``, stepped every iteration;
* RandomResizedCrop(scale 0.2-1, bicubic) + horizontal flip, nothing else (no colour jitter, RandAugment, mixup).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Optional, Tuple, Type, Union

import torch.nn as nn

from ..models.vim import VimConfig

__all__ = ["PretrainConfig", "ARConfig", "MAEConfig", "OBJECTIVES", "config_for", "build_objective",
           "effective_lr", "build_pretrain_transform", "LR_REFERENCE_BATCH"]

LR_REFERENCE_BATCH = 256  # MAE's linear scaling rule: lr = blr * global batch / 256


def _f(default: Any, help: str, group: str, flag: Optional[str] = None, choices=None, metavar=None):
    return field(default=default, metadata=dict(help=help, group=group, flag=flag, choices=choices, metavar=metavar))


@dataclass
class PretrainConfig:
    """What every objective shares: data, schedule, optimiser, augmentation and run fields."""

    # --------------------------------------------------------------------------------------------- data
    data: Optional[str] = _f(None, "unlabelled images: any folder of images (nested folders allowed, labels "
                             "ignored), an ImageNet-layout folder, or with --dataset where that dataset lives",
                             "data", metavar="DIR")
    dataset: Optional[str] = _f(None, "a named dataset instead of a folder (its training split, labels ignored)",
                                "data", choices=("fashion-mnist", "cifar10", "imagenet"))
    workers: int = _f(4, "data-loading worker processes per training process", "data")
    # --------------------------------------------------------------------------------------------- schedule
    epochs: int = _f(800, "pretraining epochs (MAE's example run; the released MAE/ARM models use 1600)", "schedule")
    batch_size: int = _f(64, "images per process per step (global batch = this x processes x --accum-steps; MAE "
                         "used 4096 globally)", "schedule", metavar="B")
    accum_steps: int = _f(1, "gradient accumulation: micro-batches per optimiser step", "schedule")
    blr: float = _f(1.5e-4, "base learning rate per 256 images: lr = blr x global batch / 256 (MAE)", "schedule")
    lr: Optional[float] = _f(None, "absolute peak learning rate (overrides --blr and the batch scaling)",
                             "schedule")
    min_lr: float = _f(0.0, "final learning rate of the cosine decay (MAE: 0)", "schedule")
    warmup_epochs: float = _f(40.0, "linear warm-up from 0 in epochs, stepped per iteration (MAE: 40)", "schedule")
    # --------------------------------------------------------------------------------------------- optimiser
    opt_betas: Tuple[float, float] = _f((0.9, 0.95), "AdamW betas (MAE: 0.9 0.95)", "optimizer")
    weight_decay: float = _f(0.05, "AdamW weight decay; never on biases, norms, D, position embeddings and "
                             "class/mask/AR tokens (MAE: 0.05)", "optimizer")
    clip_grad: Optional[float] = _f(None, "clip the global gradient norm (MAE: off; ARM: 3.0)", "optimizer")
    # --------------------------------------------------------------------------------------------- augmentation
    scale: Tuple[float, float] = _f((0.2, 1.0), "random-resized-crop area range (MAE: 0.2 1)", "augmentation")
    ratio: Tuple[float, float] = _f((3 / 4, 4 / 3), "random-resized-crop aspect-ratio range", "augmentation")
    hflip: float = _f(0.5, "horizontal flip probability", "augmentation")
    interpolation: str = _f("bicubic", "resize interpolation of the crops (MAE: bicubic)", "augmentation",
                            choices=("bicubic", "bilinear", "nearest"))
    # --------------------------------------------------------------------------------------------- model
    model: str = _f("vim_tiny_patch16_224", "the Vim to pretrain (`vimamba models`); size flags override it",
                    "model", metavar="NAME")
    img_size: Optional[int] = _f(None, "pretraining resolution (default: the dataset's native size)", "model")
    patch_size: Optional[int] = _f(None, "patch size = stride (default: the model's)", "model")
    embed_dim: Optional[int] = _f(None, "embedding width (default: the model's)", "model")
    depth: Optional[int] = _f(None, "number of blocks (default: the model's)", "model")
    d_state: Optional[int] = _f(None, "SSM state size N (default: the model's)", "model")
    drop_path: float = _f(0.0, "stochastic depth in the encoder while pretraining (MAE: 0)", "model")
    decoder_dim: int = _f(512, "decoder width (MAE/ARM: 512; the Fashion-MNIST proof uses 64)", "model")
    decoder_depth: int = _f(4, "decoder blocks (ARM: 4, MAE: 8; the Fashion-MNIST proof uses 2)", "model")
    decoder_heads: int = _f(16, "decoder attention heads (MAE: 16, ARM: 8)", "model")
    # --------------------------------------------------------------------------------------------- run
    output: str = _f("runs/pretrain", "output directory (checkpoints, reconstructions.png, metrics)", "run",
                     metavar="DIR")
    vis_every: int = _f(1, "write the reconstruction grid every N epochs (and at the end)", "run")
    vis_images: int = _f(8, "test images in the reconstruction grid", "run")
    seed: int = _f(0, "random seed", "run")

    objective = "base"

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["objective"] = self.objective
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def objective_kwargs(self) -> Dict[str, Any]:
        raise NotImplementedError


@dataclass
class ARConfig(PretrainConfig):
    """Autoregressive next-cluster prediction (ARM)."""

    cluster_size: int = _f(4, "clusters of k x k patches (ARM: 4, i.e. 64x64 px at patch 16; the image's patch grid "
                           "must be a multiple of k)", "objective", metavar="K")
    decoder_heads: int = _f(8, "decoder attention heads (ARM: 8)", "model")
    clip_grad: Optional[float] = _f(3.0, "clip the global gradient norm (ARM: 3.0)", "optimizer")

    objective = "ar"

    def objective_kwargs(self) -> Dict[str, Any]:
        return dict(cluster_size=self.cluster_size, decoder_dim=self.decoder_dim, decoder_depth=self.decoder_depth,
                    decoder_heads=self.decoder_heads)


@dataclass
class MAEConfig(PretrainConfig):
    """Masked autoencoding with the kept patches in raster order."""

    mask_ratio: float = _f(0.75, "fraction of patches dropped at random per image (MAE: 0.75)", "objective")
    decoder_depth: int = _f(8, "decoder blocks (MAE: 8)", "model")

    objective = "mae"

    def objective_kwargs(self) -> Dict[str, Any]:
        return dict(mask_ratio=self.mask_ratio, decoder_dim=self.decoder_dim, decoder_depth=self.decoder_depth,
                    decoder_heads=self.decoder_heads)


OBJECTIVES: Dict[str, Type[PretrainConfig]] = {"ar": ARConfig, "mae": MAEConfig}


def config_for(objective: str, **values: Any) -> PretrainConfig:
    """The config dataclass of an objective with fields set (unknown fields are an error naming them)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown pretraining objective {objective!r}; choose one of {sorted(OBJECTIVES)}")
    cls = OBJECTIVES[objective]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {objective} pretraining options {unknown}")
    for key in ("scale", "ratio", "opt_betas"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    return cls(**values)


def build_objective(encoder_cfg: VimConfig, cfg: Union[PretrainConfig, str], **objective_kwargs: Any) -> nn.Module:
    """The objective module for an encoder architecture: ``cfg`` is a config, or an objective name with kwargs."""
    from .ar import ARObjective
    from .mae import MAEObjective

    if isinstance(cfg, str):
        name, kwargs = cfg, objective_kwargs
    else:
        name, kwargs = cfg.objective, {**cfg.objective_kwargs(), **objective_kwargs}
    if name == "ar":
        return ARObjective(encoder_cfg, **kwargs)
    if name == "mae":
        return MAEObjective(encoder_cfg, **kwargs)
    raise ValueError(f"unknown pretraining objective {name!r}; choose one of {sorted(OBJECTIVES)}")


def effective_lr(cfg: PretrainConfig, global_batch: int) -> float:
    """The peak learning rate: ``--lr`` if given, else ``blr * global_batch / 256``."""
    if cfg.lr is not None:
        return cfg.lr
    return cfg.blr * global_batch / LR_REFERENCE_BATCH


def build_pretrain_transform(cfg: PretrainConfig, preprocessing):
    """MAE's training transform: RandomResizedCrop + horizontal flip, to tensor, normalise (timm)."""
    from timm.data import create_transform

    return create_transform(preprocessing.img_size, is_training=True, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
                            hflip=cfg.hflip, vflip=0.0, color_jitter=None, auto_augment=None,
                            interpolation=cfg.interpolation, mean=preprocessing.mean, std=preprocessing.std,
                            re_prob=0.0)
