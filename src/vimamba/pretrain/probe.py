"""Evaluation of frozen features: k-NN and linear probing, for pretrained, fine-tuned and random models alike.

A *feature model* maps a batch of images to one vector per image:

* a pretraining checkpoint: by default the objective's own encoder as it was trained (AR: forward-only over the
  clusters in cluster-major order; MAE: the Vim on all patches), mean of the patch tokens; with
  ``as_classifier=True`` the bidirectional classifier :func:`~.transfer.classifier_from_pretraining` builds
  (what fine-tuning starts from);
* a classification checkpoint (``vimamba train`` output, exported weights, official ``.pth``): its features before
  the head, the mean of the patch tokens or the class token (``pool``); timm models: their pre-logits;
* ``random:MODEL`` (e.g. ``random:vim_tiny_patch16_224`` with size overrides): a freshly initialised Vim, the
  baseline every pretrained number needs.

The linear probe (MAE's head): ``BatchNorm1d(affine=False, eps=1e-6)`` then ``Linear`` (weights N(0, 0.01), zero
bias) on the frozen features, trained with AdamW and a cosine schedule on features computed once. This departs
from MAE's protocol (LARS, 90 epochs, random-resized-crop augmentation on every pass) to stay cheap: the numbers
are comparable between models here, not with published linear-probe results.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from ..data.datasets import open_split, resolve_dataset
from ..data.images import collate_skipping_unreadable
from ..data.transforms import Preprocessing, build_eval_transform
from ..errors import InputError, MissingFileError
from ..models.pos_embed import remove_cls_token
from .knn import knn_accuracy

__all__ = ["FeatureModel", "load_feature_model", "compute_features", "train_linear_probe", "run_probe",
           "RANDOM_PREFIX"]

PathLike = Union[str, os.PathLike]
RANDOM_PREFIX = "random:"


@dataclass
class FeatureModel:
    """Images -> (B, D) features, with the preprocessing its inputs need (None: the dataset's native one)."""

    extract: Callable[[torch.Tensor], torch.Tensor]
    module: nn.Module
    preprocessing: Optional[Preprocessing]
    description: str
    img_size: Optional[Tuple[int, int]] = None
    in_chans: Optional[int] = None


def _classifier_features(model: nn.Module, pool: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from ..models.vim import VisionMamba

    if isinstance(model, VisionMamba):
        def extract(images: torch.Tensor) -> torch.Tensor:
            tokens = model.forward_features(images)
            return remove_cls_token(tokens).mean(dim=1) if pool == "avg" else tokens[:, (tokens.shape[1] - 1) // 2]
        return extract

    def extract_timm(images: torch.Tensor) -> torch.Tensor:
        return model.forward_head(model.forward_features(images), pre_logits=True)
    return extract_timm


def load_feature_model(checkpoint: str, *, pool: str = "avg", as_classifier: bool = False,
                       overrides: Optional[Dict[str, Any]] = None, trust_pickle: bool = False) -> FeatureModel:
    """A :class:`FeatureModel` for ``random:NAME``, a pretraining checkpoint, or any classifier checkpoint."""
    from ..models.registry import create_model
    from ..models.vim import VisionMamba
    from ..checkpoints.format import load_checkpoint_file
    from .transfer import (classifier_from_pretraining, is_pretraining_checkpoint, objective_from_pretraining,
                           read_pretraining_checkpoint)

    if pool not in ("avg", "token"):
        raise InputError(f"pool must be 'avg' or 'token', got {pool!r}")
    overrides = dict(overrides or {})
    if checkpoint.startswith(RANDOM_PREFIX):
        name = checkpoint[len(RANDOM_PREFIX):]
        if "patch_size" in overrides and "stride" not in overrides:
            overrides["stride"] = overrides["patch_size"]
        model = create_model(name, num_classes=0, **overrides)
        # the data's native size unless an image size is given (the position embedding is resized to any grid)
        return FeatureModel(_classifier_features(model, pool), model, None, f"random {name} {overrides or ''}".strip(),
                            img_size=tuple(model.cfg.img_size) if "img_size" in overrides else None,
                            in_chans=model.cfg.in_chans)

    path = Path(checkpoint)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: '{path}' (for a randomly initialised model pass "
                                f"{RANDOM_PREFIX}MODEL_NAME)")
    obj = load_checkpoint_file(path, trust_pickle=trust_pickle) if path.suffix != ".safetensors" else None
    if is_pretraining_checkpoint(obj):
        ckpt = read_pretraining_checkpoint(obj, where=f"'{path}'")
        pre = Preprocessing.from_dict(ckpt.preprocessing) if ckpt.preprocessing else None
        if as_classifier:
            model, report = classifier_from_pretraining(ckpt, num_classes=0, **overrides)
            return FeatureModel(_classifier_features(model, pool), model, pre,
                                f"'{path}' ({ckpt.objective} pretraining, as a bidirectional classifier)",
                                img_size=tuple(model.cfg.img_size), in_chans=model.cfg.in_chans)
        if overrides:
            raise InputError("size overrides apply to random models and --as-classifier only")
        objective = objective_from_pretraining(ckpt)
        cfg = objective.encoder.cfg
        return FeatureModel(lambda images: objective.extract_features(images, pool), objective, pre,
                            f"'{path}' ({ckpt.objective} pretraining, its own encoder)",
                            img_size=tuple(cfg.img_size), in_chans=cfg.in_chans)

    if as_classifier:
        raise InputError("--as-classifier applies to pretraining checkpoints only")
    from ..train.models import load_classifier

    loaded = load_classifier(path, trust_pickle=trust_pickle)
    model = loaded.model
    if isinstance(model, VisionMamba):
        model.reset_classifier(0)
    cfg = getattr(model, "cfg", None)
    return FeatureModel(_classifier_features(model, pool), model, loaded.preprocessing, loaded.description,
                        img_size=tuple(cfg.img_size) if cfg is not None else None,
                        in_chans=cfg.in_chans if cfg is not None else None)


@torch.no_grad()
def compute_features(feature_model: FeatureModel, loader: DataLoader, device: torch.device
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float32 features and (N,) labels of every image the loader yields (model in eval mode)."""
    module = feature_model.module.to(device).eval()
    feats, labels = [], []
    for batch in loader:
        images, targets = batch[0], batch[1]
        feats.append(feature_model.extract(images.to(device)).float().cpu())
        labels.append(targets.long())
    del module
    if not feats:
        raise InputError("the dataset yielded no images")
    return torch.cat(feats), torch.cat(labels)


def train_linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                       test_labels: torch.Tensor, *, num_classes: int, epochs: int = 30, lr: float = 1e-3,
                       batch_size: int = 256, weight_decay: float = 0.0, seed: int = 0) -> Dict[str, float]:
    """Train BatchNorm(affine=False) + Linear on frozen features; top-1 (%) on the training and test features."""
    generator = torch.Generator().manual_seed(seed)
    dim = train_features.shape[1]
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    with torch.no_grad():
        head[1].weight.normal_(0.0, 0.01, generator=generator)
        head[1].bias.zero_()
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    n = train_features.shape[0]
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    loss_fn = nn.CrossEntropyLoss()
    head.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if idx.numel() < 2:  # BatchNorm needs two samples in training mode
                continue
            loss = loss_fn(head(train_features[idx]), train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    head.eval()
    with torch.no_grad():
        train_acc = (head(train_features).argmax(1) == train_labels).float().mean().item() * 100
        test_acc = (head(test_features).argmax(1) == test_labels).float().mean().item() * 100
    return {"train_top1": train_acc, "top1": test_acc}


def _subset(dataset, limit: Optional[int], seed: int):
    if limit is None or limit >= len(dataset):
        return dataset
    if limit < 1:
        raise InputError(f"a subset limit must be >= 1, got {limit}")
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit]
    return Subset(dataset, indices.sort().values.tolist())


def run_probe(feature_model: FeatureModel, *, dataset: Optional[str] = None, data: Optional[PathLike] = None,
              method: str = "knn", k: int = 20, temperature: float = 0.07, vote: str = "weighted",
              epochs: int = 30, lr: float = 1e-3, batch_size: int = 256, workers: int = 0,
              train_limit: Optional[int] = None, val_limit: Optional[int] = None, img_size: Optional[int] = None,
              device: Union[str, torch.device] = "cpu", seed: int = 0, log: Callable[[str], None] = print
              ) -> Dict[str, Any]:
    """Features of the training split (the k-NN bank / probe training set) and of the validation split, then the
    k-NN or linear-probe top-1 on the validation split."""
    if method not in ("knn", "linear"):
        raise InputError(f"method must be 'knn' or 'linear', got {method!r}")
    spec = resolve_dataset(dataset, data)
    pre = feature_model.preprocessing
    if pre is None:
        native = spec.preprocessing
        size = feature_model.img_size or native.img_size
        pre = replace(native, img_size=tuple(size))
    pre = pre.with_size(img_size)
    in_chans = feature_model.in_chans or pre.in_chans
    if in_chans != pre.in_chans:
        if pre.in_chans == 1 or in_chans == 1:
            mean, std = sum(pre.mean) / len(pre.mean), sum(pre.std) / len(pre.std)
            pre = Preprocessing(**{**pre.to_dict(), "img_size": tuple(pre.img_size), "in_chans": in_chans,
                                   "mean": (mean,) * in_chans, "std": (std,) * in_chans})
        else:
            raise InputError(f"the model takes {in_chans}-channel images, the data has {pre.in_chans} channels")
    transform = build_eval_transform(pre)
    device = torch.device(device)
    results: Dict[str, Any] = {"model": feature_model.description, "dataset": spec.describe(), "method": method,
                               "img_size": list(pre.img_size)}
    splits = {}
    for split, limit in (("train", train_limit), ("val", val_limit)):
        ds = _subset(open_split(spec, split, transform, in_chans=in_chans), limit, seed)
        loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_skipping_unreadable)
        log(f"features of {len(ds):,} {split} images ...")
        splits[split] = compute_features(feature_model, loader, device)
        results[f"{split}_count"] = len(ds)
    (train_x, train_y), (val_x, val_y) = splits["train"], splits["val"]
    results["feature_dim"] = int(train_x.shape[1])
    if method == "knn":
        results.update(k=k, temperature=temperature, vote=vote,
                       top1=knn_accuracy(train_x, train_y, val_x, val_y, num_classes=spec.num_classes, k=k,
                                         temperature=temperature, vote=vote))
    else:
        results.update(epochs=epochs, lr=lr, **train_linear_probe(train_x, train_y, val_x, val_y,
                                                                  num_classes=spec.num_classes, epochs=epochs,
                                                                  lr=lr, batch_size=batch_size, seed=seed))
    return results
