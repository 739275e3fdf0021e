"""A classification training run from a :class:`~.config.TrainConfig`: ``vimamba train`` calls :func:`run_training`.

The run, in order: join the process group (torchrun) -> find/fetch the dataset -> build the model (Vim or timm)
and load ``--finetune`` weights -> EMA -> loaders with a seed/epoch-determined sampler -> optimizer with the
LR scaled by the global batch, per-iteration schedule, precision policy -> DDP -> restore ``--resume`` state ->
epochs of train / evaluate / log / plot / checkpoint -> summary and ``model.safetensors`` export.

Files in the output directory: ``config.json``, ``last.pth`` (every epoch, and on SIGINT/SIGTERM mid-epoch),
``best.pth`` (best ``--best-metric``), ``metrics.jsonl``, ``curves.png``, ``summary.json``, ``model.safetensors``.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..data.datasets import open_split, resolve_dataset
from ..data.images import collate_skipping_unreadable
from ..data.transforms import Augmentation, build_eval_transform, build_train_transform
from ..data.workers import DataLoadingError, describe_failure, worker_failure_in
from ..models.checkpoint import load_checkpoint, save_weights
from .checkpointing import (CheckpointManager, GracefulInterrupt, leave_signals_to_main_process,
                            load_training_checkpoint, prepare_output_dir, restore_training_state)
from .compiled import maybe_compile
from .config import TrainConfig
from .distributed import (DistInfo, barrier, cleanup_distributed, init_distributed, print_once, seed_everything)
from .engine import evaluate, train_one_epoch
from .models import MODEL_SPEC_KEY, count_parameters, create_classifier, describe_model
from .optim import create_optimizer, create_scheduler, scale_lr
from .precision import MixedPrecision, NonFiniteLossError
from .reporting import MetricsLog, format_summary, plot_curves, write_json
from .sampling import SeededSamples, ShardedEvalSampler, build_train_sampler

__all__ = ["run_training"]


def _loaders(cfg: TrainConfig, spec, pre, dist_info: DistInfo):
    aug = Augmentation(scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip, auto_augment=cfg.aa,
                       color_jitter=cfg.color_jitter, re_prob=cfg.reprob, re_mode=cfg.remode, re_count=cfg.recount,
                       interpolation=cfg.train_interpolation)
    train_set = open_split(spec, "train", build_train_transform(pre, aug), in_chans=pre.in_chans,
                           strict=cfg.strict_data)
    val_set = open_split(spec, "val", build_eval_transform(pre), in_chans=pre.in_chans, strict=cfg.strict_data)
    sampler = build_train_sampler(train_set, seed=cfg.seed, rank=dist_info.rank, world_size=dist_info.world_size,
                                  repeated_aug=cfg.repeated_aug)
    # Each sample's augmentation is drawn from its own seed (seed, epoch, rank, position): the same whichever worker
    # loads it, so a run resumed mid-epoch repeats the batches of an uninterrupted one.
    sampler.seed_samples(cfg.seed, dist_info.rank)
    train_set = SeededSamples(train_set)
    common = dict(num_workers=cfg.workers, pin_memory=dist_info.device.type == "cuda",
                  collate_fn=collate_skipping_unreadable, persistent_workers=cfg.workers > 0,
                  worker_init_fn=leave_signals_to_main_process if cfg.workers > 0 else None)
    # The loader draws its workers' base seed from its own generator (re-seeded every epoch), not from the global
    # RNG, so the global RNG stream, saved in checkpoints, is the same whether or not a run was resumed.
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                              generator=torch.Generator(), **common)
    val_loader = DataLoader(val_set, batch_size=max(1, int(1.5 * cfg.batch_size)),
                            sampler=ShardedEvalSampler(val_set, dist_info.rank, dist_info.world_size), **common)
    if len(train_loader) < cfg.accum_steps:
        raise ValueError(f"the training set ({len(train_set)} images) gives {len(train_loader)} batches of "
                         f"{cfg.batch_size} per process: fewer than one optimizer step; lower --batch-size")
    return train_loader, val_loader, sampler


def _criterion(cfg: TrainConfig, num_classes: int):
    """(mixup_fn, loss) of the recipe: Mixup/CutMix soft targets with smoothing, else smoothed cross-entropy."""
    if cfg.mixup > 0 or cfg.cutmix > 0:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mixup_fn = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                         switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
                         num_classes=num_classes)
        return mixup_fn, SoftTargetCrossEntropy()
    return None, nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)


def run_training(cfg: TrainConfig, *, criterion: Optional[Callable] = None) -> Dict[str, Any]:
    """Train (or continue training) as ``cfg`` says; returns the summary (also written to ``summary.json``).

    ``criterion(logits, targets)`` replaces the recipe's loss (a hook for experiments and tests). The summary's
    ``status`` is "finished", or "interrupted" with ``exit_code`` 128 + signal number.
    """
    dist_info = init_distributed(cfg.device)
    try:
        return _run(cfg, dist_info, criterion)
    finally:
        cleanup_distributed()


def _run(cfg: TrainConfig, dist_info: DistInfo, custom_criterion: Optional[Callable]) -> Dict[str, Any]:
    device = dist_info.device
    out = Path(cfg.output)
    resume = load_training_checkpoint(cfg.resume) if cfg.resume else None
    prepare_output_dir(out, resume=cfg.resume, overwrite=cfg.overwrite)  # before any slow step: refuse early

    # ---- data (rank 0 fetches, the others wait and then find it)
    if dist_info.is_main:
        spec = resolve_dataset(cfg.dataset, cfg.data)
    barrier()
    if not dist_info.is_main:
        spec = resolve_dataset(cfg.dataset, cfg.data, download=False)
    pre = spec.preprocessing.with_size(cfg.img_size)

    # ---- model (identical initialisation on every rank)
    seed_everything(cfg.seed)
    model, model_spec = create_classifier(
        cfg.model, img_size=pre.img_size[0] if pre.img_size[0] == pre.img_size[1] else pre.img_size,
        patch_size=cfg.patch_size, stride=cfg.stride, embed_dim=cfg.embed_dim, depth=cfg.depth,
        d_state=cfg.d_state, num_heads=cfg.num_heads, in_chans=pre.in_chans, num_classes=spec.num_classes,
        drop_path=cfg.drop_path, drop=cfg.drop)
    if cfg.finetune and resume is None:
        if model_spec["family"] != "vim":
            raise ValueError("--finetune loads Vim checkpoints; for timm models use timm's pretrained weights")
        report = load_checkpoint(model, cfg.finetune, ignore_head=True)
        print_once(f"fine-tuning from {cfg.finetune}" + "".join(f"; resized {r}" for r in report.resized)
                   + (f"; new head ({', '.join(report.skipped)})" if report.skipped else ""))
    if cfg.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(f"{cfg.model} does not support --grad-checkpointing")
        model.set_grad_checkpointing(True)
    model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    ema = None
    if cfg.model_ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup)

    # ---- data loaders, optimizer, schedule, precision
    train_loader, val_loader, sampler = _loaders(cfg, spec, pre, dist_info)
    batches_per_epoch = len(train_loader)
    updates_per_epoch = batches_per_epoch // cfg.accum_steps
    global_batch = cfg.batch_size * dist_info.world_size * cfg.accum_steps
    lr = cfg.lr if cfg.unscale_lr else scale_lr(cfg.lr, global_batch)
    optimizer = create_optimizer(model, lr=lr, weight_decay=cfg.weight_decay, opt=cfg.opt, eps=cfg.opt_eps,
                                 betas=cfg.opt_betas, momentum=cfg.momentum, no_decay_ssm=not cfg.decay_ssm,
                                 layer_decay=cfg.layer_decay)
    scheduler = create_scheduler(optimizer, epochs=cfg.epochs, updates_per_epoch=updates_per_epoch, sched=cfg.sched,
                                 warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr)
    precision = MixedPrecision(cfg.amp, device, max_bad_steps=cfg.max_bad_steps)
    mixup_fn, criterion = _criterion(cfg, spec.num_classes)
    if custom_criterion is not None:
        criterion = custom_criterion

    bare_model = model
    if dist_info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    model = maybe_compile(model, cfg.compile, device, log=print_once)

    # ---- resume, or a fresh start
    manager = CheckpointManager(out, metric=cfg.best_metric, mode="max")
    metrics = MetricsLog(out / "metrics.jsonl")
    start_epoch, batches_done, global_step = 0, 0, 0
    if resume is not None:
        # The schedule is rebuilt from the configuration (so --epochs can extend a run) and positioned by the step.
        restore_training_state(resume, model=bare_model, optimizer=optimizer, scaler=precision,
                               ema=ema.module if ema is not None else None)
        start_epoch, batches_done = int(resume["epoch"]), int(resume["batch_in_epoch"])
        global_step = int(resume["global_step"])
        scheduler.step_update(num_updates=global_step)
        manager.best_value = resume.get("best_metric")
        metrics.keep_before(start_epoch + 1)
        where = f"epoch {start_epoch + 1}" + (f", batch {batches_done}/{batches_per_epoch}" if batches_done else "")
        print_once(f"resuming {cfg.resume} at {where} (step {global_step})")
    else:
        seed_everything(cfg.seed, dist_info.rank)  # augmentation: different random numbers on each rank
        metrics.keep_before(0)
    if dist_info.is_main:
        write_json(out / "config.json", cfg.to_dict())

    num_params = count_parameters(bare_model)
    built = describe_model(bare_model, cfg.model)  # what was trained, not the name it was made from
    print_once(
        f"==> {built} [from {cfg.model}, {num_params:,} parameters] on {spec.describe()}, input "
        f"{pre.in_chans}x{pre.img_size[0]}x{pre.img_size[1]}\n"
        f"    recipe {cfg.recipe}: {cfg.epochs} epochs x {updates_per_epoch} steps, global batch {global_batch} "
        f"({dist_info.world_size} process(es) x {cfg.batch_size}" + (f" x {cfg.accum_steps} accumulation" if
                                                                     cfg.accum_steps > 1 else "") +
        f"), lr {lr:.3g}, wd {cfg.weight_decay}, drop-path {cfg.drop_path}, mixup {cfg.mixup}/cutmix {cfg.cutmix}, "
        f"EMA {'on' if ema is not None else 'off'}, precision {cfg.amp}, device {device}\n"
        f"    output: {out}")

    extras = {MODEL_SPEC_KEY: model_spec, "class_names": spec.class_names, "preprocessing": pre.to_dict(),
              "config": cfg.to_dict()}
    vim_cfg = getattr(bare_model, "cfg", None)
    if model_spec["family"] == "vim" and vim_cfg is not None:
        config = vim_cfg.to_dict()
        config.pop("scan_impl", None)
        extras.update(vimamba_config=config, arch=getattr(bare_model, "arch", None))

    def training_state(epoch: int, batch_in_epoch: int) -> Dict[str, Any]:
        return {"model": bare_model.state_dict(), "model_ema": ema.module.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": precision.state_dict(), "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "global_step": global_step, **extras}

    run_start = time.perf_counter()
    last_eval: Dict[str, Any] = {}
    interrupt = GracefulInterrupt()
    with interrupt:
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            sampler.skip(batches_done * cfg.batch_size)
            train_loader.generator.manual_seed(cfg.seed + 1_000_003 * (epoch + 1) + dist_info.rank)
            try:
                result = train_one_epoch(
                    model, train_loader, criterion, optimizer, precision, device=device, epoch=epoch,
                    global_step=global_step, batches_done=batches_done, batches_per_epoch=batches_per_epoch,
                    scheduler=scheduler, mixup_fn=mixup_fn, ema=ema, clip_grad=cfg.clip_grad,
                    accum_steps=cfg.accum_steps, interrupt=interrupt, trace_every=max(1, updates_per_epoch // 25))
            except NonFiniteLossError as e:
                kept = (f"the last good checkpoint is '{manager.last_path}'" if manager.last_path.is_file() else
                        "no checkpoint had been written yet")
                raise NonFiniteLossError(f"{e} Nothing was saved after the failure: {kept}.") from e
            except DataLoadingError as e:  # a data worker raised or died: keep what was trained, then stop
                global_step = e.global_step
                raise _saved_after_failure(e, manager, lambda: training_state(epoch, e.batches_done),
                                           dist_info) from e
            global_step, batches_done = result.global_step, result.batches_done
            if result.skipped_images:
                print_once(f"warning: {result.skipped_images} unreadable image(s) skipped in epoch {epoch + 1} (named "
                           "above); --strict-data makes them an error")
            if result.interrupted:
                manager.save(training_state(epoch, batches_done))
                print_once(f"stopped by {interrupt.signal_name} in epoch {epoch + 1} after batch {batches_done}/"
                           f"{batches_per_epoch}; saved {manager.last_path}. Continue with:\n    vimamba train "
                           f"--resume {manager.last_path}")
                return {"status": "interrupted", "exit_code": interrupt.exit_code, "epoch": epoch,
                        "batch_in_epoch": batches_done, "checkpoint": str(manager.last_path)}
            # the epoch is trained: a data worker that dies from here on (torch reports it wherever the main
            # process is) ends the run with the epoch kept
            with _saved_on_worker_death(manager, lambda: training_state(epoch + 1, 0), dist_info, epoch):
                batches_done = 0

                record: Dict[str, Any] = {"epoch": epoch + 1, "global_step": global_step, "train_loss": result.loss,
                                          "lr": max(g["lr"] for g in optimizer.param_groups),
                                          "epoch_seconds": result.seconds,
                                          "train_img_per_s": result.samples / max(result.seconds, 1e-9)}
                record["train_loss_trace"] = [[round(epoch + b / batches_per_epoch, 4), loss]
                                              for b, loss in result.loss_trace]
                if result.skipped_images or result.skipped_steps:
                    record.update(skipped_images=result.skipped_images, skipped_steps=result.skipped_steps)
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    try:
                        val = evaluate(bare_model, val_loader, device=device, precision=precision, desc="eval")
                        record.update(val_loss=val["loss"], top1=val["top1"], top5=val["top5"])
                        if ema is not None:
                            ema_val = evaluate(ema.module, val_loader, device=device, precision=precision,
                                               desc="eval EMA")
                            record.update(ema_loss=ema_val["loss"], ema_top1=ema_val["top1"],
                                          ema_top5=ema_val["top5"])
                    except DataLoadingError as e:  # the epoch is trained: keep it (not evaluated), then stop
                        metrics.append(record)
                        raise _saved_after_failure(e, manager, lambda: training_state(epoch + 1, 0), dist_info) from e
                    last_eval = record
                metrics.append(record)
                manager.save(training_state(epoch + 1, 0), metric_value=record.get(cfg.best_metric))
                if dist_info.is_main:
                    plot_curves(metrics.read(), out / "curves.png", loss_keys=("train_loss", "val_loss", "ema_loss"),
                                trace_keys=("train_loss_trace",),
                                metric_keys=("top1", "top5", "ema_top1"), metric_label="accuracy (%)",
                                title=f"{built} on {spec.name}")
                print_once(_epoch_line(record, cfg.epochs))
            if interrupt.requested is not None:
                print_once(f"stopped by {interrupt.signal_name} after epoch {epoch + 1}; saved {manager.last_path}. "
                           f"Continue with:\n    vimamba train --resume {manager.last_path}")
                return {"status": "interrupted", "exit_code": interrupt.exit_code, "epoch": epoch + 1,
                        "batch_in_epoch": 0, "checkpoint": str(manager.last_path)}

    summary = _summary(cfg, spec, model_spec, num_params, metrics, manager, run_start, precision, dist_info)
    summary["built"] = built
    if dist_info.is_main:
        if cfg.export and model_spec["family"] == "vim":
            summary["exported"] = str(_export(bare_model, manager, cfg, extras, out / "model.safetensors"))
        write_json(out / "summary.json", summary)
        print(format_summary(summary, title=f"finished: {built} on {spec.name}"), flush=True)
    barrier()
    return summary


def _epoch_line(record: Dict[str, Any], epochs: int) -> str:
    line = (f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}, "
            f"{record['train_img_per_s']:.0f} img/s, {record['epoch_seconds']:.0f}s")
    if "top1" in record:
        line += f" | val loss {record['val_loss']:.4f}, top-1 {record['top1']:.2f}%, top-5 {record['top5']:.2f}%"
    if "ema_top1" in record:
        line += f" | EMA top-1 {record['ema_top1']:.2f}%"
    return line


def _summary(cfg, spec, model_spec, num_params, metrics, manager, run_start, precision, dist_info) -> Dict[str, Any]:
    records = metrics.read() if dist_info.is_main else []
    evaluated = [r for r in records if "top1" in r]
    summary: Dict[str, Any] = {"status": "finished", "model": cfg.model, "family": model_spec["family"],
                               "parameters": num_params, "dataset": spec.name, "epochs": cfg.epochs}
    if evaluated:
        final, best = evaluated[-1], max(evaluated, key=lambda r: r.get(cfg.best_metric, float("-inf")))
        summary.update(final_top1=final["top1"], final_top5=final["top5"], final_val_loss=final["val_loss"])
        if "ema_top1" in final:
            summary.update(final_ema_top1=final["ema_top1"])
        summary.update(best_metric=cfg.best_metric, best_value=best.get(cfg.best_metric), best_epoch=best["epoch"])
    summary["train_seconds_total"] = sum(r.get("epoch_seconds", 0.0) for r in records)
    summary["wall_seconds_this_session"] = time.perf_counter() - run_start
    summary["skipped_steps"] = precision.skipped_steps
    summary["skipped_images"] = sum(r.get("skipped_images", 0) for r in records)
    summary.update(checkpoint=str(manager.best_path if manager.best_path.is_file() else manager.last_path),
                   curves=str(Path(cfg.output) / "curves.png"), metrics_log=str(Path(cfg.output) / "metrics.jsonl"))
    return summary


def _saved_after_failure(error: DataLoadingError, manager: CheckpointManager, state: Callable[[], Dict[str, Any]],
                         dist_info: DistInfo) -> DataLoadingError:
    """Save the state the last finished step left (one process only: a collective would wait for ranks that are
    not coming) and return the error to raise, saying where the run can continue from."""
    if dist_info.distributed:
        kept = (f"the last checkpoint is '{manager.last_path}'" if manager.last_path.is_file() else
                "no checkpoint had been written yet")
        return DataLoadingError(f"{str(error).rstrip('.')}. In a distributed run nothing is saved after a failure: "
                                f"{kept}.")
    manager.save(state())
    return DataLoadingError(f"{str(error).rstrip('.')}. Saved {manager.last_path}; fix the cause, then continue "
                            f"with: vimamba train --resume {manager.last_path}")


@contextlib.contextmanager
def _saved_on_worker_death(manager: CheckpointManager, state: Callable[[], Dict[str, Any]], dist_info: DistInfo,
                           epoch: int) -> Iterator[None]:
    """Turn torch's report of a dead data worker (a RuntimeError from its SIGCHLD handler, raised wherever the main
    process is) into a saved checkpoint and a :class:`DataLoadingError`, like a failure inside the epoch."""
    try:
        yield
    except Exception as e:
        failure = worker_failure_in(e)
        if isinstance(e, DataLoadingError) or failure is None:
            raise
        error = DataLoadingError(f"a data worker failed after epoch {epoch + 1}: {describe_failure(failure)}")
        raise _saved_after_failure(error, manager, state, dist_info) from e


def _export(model: nn.Module, manager: CheckpointManager, cfg: TrainConfig, extras: Dict[str, Any],
            path: Path) -> Path:
    """The best weights (EMA ones if EMA selects best) as .safetensors with class names and preprocessing."""
    source = manager.best_path if manager.best_path.is_file() else manager.last_path
    state = torch.load(source, map_location="cpu", weights_only=True)
    weights = state["model_ema"] if cfg.best_metric == "ema_top1" and state.get("model_ema") else state["model"]
    return save_weights(model, path, class_names=extras["class_names"], state_dict=weights,
                        preprocessing=extras["preprocessing"])
