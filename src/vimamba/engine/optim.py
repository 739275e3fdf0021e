"""Optimizer and learning-rate schedule of the DeiT/Vim recipe, built on timm's factories.

* Learning rate: the recipe's rate is given per 512 images and scaled linearly with the global batch
  (per-process batch x processes x accumulation steps), as DeiT and Vim do: ``lr = base_lr * global_batch / 512``.
* Weight decay groups: no decay for 1-D parameters (norm weights, ``D``), biases, and the names the model lists in
  ``no_weight_decay()`` (``pos_embed``, ``cls_token``). The official Vim recipe *does* decay the 2-D ``A_log`` /
  ``A_b_log`` (the official mixer marks them ``_no_weight_decay``, an attribute its timm version never reads);
  ``no_decay_ssm=True`` exempts them, by name.
* Optional layer-wise LR decay (BEiT style) from the model's ``group_matcher()``: the group at depth ``i`` of
  ``n`` gets ``lr * layer_decay ** (n - 1 - i)``.
* Schedule: timm's cosine (or other) schedule with linear warmup, stepped **every iteration** through
  ``scheduler.step_update(global_step)`` (the official code steps once per epoch, which holds the LR constant
  within an epoch and lags the warmup by one epoch).
"""
from __future__ import annotations

from typing import Collection, List, Optional, Sequence, Tuple

import torch
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2

__all__ = ["LR_REFERENCE_BATCH", "scale_lr", "no_weight_decay_names", "build_param_groups", "create_optimizer", "optimizer_over",
           "create_scheduler"]

LR_REFERENCE_BATCH = 512
SSM_PARAM_PATTERNS = ("*A_log", "*A_b_log")  # the 2-D state matrices; D / D_b are 1-D and never decayed


def scale_lr(base_lr: float, global_batch: int, reference_batch: int = LR_REFERENCE_BATCH) -> float:
    """The linear scaling rule: ``base_lr * global_batch / reference_batch``."""
    return base_lr * global_batch / reference_batch


def no_weight_decay_names(model: torch.nn.Module, no_decay_ssm: bool = False,
                          extra: Collection[str] = ()) -> List[str]:
    """Names and wildcard patterns of parameters kept out of weight decay (besides 1-D parameters and biases)."""
    names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    if no_decay_ssm:
        names.update(SSM_PARAM_PATTERNS)
    names.update(extra)
    return sorted(names)


def build_param_groups(model: torch.nn.Module, weight_decay: float, *, no_decay_ssm: bool = False,
                       layer_decay: Optional[float] = None, extra_no_decay: Collection[str] = ()) -> List[dict]:
    """Optimizer parameter groups with the weight-decay (and optional layer-wise LR decay) rules above."""
    no_decay = no_weight_decay_names(model, no_decay_ssm, extra_no_decay)
    if layer_decay is not None and layer_decay != 1.0:
        return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=no_decay, layer_decay=layer_decay)
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_decay)


def create_optimizer(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float,
    opt: str = "adamw",
    betas: Optional[Tuple[float, float]] = None,
    eps: Optional[float] = None,
    momentum: float = 0.9,
    no_decay_ssm: bool = False,
    layer_decay: Optional[float] = None,
    extra_no_decay: Collection[str] = (),
) -> torch.optim.Optimizer:
    """An optimizer (any timm name: adamw, sgd, lamb, ...) over :func:`build_param_groups`; ``lr`` is final."""
    groups = build_param_groups(model, weight_decay, no_decay_ssm=no_decay_ssm, layer_decay=layer_decay,
                                extra_no_decay=extra_no_decay)
    return optimizer_over(groups, lr=lr, weight_decay=weight_decay, opt=opt, betas=betas, eps=eps,
                          momentum=momentum)


def optimizer_over(groups: List[dict], *, lr: float, weight_decay: float, opt: str = "adamw",
                   betas: Optional[Tuple[float, float]] = None, eps: Optional[float] = None,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """The optimizer ``opt`` (a timm name) over ready parameter groups (a task's :meth:`param_groups`)."""
    kwargs = {}
    if betas is not None:
        kwargs["betas"] = tuple(betas)
    if eps is not None:
        kwargs["eps"] = eps
    if opt.lower() in ("sgd", "momentum", "nesterov"):
        kwargs["momentum"] = momentum
    # Groups carry their own weight decay; timm applies `weight_decay` only to groups without one.
    return create_optimizer_v2(groups, opt=opt, lr=lr, weight_decay=weight_decay, **kwargs)


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    updates_per_epoch: int,
    sched: str = "cosine",
    warmup_epochs: float = 5,
    warmup_lr: float = 1e-6,
    min_lr: float = 1e-5,
    decay_milestones: Sequence[int] = (90, 180, 270),
    decay_rate: float = 0.1,
):
    """A timm scheduler stepped per iteration: call ``scheduler.step_update(num_updates=global_step)``.

    With the cosine schedule the LR warms up linearly from ``warmup_lr`` to the optimizer's LR over
    ``warmup_epochs``, then follows ``min_lr + (lr - min_lr) / 2 * (1 + cos(pi * t / T))`` with ``t`` and ``T`` in
    iterations counted from the start of training (timm's convention, the official one).
    """
    if updates_per_epoch < 1:
        raise ValueError(f"updates_per_epoch must be >= 1, got {updates_per_epoch}")
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=sched, num_epochs=epochs, warmup_epochs=warmup_epochs, warmup_lr=warmup_lr, min_lr=min_lr,
        decay_milestones=list(decay_milestones), decay_rate=decay_rate, cooldown_epochs=0,
        step_on_epochs=False, updates_per_epoch=updates_per_epoch,
    )
    scheduler.step_update(0)  # the LR of the first iteration (warmup_lr), not the optimizer's initial LR
    return scheduler
