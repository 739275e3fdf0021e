"""The one training loop: :func:`run` trains any :class:`~vimamba.engine.task.Task` for a number of optimizer steps.

The run, in order: join the process group (torchrun) -> read ``--resume`` -> check the output folder -> the task's
datasets and model (the same initial weights on every rank) -> EMA -> loaders with a seed/epoch-determined sampler
-> optimizer over the task's parameter groups, LR scaled by the global batch, per-step schedule, precision policy
-> DDP, compile -> restore the resumed state -> steps of train / log / evaluate / checkpoint -> summary.

What makes a resumed run the same run: the data order and each sample's augmentation are functions of (seed, epoch,
rank, position) (:mod:`.sampling`), the position in the data is a function of the step (an epoch is
``steps_per_epoch`` optimizer steps of ``accum_steps`` micro-batches; a trailing partial step is dropped), the loader
draws its worker seeds from its own generator (re-seeded every epoch) and the checkpoint holds the model, EMA,
optimizer, scheduler, loss-scaler and the RNG states of every rank. A run killed at any moment and resumed from its
``last.pth`` ends with the weights of a run never interrupted.

Files in the output folder: ``config.json``, ``last.pth`` (every ``--save-interval`` steps or epoch, at every
evaluation, at the end, on SIGINT/SIGTERM and after a data-loading failure), ``best.pth`` (best metric so far),
``metrics.jsonl`` (one record per logged step or evaluation), ``curves.png`` and ``summary.json``.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..checkpoints.format import make_checkpoint
from ..data.workers import DataLoadingError, describe_failure, worker_deaths_deferred, worker_failure_in
from .checkpointing import (CheckpointManager, GracefulInterrupt, TrainingCheckpointError,
                            leave_signals_to_main_process, load_training_checkpoint, prepare_output_dir,
                            restore_training_state)
from .compiled import maybe_compile
from .config import EngineConfig
from .distributed import (DistInfo, all_reduce_max, all_reduce_sums, cleanup_distributed, init_distributed,
                          print_once, seed_everything)
from .optim import create_scheduler, optimizer_over, scale_lr
from .precision import MixedPrecision, NonFiniteLossError
from .reporting import MetricsLog, ProgressStats, format_summary, plot_curves, progress, write_json
from .sampling import SeededSamples, ShardedEvalSampler, build_train_sampler
from .task import StepOutput, Task

__all__ = ["run", "RunResult", "SCHEDULE_FIELDS"]

# Settings that define the learning-rate schedule: a resumed run with the same values restores the saved scheduler
# state; changing one (e.g. more --epochs) rebuilds the schedule from the new settings at the resumed step.
SCHEDULE_FIELDS = ("epochs", "steps", "batch_size", "accum_steps", "lr", "unscale_lr", "sched", "min_lr", "warmup_lr",
                   "warmup_epochs", "warmup_steps", "milestones", "decay_rate", "poly_power")
# Seeds of the loader's own generator, one per (epoch, rank): independent of the global RNG stream.
_LOADER_SEED_STRIDE = 1_000_003


@dataclass
class RunResult:
    """How a run ended. ``status``: "finished" or "interrupted" (``exit_code`` 128 + signal number)."""

    status: str
    exit_code: int
    step: int
    run_dir: Path
    summary: Dict[str, Any]

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last.pth"


def run(task: Task, cfg: EngineConfig) -> RunResult:
    """Train ``task`` as ``cfg`` says (or continue ``cfg.resume``); returns how the run ended.

    Joins the torchrun process group when there is one (and leaves it at the end). Raises
    :class:`~.precision.NonFiniteLossError` when the loss stays non-finite, and
    :class:`~vimamba.data.workers.DataLoadingError` (after saving ``last.pth``) when a data worker fails.
    """
    cfg.check()
    dist_info = init_distributed(cfg.device)
    try:
        return _Run(task, cfg, dist_info).train()
    finally:
        cleanup_distributed()


def _to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a batch (also inside lists, tuples and dicts) on ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [_to_device(v, device) for v in batch]
        return type(batch)(moved) if not hasattr(batch, "_fields") else type(batch)(*moved)
    return batch


class _Run:
    """The state of one run; :meth:`train` is the loop."""

    def __init__(self, task: Task, cfg: EngineConfig, dist_info: DistInfo):
        self.task, self.cfg, self.dist = task, cfg, dist_info
        self.device = dist_info.device
        self.resume_state = load_training_checkpoint(cfg.resume) if cfg.resume else None
        self.out = prepare_output_dir(cfg.output if cfg.output is not None else Path(cfg.resume).parent,
                                      resume=cfg.resume, overwrite=cfg.overwrite, clean=dist_info.is_main)
        self.interrupt = GracefulInterrupt()

    # ------------------------------------------------------------------------------------------ setup
    def _build_model(self) -> None:
        cfg, task = self.cfg, self.task
        seed_everything(cfg.seed)  # the same initial weights on every rank
        model = task.build_model()
        if self.resume_state is not None:
            self._check_same_model()
        if cfg.grad_checkpointing:
            if not hasattr(model, "set_grad_checkpointing"):
                raise ValueError(f"{type(model).__name__} does not support --grad-checkpointing")
            model.set_grad_checkpointing(True)
        if self.dist.distributed and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # a no-op without BatchNorm
        self.model = model.to(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.ema = None
        if cfg.model_ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup)

    def _check_same_model(self) -> None:
        """A resumed run rebuilds the model the checkpoint holds (refused clearly otherwise)."""
        saved, fields = self.resume_state, self.task.checkpoint_fields()
        expected = make_checkpoint(task=self.task.name, arch=fields["arch"], model={},
                                   task_config=fields.get("task_config"))
        mismatch = [key for key in ("arch", "task_config") if _plain(expected[key]) != _plain(saved.get(key))]
        if saved.get("task") != self.task.name or mismatch:
            raise TrainingCheckpointError(
                f"'{self.cfg.resume}' was written for another model configuration (a {saved.get('task')} run; "
                f"differs in {', '.join(mismatch) or 'task'}); resume with the same settings, or start a new run "
                "from its weights")

    def _build_data(self) -> None:
        cfg, task, dist = self.cfg, self.task, self.dist
        train_set = task.train_dataset()
        sampler = build_train_sampler(train_set, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size,
                                      repeated_aug=task.repeated_augmentation())
        # Each sample's augmentation is drawn from its own seed (seed, epoch, rank, position): the same whichever
        # worker loads it, so a run resumed mid-epoch repeats the batches of an uninterrupted one.
        sampler.seed_samples(cfg.seed, dist.rank)
        common = dict(num_workers=cfg.workers, pin_memory=self.device.type == "cuda", collate_fn=task.collate_fn(),
                      persistent_workers=cfg.workers > 0,
                      worker_init_fn=leave_signals_to_main_process if cfg.workers > 0 else None)
        self.sampler = sampler
        self.loader = DataLoader(SeededSamples(train_set), batch_size=cfg.batch_size, sampler=sampler,
                                 drop_last=True, generator=torch.Generator(), **common)
        self.steps_per_epoch = len(self.loader) // cfg.accum_steps
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training set ({len(train_set)} samples) gives {len(self.loader)} batches of "
                             f"{cfg.batch_size} per process x {dist.world_size} process(es): fewer than one optimizer "
                             f"step of {cfg.accum_steps} batches; lower --batch-size")
        self.total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * self.steps_per_epoch
        eval_set = task.eval_dataset()
        self.eval_loader = None
        if eval_set is not None:
            self.eval_loader = DataLoader(eval_set, batch_size=task.eval_batch_size(cfg.batch_size),
                                          sampler=ShardedEvalSampler(eval_set, dist.rank, dist.world_size),
                                          **common)
        self.train_size = len(train_set)

    def _build_optimisation(self) -> None:
        cfg, dist = self.cfg, self.dist
        global_batch = cfg.batch_size * dist.world_size * cfg.accum_steps
        self.global_batch = global_batch
        self.lr = cfg.lr if cfg.unscale_lr else scale_lr(cfg.lr, global_batch)
        self.optimizer = optimizer_over(self.task.param_groups(self.model, cfg), lr=self.lr,
                                        weight_decay=cfg.weight_decay, opt=cfg.opt, eps=cfg.opt_eps,
                                        betas=cfg.opt_betas, momentum=cfg.momentum)
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_epochs * self.steps_per_epoch)
        self.scheduler = create_scheduler(
            self.optimizer, epochs=self.total_steps, updates_per_epoch=1, sched=cfg.sched, warmup_epochs=warmup,
            warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, decay_milestones=cfg.milestones,
            decay_rate=cfg.poly_power if cfg.sched == "poly" else cfg.decay_rate)
        self.precision = MixedPrecision(cfg.amp, self.device, max_bad_steps=cfg.max_bad_steps)
        trained: nn.Module = self.model
        if dist.distributed:
            trained = nn.parallel.DistributedDataParallel(
                trained, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.trained = maybe_compile(trained, cfg.compile, self.device, log=print_once)

    def _restore(self) -> int:
        """Put the resumed state back (or start fresh); returns the step the run continues from."""
        cfg, state = self.cfg, self.resume_state
        best_name, best_mode = self.best_metric
        self.manager = CheckpointManager(self.out, metric=best_name, mode=best_mode)
        self.log = MetricsLog(self.out / "metrics.jsonl")
        if state is None:
            seed_everything(cfg.seed, self.dist.rank)  # augmentation: different random numbers on each rank
            self.log.keep_before(0, key="step")
            return 0
        saved_cfg = state.get("config") or {}
        same_schedule = all(_plain(saved_cfg.get(k)) == _plain(getattr(cfg, k)) for k in SCHEDULE_FIELDS)
        restore_training_state(state, model=self.model, optimizer=self.optimizer,
                               scheduler=self.scheduler if same_schedule else None, scaler=self.precision,
                               ema=self.ema.module if self.ema is not None else None)
        step = int(state["step"])
        if not same_schedule:
            print_once("the schedule settings differ from the checkpoint's: the learning-rate schedule is rebuilt "
                       f"from the new settings at step {step}")
        self.scheduler.step_update(num_updates=step)
        best = state.get("best_metric") or {}
        if best.get("name") == best_name:
            self.manager.best_value = best.get("value")
        self.log.keep_before(step + 1, key="step")
        epoch, batch = divmod(step, self.steps_per_epoch)
        where = f"epoch {epoch + 1}" + (f", batch {batch * cfg.accum_steps}/{len(self.loader)}" if batch else "")
        print_once(f"resuming {cfg.resume} at step {step}/{self.total_steps} ({where})")
        return step

    @property
    def best_metric(self) -> Tuple[str, str]:
        name, mode = self.task.best_metric
        chosen = self.cfg.best_metric or name
        return chosen, mode

    # ------------------------------------------------------------------------------------------ pieces of a step
    def _position(self, step: int) -> Tuple[int, int]:
        """(epoch, batches of that epoch done) after ``step`` optimizer steps."""
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        return epoch, in_epoch * self.cfg.accum_steps

    def _open_epoch(self, step: int) -> Iterator[Any]:
        epoch, done = self._position(step)
        self.sampler.set_epoch(epoch)
        self.sampler.skip(done * self.cfg.batch_size)
        self.loader.generator.manual_seed(self.cfg.seed + _LOADER_SEED_STRIDE * (epoch + 1) + self.dist.rank)
        return iter(self.loader)

    def _checkpoint_fields(self, step: int) -> Dict[str, Any]:
        epoch, batch_in_epoch = self._position(step)
        fields = dict(self.task.checkpoint_fields())
        return dict(task=self.task.name, **fields, model=self.model.state_dict(),
                    model_ema=self.ema.module.state_dict() if self.ema is not None else None,
                    optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                    scaler=self.precision.state_dict(), step=step, epoch=epoch, batch_in_epoch=batch_in_epoch,
                    config={**self.task.task_config_dict(), **self.cfg.to_dict()})

    def _evaluate(self) -> Dict[str, float]:
        metrics: Dict[str, float] = {}
        models = [("", self.model)] + ([("ema_", self.ema.module)] if self.ema is not None else [])
        for prefix, model in models:
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad(), self.precision.autocast():
                    result = self.task.evaluate(model, self.eval_loader)
            except Exception as e:
                if worker_failure_in(e) is not None and not isinstance(e, DataLoadingError):
                    raise DataLoadingError(f"loading an evaluation batch failed: {describe_failure(e)}") from e
                raise
            finally:
                model.train(was_training)
            metrics.update({prefix + k: v for k, v in result.items()})
        return metrics

    def _saved_after_failure(self, error: BaseException, step: int) -> DataLoadingError:
        """Save the state the last finished step left (one process only: a collective would wait for ranks that are
        not coming) and return the error to raise, saying where the run can continue from."""
        message = str(error) if isinstance(error, DataLoadingError) else (
            f"loading a training batch failed at step {step + 1}: {describe_failure(error)}")
        manager = self.manager
        if self.dist.distributed:
            kept = (f"the last checkpoint is '{manager.last_path}'" if manager.last_path.is_file() else
                    "no checkpoint had been written yet")
            return DataLoadingError(f"{message.rstrip('.')}. In a distributed run nothing is saved after a failure: "
                                    f"{kept}.")
        manager.save(self._checkpoint_fields(step))
        return DataLoadingError(f"{message.rstrip('.')}. Saved {manager.last_path}; fix the cause, then continue "
                                f"with: {self.task.resume_hint(manager.last_path)}")

    # ------------------------------------------------------------------------------------------ the loop
    def train(self) -> RunResult:
        cfg, task, dist = self.cfg, self.task, self.dist
        self._build_model()
        self._build_data()
        self._build_optimisation()
        step = self._restore()
        if dist.is_main:
            write_json(self.out / "config.json", {**task.task_config_dict(), **cfg.to_dict()})
        self.title = task.describe(self.model)
        epochs = self.total_steps / self.steps_per_epoch
        print_once(
            f"==> {task.name}: {self.title}; {self.train_size:,} training samples\n"
            f"    {self.total_steps} steps ({epochs:.4g} epochs x {self.steps_per_epoch}), global batch "
            f"{self.global_batch} ({dist.world_size} process(es) x {cfg.batch_size}"
            + (f" x {cfg.accum_steps} accumulation" if cfg.accum_steps > 1 else "")
            + f"), lr {self.lr:.3g} ({cfg.sched}), wd {cfg.weight_decay}, EMA {'on' if self.ema else 'off'}, "
            f"precision {cfg.amp}, device {self.device}\n    output: {self.out}")

        log_interval = cfg.log_interval or max(1, self.steps_per_epoch // 25)
        run_start = time.perf_counter()
        stats, window = ProgressStats(), _Window()
        last_eval: Dict[str, float] = {}
        best_step: Optional[int] = None
        data_iter: Optional[Iterator[Any]] = None
        iter_epoch = -1
        bar = progress(None, total=self.total_steps, initial=step, desc="train")
        params = [p for p in self.model.parameters() if p.requires_grad]
        exit_code = 0
        with self.interrupt:
            while step < self.total_steps:
                try:
                    epoch = step // self.steps_per_epoch
                    if epoch != iter_epoch:
                        data_iter, iter_epoch = self._open_epoch(step), epoch
                    outcome, finite = self._one_step(data_iter, step, params, stats, window)
                    with worker_deaths_deferred():  # an update is applied whole, or not at all
                        step += 1
                        if outcome.stepped and self.ema is not None:
                            self.ema.update(self.model, step=step)
                        self.scheduler.step_update(num_updates=step)
                    bar.update(1)
                    lr = max(g["lr"] for g in self.optimizer.param_groups)
                    bar.set_postfix(stats.postfix(lr, dist.world_size), refresh=False)

                    done = step >= self.total_steps
                    stop = all_reduce_max({"stop": float(self.interrupt.requested is not None)})["stop"] > 0
                    epoch_end = step % self.steps_per_epoch == 0
                    eval_due = self.eval_loader is not None and not (stop and not done) and (
                        done or (step % cfg.eval_interval == 0 if cfg.eval_interval else epoch_end))
                    record: Dict[str, Any] = {}
                    if step % log_interval == 0 or done or stop or eval_due:
                        record.update(window.flush(dist.world_size), lr=lr, grad_norm=outcome.grad_norm,
                                      skipped_steps=self.precision.skipped_steps)
                    metric_value = None
                    if eval_due:
                        last_eval = self._evaluate()
                        metric_value = last_eval.get(self.best_metric[0])
                        record.update(last_eval)
                        print_once(f"step {step}/{self.total_steps} (epoch {step / self.steps_per_epoch:.3g}): " +
                                   ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items() if isinstance(v, float)))
                        if dist.is_main:
                            task.on_evaluated(self.model, self.out, step)
                    if record:
                        self.log.append({"step": step, "epoch": round(step / self.steps_per_epoch, 4), **record})
                    if dist.is_main and (eval_due or done or stop or epoch_end):
                        self._plot(last_eval)
                    if eval_due or done or stop or (step % cfg.save_interval == 0 if cfg.save_interval else
                                                    epoch_end):
                        before = self.manager.best_value
                        self.manager.save(self._checkpoint_fields(step), metric_value=metric_value)
                        if self.manager.best_value != before:
                            best_step = step
                except NonFiniteLossError as e:
                    kept = (f"the last good checkpoint is '{self.manager.last_path}'" if
                            self.manager.last_path.is_file() else "no checkpoint had been written yet")
                    raise NonFiniteLossError(f"{e} Nothing was saved after the failure: {kept}.") from e
                except Exception as e:  # a data worker raised or died (torch reports it wherever the main process is)
                    failure = e if isinstance(e, DataLoadingError) else worker_failure_in(e)
                    if failure is None:
                        raise
                    raise self._saved_after_failure(failure, step) from e
                if stop and not done:
                    exit_code = self.interrupt.exit_code or 130
                    epoch, batch = self._position(step)
                    print_once(f"stopped by {self.interrupt.signal_name or 'a signal'} at step {step} (epoch "
                               f"{epoch + 1}, batch {batch}/{len(self.loader)}); saved {self.manager.last_path}. "
                               f"Continue with:\n    {task.resume_hint(self.manager.last_path)}")
                    break
        bar.close()
        status = "interrupted" if exit_code else "finished"
        if status == "finished" and dist.is_main:
            best = self.manager.best_path if self.manager.best_path.is_file() else self.manager.last_path
            task.on_finished(self.model, self.out, best)
        summary = self._summary(status, exit_code, step, last_eval, best_step, time.perf_counter() - run_start)
        if dist.is_main:
            write_json(self.out / "summary.json", summary)
            if status == "finished":
                print(format_summary({k: v for k, v in summary.items() if not isinstance(v, (dict, list))},
                                     title=f"finished: {self.title}"), flush=True)
        return RunResult(status=status, exit_code=exit_code, step=step, run_dir=self.out, summary=summary)

    def _one_step(self, data_iter: Iterator[Any], step: int, params: List[torch.nn.Parameter],
                  stats: ProgressStats, window: "_Window"):
        """Forward and backward of ``accum_steps`` micro-batches, then the optimizer step (guarded)."""
        cfg, precision = self.cfg, self.precision
        self.trained.train()
        finite = True
        for micro in range(cfg.accum_steps):
            try:
                batch = next(data_iter)
            except StopIteration:  # cannot happen: an epoch holds steps_per_epoch x accum_steps batches
                raise RuntimeError("the training loader ended inside an epoch") from None
            except Exception as e:  # a worker raised or died: the model is as the last optimizer step left it
                raise DataLoadingError(f"loading a training batch failed at step {step + 1}: "
                                       f"{describe_failure(e)}") from e
            batch = _to_device(batch, self.device)
            last = micro == cfg.accum_steps - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.trained, "no_sync") else \
                self.trained.no_sync()
            with sync:
                with precision.autocast():
                    output: StepOutput = self.task.loss(self.trained, batch)
                if output.batch_size == 0:  # nothing to learn from (e.g. every image unreadable)
                    continue
                ok = precision.is_finite(output.loss)
                finite = finite and ok
                precision.backward(output.loss / cfg.accum_steps)
            value = float(output.loss.detach()) if ok else float("nan")
            stats.update(value, output.batch_size)
            window.add(value, output.batch_size, output.metrics)
        outcome = precision.step(self.optimizer, params, clip_grad=cfg.clip_grad, loss_finite=finite,
                                 where=f"step {step + 1}")
        window.steps += 1
        return outcome, finite

    def _plot(self, last_eval: Dict[str, float]) -> None:
        metric_keys = [k for k, v in last_eval.items() if isinstance(v, float) and "loss" not in k]
        plot_curves(self.log.read(), self.out / "curves.png", x_key="epoch" if self.cfg.steps is None else "step",
                    loss_keys=["train_loss"] + [k for k in last_eval if "loss" in k], metric_keys=metric_keys,
                    title=self.title, metric_label="metric")

    def _summary(self, status: str, exit_code: int, step: int, last_eval: Dict[str, float],
                 best_step: Optional[int], seconds: float) -> Dict[str, Any]:
        manager = self.manager
        summary: Dict[str, Any] = {
            "status": status, "exit_code": exit_code, "task": self.task.name, "model": self.title,
            "parameters": sum(p.numel() for p in self.model.parameters()), "steps": step,
            "of_steps": self.total_steps, "epochs": round(step / self.steps_per_epoch, 4)}
        summary.update({f"final_{k}": v for k, v in last_eval.items()})
        if manager.best_value is not None:
            summary.update(best_metric=manager.metric, best_value=manager.best_value)
            if best_step is not None:
                summary["best_step"] = best_step
        summary.update(skipped_steps=self.precision.skipped_steps, seconds_this_session=seconds)
        summary.update(self.task.summary_fields())
        summary.update(checkpoint=str(manager.best_path if manager.best_path.is_file() else manager.last_path),
                       curves=str(self.out / "curves.png"), metrics_log=str(self.out / "metrics.jsonl"))
        return summary


class _Window:
    """Sums of the training loss and the task's step metrics since the last logged record (sample-weighted)."""

    def __init__(self) -> None:
        self.sums: Dict[str, float] = {}
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, loss: float, batch_size: int, metrics: Dict[str, float]) -> None:
        values = {"train_loss": loss, **{f"train_{k}": float(v) for k, v in metrics.items()}}
        for name, value in values.items():
            if value == value and abs(value) != float("inf"):  # finite values only
                self.sums[name] = self.sums.get(name, 0.0) + value * batch_size
                self.sums[f"{name}#n"] = self.sums.get(f"{name}#n", 0.0) + batch_size
        self.sums["#samples"] = self.sums.get("#samples", 0.0) + batch_size

    def flush(self, world_size: int) -> Dict[str, float]:
        """The means since the last flush, over all ranks (a collective: every rank calls it), and reset."""
        sums = all_reduce_sums(self.sums) if world_size > 1 else dict(self.sums)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {name: sums[name] / sums[f"{name}#n"] for name in sums
               if "#" not in name and sums.get(f"{name}#n")}
        out["samples_per_s"] = sums.get("#samples", 0.0) / elapsed
        self.sums, self.steps, self.start = {}, 0, time.perf_counter()
        return out


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (a config compared with one read back from a checkpoint)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
