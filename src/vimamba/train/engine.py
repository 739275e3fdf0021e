"""One epoch of classification training, and evaluation (top-1, top-5, loss), as DeiT's ``engine.py`` does.

Batches are ``(images, targets, skipped)`` from :func:`vimamba.data.collate_skipping_unreadable` (plain
``(images, targets)`` also works). Every optimizer step goes through :class:`~.precision.MixedPrecision`, which
skips non-finite steps on all ranks alike; the interrupt flag is agreed on by all ranks after each step, so a
SIGTERM to any process stops all of them at the same step boundary.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.workers import DataLoadingError, describe_failure, is_worker_failure, worker_deaths_deferred
from .distributed import all_reduce_max, all_reduce_sums, get_world_size, unwrap_model
from .precision import MixedPrecision
from .reporting import ProgressStats, progress

__all__ = ["EpochResult", "train_one_epoch", "evaluate", "accuracy_counts"]


@dataclass
class EpochResult:
    """What an epoch (or the part of it that ran) did."""

    loss: float  # mean training loss over the finite steps of this process
    samples: int  # images trained on, all processes
    global_step: int  # optimizer updates since the start of the run
    batches_done: int  # batches of this epoch done, counting those done before a resume
    interrupted: bool  # stopped early by SIGINT/SIGTERM
    skipped_images: int  # unreadable images left out, all processes
    skipped_steps: int  # optimizer steps skipped for non-finite loss/gradient in this epoch
    seconds: float
    # (batches done, mean finite loss of this process since the previous point), every ``trace_every`` steps
    loss_trace: List[Tuple[int, float]] = field(default_factory=list)


def _unpack(batch):
    if len(batch) == 3:
        return batch
    images, targets = batch
    return images, targets, 0


def train_one_epoch(
    model: nn.Module,
    loader,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    precision: MixedPrecision,
    *,
    device: torch.device,
    epoch: int,
    global_step: int = 0,
    batches_done: int = 0,
    batches_per_epoch: Optional[int] = None,
    scheduler: Any = None,
    mixup_fn: Optional[Callable] = None,
    ema: Any = None,
    clip_grad: Optional[float] = None,
    accum_steps: int = 1,
    interrupt: Any = None,
    trace_every: int = 0,
) -> EpochResult:
    """Train over ``loader`` (the rest of the epoch when resuming: ``batches_done`` already done).

    ``criterion(logits, targets)`` receives soft targets when ``mixup_fn`` is given. The scheduler is stepped per
    optimizer update (``step_update(global_step)``); ``ema.update(model, step=global_step)`` follows each update.
    Stops after the current optimizer step when ``interrupt.requested`` is set on any rank. With ``trace_every``,
    the mean loss of every ``trace_every`` optimizer steps goes to ``loss_trace`` (for curves finer than epochs).
    """
    model.train()
    stats = ProgressStats()
    world = get_world_size()
    total = batches_per_epoch if batches_per_epoch is not None else batches_done + len(loader)
    bar = progress(loader, total=total, initial=batches_done, desc=f"epoch {epoch + 1}")
    skipped_images = 0
    skipped_steps_before = precision.skipped_steps
    micro = 0
    loss_finite = True
    interrupted = False
    start = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    usable = total - total % accum_steps  # trailing micro-batches that cannot fill an optimizer step are dropped
    optimizer.zero_grad(set_to_none=True)
    loss_trace: List[Tuple[int, float]] = []
    trace_sum, trace_count = 0.0, 0

    # where the last finished optimizer step left the epoch: what a checkpoint written after a failure holds
    committed_batches, committed_step = batches_done, global_step
    iterator = iter(bar)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            break
        except Exception as e:  # a worker raised or died: the model is as the last optimizer step left it
            raise DataLoadingError(f"loading a training batch failed in epoch {epoch + 1} after batch "
                                   f"{committed_batches}: {describe_failure(e)}", batches_done=committed_batches,
                                   global_step=committed_step) from e
        if batches_done >= usable:
            break
        try:
            images, targets, skipped = _unpack(batch)
            skipped_images += int(skipped)
            if mixup_fn is not None and images.shape[0] % 2:
                # timm's Mixup pairs images: drop one when a skipped file made the batch odd
                images, targets = images[:-1], targets[:-1]
            if images.shape[0] == 0:  # every image of this batch was unreadable (named above): nothing to learn
                batches_done += 1
                continue
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if mixup_fn is not None:
                images, targets = mixup_fn(images, targets)

            micro += 1
            last_micro = micro == accum_steps
            sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with precision.autocast():
                    output = model(images)
                    loss = criterion(output, targets)
                finite = precision.is_finite(loss)
                loss_finite = loss_finite and finite
                precision.backward(loss / accum_steps)
            loss_value = float(loss.detach()) if finite else float("nan")
            stats.update(loss_value, images.shape[0])
            if finite:
                trace_sum, trace_count = trace_sum + loss_value, trace_count + 1
            batches_done += 1
            if not last_micro:
                continue

            micro = 0
            with worker_deaths_deferred():  # an update is applied whole, or not at all
                outcome = precision.step(optimizer, params, clip_grad=clip_grad, loss_finite=loss_finite,
                                         where=f"epoch {epoch + 1}, step {global_step + 1}")
                loss_finite = True
                global_step += 1
                if outcome.stepped and ema is not None:
                    ema.update(unwrap_model(model), step=global_step)
                if scheduler is not None:
                    scheduler.step_update(num_updates=global_step)
                committed_batches, committed_step = batches_done, global_step
        except RuntimeError as e:
            if not is_worker_failure(e):
                raise
            # torch reports a worker's death from its SIGCHLD handler, wherever the main process is
            raise DataLoadingError(f"loading a training batch failed in epoch {epoch + 1} after batch "
                                   f"{committed_batches}: {describe_failure(e)}", batches_done=committed_batches,
                                   global_step=committed_step) from e
        if trace_every and global_step % trace_every == 0 and trace_count:
            loss_trace.append((batches_done, trace_sum / trace_count))
            trace_sum, trace_count = 0.0, 0
        bar.set_postfix(stats.postfix(max(g["lr"] for g in optimizer.param_groups), world), refresh=False)
        stop = interrupt is not None and interrupt.requested is not None
        if all_reduce_max({"stop": float(stop)})["stop"] > 0:
            interrupted = True
            break
    bar.close()

    sums = all_reduce_sums({"samples": stats.samples, "skipped": skipped_images})
    return EpochResult(
        loss=stats.mean_loss, samples=int(sums["samples"]), global_step=global_step, batches_done=batches_done,
        interrupted=interrupted, skipped_images=int(sums["skipped"]),
        skipped_steps=precision.skipped_steps - skipped_steps_before, seconds=time.perf_counter() - start,
        loss_trace=loss_trace,
    )


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
    autocast = precision.autocast if precision is not None else contextlib.nullcontext
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
        with autocast():
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
