"""The iteration-based training loop shared by segmentation and detection.

Dense-prediction recipes count optimizer iterations, not epochs (the official Vim UperNet: 60k iterations, poly
schedule with 1,500 warmup iterations; ViTDet Mask R-CNN: multi-step decay). The loop works for any model whose
``forward(*inputs)`` in training mode returns a dict of losses (torchvision detectors, :class:`VimSegmentor`) and
reuses the training infrastructure of :mod:`vimamba.train`:

* AdamW over timm parameter groups with layer-wise LR decay (the dense models' ``group_matcher`` reaches
  ``backbone.vim.layers.i``) and no weight decay for biases, norms and the prefixed ``pos_embed`` / ``cls_token``
  (:mod:`vimamba.train.optim`); timm's poly / multi-step schedule with linear warmup, stepped every iteration;
* float32, bf16 or fp16 with the non-finite loss / gradient guard (:mod:`vimamba.train.precision`);
* torchrun data parallelism with SyncBatchNorm, seed/epoch-determined sharded sampling that resumes mid-epoch
  (:mod:`vimamba.train.distributed`, :mod:`vimamba.train.sampling`);
* atomic ``last.pth`` / ``best.pth`` with the full training state, SIGINT/SIGTERM save-and-exit, ``resume``
  (:mod:`vimamba.train.checkpointing`); a progress bar, ``metrics.jsonl``, ``curves.png`` and ``summary.json``
  (:mod:`vimamba.train.reporting`).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..data.workers import DataLoadingError, describe_failure, worker_deaths_deferred, worker_failure_in
from ..train.checkpointing import (CheckpointManager, GracefulInterrupt, leave_signals_to_main_process,
                                  load_training_checkpoint, prepare_output_dir, restore_training_state)
from ..train.distributed import DistInfo, all_reduce_max, all_reduce_sums, print_once, seed_everything
from ..train.optim import create_optimizer, create_scheduler
from ..train.precision import MixedPrecision
from ..train.reporting import MetricsLog, format_summary, plot_curves, progress, write_json
from ..train.sampling import SeededSamples, build_train_sampler
from .configs import ConfigDict

__all__ = ["DenseTrainConfig", "train_iterations", "TrainResult"]


@dataclass
class DenseTrainConfig(ConfigDict):
    """Optimisation settings of one run. Defaults: the official Vim-Ti UperNet recipe (per-GPU batch 8 on 4 GPUs)."""

    iterations: int = 60000
    batch_size: int = 8  # per process
    accum_steps: int = 1  # micro-batches per optimizer step
    lr: float = 2e-4  # the learning rate itself (dense recipes give it for their total batch; no scaling)
    weight_decay: float = 0.1
    betas: Tuple[float, float] = (0.9, 0.999)
    layer_decay: Optional[float] = 0.92  # layer-wise LR decay over the Vim blocks (None/1.0: off)
    no_decay_ssm: bool = False  # exempt A_log / A_b_log from weight decay (the official recipes decay them)
    schedule: str = "poly"  # "poly" (segmentation) or "multistep" (detection)
    power: float = 1.0  # poly exponent
    min_lr: float = 0.0
    milestones: Tuple[int, ...] = ()  # multistep: iterations at which the LR is multiplied by decay_rate
    decay_rate: float = 0.1
    warmup_iters: int = 1500
    warmup_lr: float = 2e-10  # LR of the first iteration (official: warmup ratio 1e-6 of lr)
    clip_grad: Optional[float] = None
    amp: str = "off"  # "off" (the official recipes), "bf16", "fp16"
    eval_interval: int = 4000
    checkpoint_interval: int = 1000
    log_interval: int = 50
    workers: int = 4
    seed: int = 0
    grad_checkpointing: bool = False
    max_bad_steps: int = 20

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.milestones = tuple(int(m) for m in self.milestones)
        for name in ("iterations", "batch_size", "accum_steps", "eval_interval", "checkpoint_interval",
                     "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.schedule not in ("poly", "multistep"):
            raise ValueError(f"schedule must be 'poly' or 'multistep', got {self.schedule!r}")



@dataclass
class TrainResult:
    """How a run ended: the summary written to ``summary.json`` and the process exit code (130/143 if stopped)."""

    summary: Dict[str, Any]
    exit_code: int = 0


def _prepare_model(model: nn.Module, cfg: DenseTrainConfig, dist: DistInfo) -> Tuple[nn.Module, nn.Module]:
    """(the bare model on its device, the model to call in training: DDP-wrapped when distributed)."""
    if cfg.grad_checkpointing and hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
    if dist.distributed and dist.device.type == "cuda":  # the official UperNet uses SyncBN (a GPU-only module)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(dist.device)
    if not dist.distributed:
        return model, model
    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    return model, nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def train_iterations(
    model: nn.Module,
    train_set: Dataset,
    *,
    cfg: DenseTrainConfig,
    output_dir,
    dist: DistInfo,
    to_inputs: Callable[[Any, torch.device], Sequence[Any]],
    collate_fn: Optional[Callable] = None,
    evaluate: Optional[Callable[[nn.Module, MixedPrecision], Dict[str, float]]] = None,
    metric: str = "mIoU",
    checkpoint_extra: Optional[Dict[str, Any]] = None,
    resume: Optional[str] = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train ``model`` for ``cfg.iterations`` optimizer steps; evaluate, log and checkpoint along the way.

    Args:
        to_inputs: batch from the loader, device -> the positional arguments of ``model(...)`` in training.
        evaluate: bare model, precision -> flat metrics (``metric`` among them), run on every rank (it shards).
        metric: the metric (higher is better) that selects ``best.pth``.
        checkpoint_extra: what the task stores in every checkpoint besides the training state (task, model config,
            class names), so that ``eval``/``predict`` can rebuild the model from the file alone.
        resume: a ``last.pth`` of an interrupted run with the same settings.
        overwrite: start over in (or resume into) a folder that holds another run's ``last.pth``.

    Resuming is exact: the run ends with the same weights as one never interrupted. The sampler's order and each
    sample's augmentation are functions of (seed, epoch, rank, position) (:class:`~vimamba.train.sampling.
    SeededSamples`), the loader draws its worker seeds from its own generator, and the checkpoint holds the model,
    optimizer, loss scaler and the RNG states of the training process; the schedule is a function of the iteration.
    """
    output_dir = prepare_output_dir(output_dir, resume=resume, overwrite=overwrite, clean=dist.is_main)
    bare, trained = _prepare_model(model, cfg, dist)
    optimizer = create_optimizer(bare, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
                                 no_decay_ssm=cfg.no_decay_ssm, layer_decay=cfg.layer_decay)
    scheduler = create_scheduler(optimizer, epochs=cfg.iterations, updates_per_epoch=1, sched=cfg.schedule,
                                 warmup_epochs=cfg.warmup_iters, warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr,
                                 decay_milestones=cfg.milestones, decay_rate=cfg.power if cfg.schedule == "poly"
                                 else cfg.decay_rate)
    precision = MixedPrecision(cfg.amp, dist.device, max_bad_steps=cfg.max_bad_steps)
    sampler = build_train_sampler(train_set, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size)
    sampler.seed_samples(cfg.seed, dist.rank)
    # Its own generator: starting an epoch's iterator must not draw from the run's global RNG (a resumed run starts
    # its iterator at another moment than the uninterrupted run did).
    loader = DataLoader(SeededSamples(train_set), batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=cfg.workers, collate_fn=collate_fn, drop_last=True,
                        pin_memory=dist.device.type == "cuda", persistent_workers=cfg.workers > 0,
                        worker_init_fn=leave_signals_to_main_process if cfg.workers > 0 else None,
                        generator=torch.Generator().manual_seed(cfg.seed))
    if len(loader) == 0:
        raise ValueError(f"the training set has {len(train_set)} samples, fewer than one batch of {cfg.batch_size} "
                         f"per process x {dist.world_size} processes")
    manager = CheckpointManager(output_dir, metric=metric, mode="max")
    log = MetricsLog(output_dir / "metrics.jsonl")

    global_step, epoch, batch_in_epoch = 0, 0, 0
    if resume:
        state = load_training_checkpoint(resume)
        if checkpoint_extra and state.get("dense_config") != checkpoint_extra.get("dense_config"):
            raise ValueError(f"'{resume}' was written for another model configuration; resume with the same settings "
                             "(or start a new run with --pretrained for a backbone)")
        # The schedule is a function of the iteration: rebuilt from this run's settings (so --iterations can grow).
        restore_training_state(state, model=bare, optimizer=optimizer, scaler=precision)
        global_step, epoch, batch_in_epoch = state["global_step"], state["epoch"], state["batch_in_epoch"]
        manager.best_value = state.get("best_metric")
        log.keep_before(global_step + 1, key="iteration")
        print_once(f"resumed from '{resume}' at iteration {global_step}/{cfg.iterations}")
    else:
        seed_everything(cfg.seed, dist.rank)  # per-rank augmentation; the model was initialised before
    sampler.set_epoch(epoch)
    sampler.skip(batch_in_epoch * cfg.batch_size)
    scheduler.step_update(global_step)

    def save(metric_value: Optional[float] = None) -> None:
        state = {"model": bare.state_dict(), "optimizer": optimizer.state_dict(), "scaler": precision.state_dict(),
                 "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                 "global_step": global_step, "config": cfg.to_dict(), **(checkpoint_extra or {})}
        manager.save(state, metric_value=metric_value)

    def next_batch():
        nonlocal data_iter, epoch, batch_in_epoch
        try:
            try:
                batch = next(data_iter)
            except StopIteration:
                epoch, batch_in_epoch = epoch + 1, 0
                sampler.set_epoch(epoch)
                data_iter = iter(loader)
                batch = next(data_iter)
        except Exception as e:  # a data worker raised or died
            raise DataLoadingError(f"loading a training batch failed at iteration {global_step + 1}: "
                                   f"{describe_failure(e)}") from e
        batch_in_epoch += 1
        return batch

    def stop_after_data_failure(error: Exception, step_start: Tuple[int, int]) -> DataLoadingError:
        """Save what the last finished iteration left (one process only: a collective would wait for ranks that
        are not coming) and return the error to raise, saying where the run can continue from."""
        nonlocal epoch, batch_in_epoch
        epoch, batch_in_epoch = step_start
        message = str(error) if isinstance(error, DataLoadingError) else (
            f"loading a training batch failed at iteration {global_step + 1}: {describe_failure(error)}")
        if dist.distributed:
            return DataLoadingError(f"{message.rstrip('.')}. In a distributed run nothing is saved after a failure")
        save()
        return DataLoadingError(f"{message.rstrip('.')}. Saved {manager.last_path}; fix the cause, then continue "
                                f"with --resume {manager.last_path}")

    def accumulate_gradients():
        """Forward and backward of ``accum_steps`` micro-batches; returns (losses, loss, all finite)."""
        nonlocal sums
        finite = True
        for micro in range(cfg.accum_steps):
            inputs = to_inputs(next_batch(), dist.device)
            sync = micro == cfg.accum_steps - 1 or not dist.distributed
            with (contextlib.nullcontext() if sync else trained.no_sync()):
                with precision.autocast():
                    losses = trained(*inputs)
                loss = sum(losses.values())
                finite = finite and precision.is_finite(loss)
                precision.backward(loss / cfg.accum_steps)
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) / cfg.accum_steps
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) / cfg.accum_steps
        return losses, loss, finite

    trained.train()
    data_iter = iter(loader)
    sums: Dict[str, float] = {}
    window_steps, window_start, run_start = 0, time.perf_counter(), time.perf_counter()
    last_metrics: Dict[str, float] = {}
    exit_code = 0
    bar = progress(range(cfg.iterations), total=cfg.iterations, initial=global_step, desc="train")
    committed = (epoch, batch_in_epoch)  # where the last finished iteration left the data
    with GracefulInterrupt() as interrupt:
        while global_step < cfg.iterations:
            try:
                losses, loss, finite = accumulate_gradients()
                with worker_deaths_deferred():  # an update is applied whole, or not at all
                    outcome = precision.step(optimizer, bare.parameters(), clip_grad=cfg.clip_grad,
                                             loss_finite=finite, where=f"iteration {global_step + 1}")
                    global_step += 1
                    scheduler.step_update(global_step)
                    committed = (epoch, batch_in_epoch)
            except Exception as e:  # torch reports a worker's death from its SIGCHLD handler, wherever we are
                failure = e if isinstance(e, DataLoadingError) else worker_failure_in(e)
                if failure is not None:
                    raise stop_after_data_failure(failure, committed) from e
                raise
            window_steps += 1
            lr = max(group["lr"] for group in optimizer.param_groups)
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{lr:.2e}", refresh=False)

            done = global_step >= cfg.iterations
            stop = all_reduce_max({"stop": 1.0 if interrupt.requested else 0.0})["stop"] > 0
            record: Dict[str, Any] = {}
            if global_step % cfg.log_interval == 0 or done or stop:
                means = all_reduce_sums({k: v / window_steps for k, v in sums.items()})
                record.update({k: v / dist.world_size for k, v in means.items()})
                elapsed = time.perf_counter() - window_start
                record.update(lr=lr, grad_norm=outcome.grad_norm, skipped_steps=precision.skipped_steps,
                              seconds_per_iter=elapsed / window_steps)
                sums, window_steps, window_start = {}, 0, time.perf_counter()
            metric_value = None
            if evaluate is not None and (global_step % cfg.eval_interval == 0 or done):
                last_metrics = evaluate(bare, precision)
                trained.train()
                metric_value = last_metrics.get(metric)
                record.update(last_metrics)
                print_once(f"iteration {global_step}: " + ", ".join(
                    f"{k} {v:.4f}" for k, v in last_metrics.items() if isinstance(v, float)))
            if record:
                log.append({"iteration": global_step, **record})
            if dist.is_main and (metric_value is not None or done or stop):  # redrawn after each evaluation
                plot_curves(log.read(), output_dir / "curves.png", x_key="iteration",
                            metric_keys=[k for k in last_metrics if isinstance(last_metrics[k], float)],
                            title=output_dir.name, metric_label="metric")
            if metric_value is not None or global_step % cfg.checkpoint_interval == 0 or done or stop:
                save(metric_value)
            if stop and not done:
                exit_code = interrupt.exit_code or 130
                print_once(f"stopped at iteration {global_step}; continue with --resume {manager.last_path}")
                break
    bar.close()

    summary = {"iterations": global_step, "of_iterations": cfg.iterations, **last_metrics,
               f"best_{metric}": manager.best_value, "skipped_steps": precision.skipped_steps,
               "train_minutes": (time.perf_counter() - run_start) / 60, "output_dir": str(output_dir),
               "stopped_early": exit_code != 0}
    if dist.is_main:
        write_json(output_dir / "summary.json", summary)
        print_once(format_summary({k: v for k, v in summary.items() if not isinstance(v, (dict, list))}))
    return TrainResult(summary, exit_code)
