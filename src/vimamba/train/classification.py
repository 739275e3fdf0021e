"""Image classification as a task of the engine: ``vimamba train`` calls :func:`run_training`.

:class:`ClassificationTask` supplies what is specific to classification (DeiT's ``main.py`` / ``engine.py``): the
dataset (an image folder or a named dataset; rank 0 fetches it), the model (Vim or timm, with ``--finetune`` weights
or a ``--init`` pretraining checkpoint), Mixup/CutMix with soft-target or label-smoothed cross-entropy, and top-1 /
top-5 evaluation. The engine (:func:`vimamba.engine.loop.run`) does the rest. At the end the best weights are
exported as ``model.safetensors`` with their class names and preprocessing (Vim models).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.datasets import open_split, resolve_dataset
from ..data.images import collate_skipping_unreadable
from ..data.transforms import Augmentation, build_eval_transform, build_train_transform
from ..data.workers import DataLoadingError, describe_failure
from ..engine.config import EngineConfig
from ..engine.distributed import all_reduce_sums, barrier, is_main_process, print_once
from ..engine.loop import RunResult, run
from ..engine.precision import MixedPrecision
from ..engine.reporting import progress
from ..engine.task import StepOutput, Task
from ..errors import InputError
from .config import ClassificationConfig, TrainConfig
from .models import count_parameters, create_classifier, describe_model

__all__ = ["ClassificationTask", "run_training", "evaluate", "accuracy_counts"]


def _unpack(batch):
    """``(images, targets, skipped)`` from :func:`collate_skipping_unreadable` or a plain ``(images, targets)``."""
    if len(batch) == 3:
        return batch
    images, targets = batch
    return images, targets, 0


class ClassificationTask(Task):
    """A classifier trained with the DeiT/Vim recipe. ``criterion(logits, targets)`` replaces the recipe's loss
    (a hook for experiments and tests)."""

    name = "classification"
    best_metric = ("top1", "max")

    def __init__(self, cfg: ClassificationConfig, engine_cfg: EngineConfig,
                 criterion: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None):
        self.cfg, self.engine_cfg = cfg, engine_cfg
        self.custom_criterion = criterion
        self._spec = None
        self.model_spec: Optional[Dict[str, Any]] = None
        self.network: Optional[str] = None  # what was built, in words (set by describe)
        self.skipped_images = 0
        self._mixup_fn, self._criterion = None, None

    # ------------------------------------------------------------------------------------------ data
    @property
    def spec(self):
        """The dataset (resolved once; rank 0 fetches a named dataset, the others wait and then find it)."""
        if self._spec is None:
            cfg = self.cfg
            if is_main_process():
                self._spec = resolve_dataset(cfg.dataset, cfg.data)
            barrier()
            if not is_main_process():
                self._spec = resolve_dataset(cfg.dataset, cfg.data, download=False)
            self.preprocessing = self._spec.preprocessing.with_size(cfg.img_size)
        return self._spec

    def train_dataset(self):
        cfg, spec = self.cfg, self.spec
        aug = Augmentation(scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip, auto_augment=cfg.aa,
                           color_jitter=cfg.color_jitter, re_prob=cfg.reprob, re_mode=cfg.remode,
                           re_count=cfg.recount, interpolation=cfg.train_interpolation)
        return open_split(spec, "train", build_train_transform(self.preprocessing, aug),
                          in_chans=self.preprocessing.in_chans, strict=cfg.strict_data)

    def eval_dataset(self):
        return open_split(self.spec, "val", build_eval_transform(self.preprocessing),
                          in_chans=self.preprocessing.in_chans, strict=self.cfg.strict_data)

    def collate_fn(self):
        return collate_skipping_unreadable

    def repeated_augmentation(self) -> bool:
        return self.cfg.repeated_aug

    def eval_batch_size(self, train_batch_size: int) -> int:
        return max(1, int(1.5 * train_batch_size))

    # ------------------------------------------------------------------------------------------ model
    def build_model(self) -> nn.Module:
        cfg, spec = self.cfg, self.spec
        pre = self.preprocessing
        sizes = dict(patch_size=cfg.patch_size, stride=cfg.stride, embed_dim=cfg.embed_dim, depth=cfg.depth,
                     d_state=cfg.d_state)
        pretraining = None
        if cfg.init and not self.engine_cfg.resume:
            from ..pretrain.transfer import read_pretraining_checkpoint

            pretraining = read_pretraining_checkpoint(cfg.init)  # its sizes are in cfg (train.config.encoder_sizes)
        model, self.model_spec = create_classifier(
            cfg.model, img_size=pre.img_size[0] if pre.img_size[0] == pre.img_size[1] else pre.img_size,
            num_heads=cfg.num_heads, in_chans=pre.in_chans, num_classes=spec.num_classes, drop_path=cfg.drop_path,
            drop=cfg.drop, **sizes)
        if pretraining is not None:
            from ..pretrain.transfer import init_classifier_from_pretraining

            if self.model_spec["family"] != "vim":
                raise InputError("--init starts a Vim classifier; choose a Vim --model")
            report = init_classifier_from_pretraining(model, pretraining)
            print_once(f"initialised from {cfg.init}: {report.summary()}")
        if cfg.finetune and not self.engine_cfg.resume:
            from ..models.checkpoint import load_checkpoint

            if self.model_spec["family"] != "vim":
                raise InputError("--finetune loads Vim checkpoints; for timm models use timm's pretrained weights")
            report = load_checkpoint(model, cfg.finetune, ignore_head=True)
            print_once(f"fine-tuning from {cfg.finetune}" + "".join(f"; resized {r}" for r in report.resized)
                       + (f"; new head ({', '.join(report.skipped)})" if report.skipped else ""))
        return model

    def describe(self, model: nn.Module) -> str:
        pre = self.preprocessing
        # what was built (e.g. "Vim 0.49M (D=96, depth 6, ...)"), not the registered name it was made from
        self.network = describe_model(model, self.cfg.model)
        return (f"{self.network}, {count_parameters(model):,} parameters, on "
                f"{self.spec.name} {pre.in_chans}x{pre.img_size[0]}x{pre.img_size[1]}, recipe {self.cfg.recipe}")

    # ------------------------------------------------------------------------------------------ loss, evaluation
    def _loss_functions(self):
        """(mixup_fn, loss) of the recipe: Mixup/CutMix soft targets with smoothing, else smoothed cross-entropy."""
        if self._criterion is None:
            cfg = self.cfg
            if cfg.mixup > 0 or cfg.cutmix > 0:
                from timm.data import Mixup
                from timm.loss import SoftTargetCrossEntropy

                self._mixup_fn = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                                       switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                                       label_smoothing=cfg.smoothing, num_classes=self.spec.num_classes)
                self._criterion = SoftTargetCrossEntropy()
            else:
                self._criterion = nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)
            if self.custom_criterion is not None:
                self._criterion = self.custom_criterion
        return self._mixup_fn, self._criterion

    def loss(self, model: nn.Module, batch: Any) -> StepOutput:
        mixup_fn, criterion = self._loss_functions()
        images, targets, skipped = _unpack(batch)
        self.skipped_images += int(skipped)
        if mixup_fn is not None and images.shape[0] % 2:
            images, targets = images[:-1], targets[:-1]  # timm's Mixup pairs images: drop one from an odd batch
        if images.shape[0] == 0:  # every image of this batch was unreadable (named above): nothing to learn
            return StepOutput(loss=torch.zeros((), device=images.device), batch_size=0)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        return StepOutput(loss=criterion(model(images), targets), batch_size=int(images.shape[0]))

    def evaluate(self, model: nn.Module, loader) -> Dict[str, float]:
        device = next(model.parameters()).device
        metrics = evaluate(model, loader, device=device)
        return {"val_loss": metrics["loss"], "top1": metrics["top1"], "top5": metrics["top5"]}

    # ------------------------------------------------------------------------------------------ metadata
    def checkpoint_fields(self) -> Dict[str, Any]:
        spec = self.model_spec or {}
        return dict(arch={"name": spec.get("name", self.cfg.model), "family": spec.get("family", "vim"),
                          "overrides": dict(spec.get("kwargs") or {})},
                    preprocessing=self.preprocessing.to_dict(), class_names=list(self.spec.class_names))

    def task_config_dict(self) -> Dict[str, Any]:
        return self.cfg.to_dict()

    def summary_fields(self) -> Dict[str, Any]:
        skipped = all_reduce_sums({"skipped": float(self.skipped_images)})["skipped"]
        return {"dataset": self.spec.name, "family": (self.model_spec or {}).get("family"),
                "network": self.network, "skipped_images": int(skipped)}

    def resume_hint(self, checkpoint: Path) -> str:
        return f"vimamba train --resume {checkpoint}"

    def on_finished(self, model: nn.Module, run_dir: Path, best_checkpoint: Path) -> None:
        """Export the best weights (the EMA ones if they select best.pth) as ``model.safetensors``."""
        if not self.cfg.export or (self.model_spec or {}).get("family") != "vim":
            return
        from ..checkpoints.format import load_checkpoint_file
        from ..models.checkpoint import save_weights

        state = load_checkpoint_file(best_checkpoint)
        use_ema = (self.engine_cfg.best_metric or "").startswith("ema_") and state.get("model_ema")
        save_weights(model, run_dir / "model.safetensors", class_names=list(self.spec.class_names),
                     state_dict=state["model_ema"] if use_ema else state["model"],
                     preprocessing=self.preprocessing.to_dict())


def run_training(cfg: TrainConfig, *, criterion: Optional[Callable] = None) -> RunResult:
    """Train (or continue training) the classifier ``cfg`` describes; the summary is ``result.summary``."""
    return run(ClassificationTask(cfg.task, cfg.engine, criterion), cfg.engine)


# ---------------------------------------------------------------------------------------------------- evaluation
def accuracy_counts(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> Dict[int, int]:
    """How many targets are among the top-k predictions, for each k (k capped at the number of classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top.eq(targets[:, None])
    return {k: int(hits[:, :k].any(dim=1).sum()) for k in ks}


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device: torch.device, precision: Optional[MixedPrecision] = None,
             desc: str = "eval") -> Dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and cross-entropy over the whole loader, summed over all ranks."""
    was_training = model.training
    model.eval()
    sums = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "count": 0.0, "skipped": 0.0}
    iterator = iter(progress(loader, total=len(loader), desc=desc))
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            break
        except Exception as e:  # a worker raised or died
            raise DataLoadingError(f"loading an evaluation batch failed ({desc}): {describe_failure(e)}") from e
        images, targets, skipped = _unpack(batch)
        sums["skipped"] += int(skipped)
        if images.shape[0] == 0:  # every image of this batch was unreadable
            continue
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if precision is not None:
            with precision.autocast():
                logits = model(images)
        else:
            logits = model(images)
        logits = logits.float()
        hits = accuracy_counts(logits, targets)
        sums["loss"] += float(F.cross_entropy(logits, targets, reduction="sum"))
        sums["top1"] += hits[1]
        sums["top5"] += hits[5]
        sums["count"] += targets.shape[0]
    model.train(was_training)
    sums = all_reduce_sums(sums)
    count = max(sums["count"], 1.0)
    return {"loss": sums["loss"] / count, "top1": 100.0 * sums["top1"] / count, "top5": 100.0 * sums["top5"] / count,
            "count": int(sums["count"]), "skipped": int(sums["skipped"])}
