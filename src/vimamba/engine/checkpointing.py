"""Training checkpoints that survive crashes, and resuming that continues the same run.

Every checkpoint a run writes is the one format of :mod:`vimamba.checkpoints.format` (version 2), built with
:func:`~vimamba.checkpoints.make_checkpoint` and written atomically (temporary file + rename, via
:func:`vimamba.io.atomic_write`): the model and EMA weights, the optimizer, scheduler and loss-scaler states, the RNG
states of every rank (``rng``), the step and the position in the data (``epoch``, ``batch_in_epoch``), the best
metric so far, the run's configuration and what the task stores to rebuild its model.

:class:`CheckpointManager` writes ``last.pth`` (every call) and ``best.pth`` (when the tracked metric improves) in
the output directory and refuses to overwrite a good checkpoint with non-finite weights;
:func:`load_training_checkpoint` reads a checkpoint back for ``--resume`` with clear errors, and
:func:`restore_training_state` puts its state into the objects of a new process. :class:`GracefulInterrupt` turns
SIGINT/SIGTERM into a flag the training loop polls, so the loop can finish its step, save, and exit;
``--resume last.pth`` then continues where it stopped.
"""
from __future__ import annotations

import math
import os
import random
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

import numpy as np
import torch

from ..checkpoints.format import CheckpointFormatError, is_current_format, load_checkpoint_file, make_checkpoint
from ..errors import InputError, MissingFileError, UserError
from ..io import (atomic_torch_save, atomic_write, check_writable, ensure_folder, remove_stale_temporaries_in,
                  same_file)
from .distributed import all_gather_objects, get_rank, get_world_size, is_main_process

__all__ = [
    "CheckpointManager", "GracefulInterrupt", "capture_rng_state", "restore_rng_state", "load_training_checkpoint",
    "restore_training_state", "TrainingCheckpointError", "leave_signals_to_main_process", "prepare_output_dir",
]

PathLike = Union[str, os.PathLike]


class TrainingCheckpointError(UserError, RuntimeError):
    """A training checkpoint that cannot be read or resumed from."""


# ---------------------------------------------------------------------------------------------------- RNG states
def capture_rng_state() -> Dict[str, Any]:
    """The states of every random number generator a training step draws from, as plain tensors/tuples."""
    np_state = np.random.get_state()
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` captured (CUDA states only where the same GPUs exist)."""
    random.setstate(_as_tuple(state["python"]))
    name, key, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(key.numpy() if torch.is_tensor(key) else key, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _as_tuple(value: Any) -> Any:
    """Lists back to tuples, recursively (random.setstate wants tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


# ---------------------------------------------------------------------------------------------------- reading
def load_training_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint a run wrote (on CPU) to resume it, with clear errors for any other file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint to resume from not found: '{path}'", path)
    try:
        obj = load_checkpoint_file(path)
    except CheckpointFormatError as e:
        raise TrainingCheckpointError(str(e).replace("as a PyTorch checkpoint", "as a training checkpoint")) from e
    if not is_current_format(obj) or obj.get("optimizer") is None:
        older = isinstance(obj, dict) and "global_step" in obj and "model" in obj
        keys = sorted(map(str, obj))[:12] if isinstance(obj, dict) else type(obj).__name__
        raise TrainingCheckpointError(
            f"'{path}' is not a vimamba training checkpoint " + (
                "of the current format (an earlier vimamba version wrote it)" if older else f"(it holds {keys})")
            + "; to start a new run from its weights use --finetune (classification) or --pretrained (dense) "
            "instead of --resume")
    return obj


def restore_training_state(
    checkpoint: Mapping[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Any = None,
    scaler: Any = None,
    ema: Optional[torch.nn.Module] = None,
    restore_rng: bool = True,
) -> None:
    """Load everything a training checkpoint holds into the objects of a new process, so the run continues.

    ``model`` is the bare model (not the DDP wrapper); ``ema`` the EMA *module* (``ModelEmaV3.module``).
    Each rank restores its own RNG state when the world size is the one the checkpoint was written with.
    """
    model.load_state_dict(checkpoint["model"])
    if ema is not None:
        if checkpoint.get("model_ema") is not None:
            ema.load_state_dict(checkpoint["model_ema"])
        else:  # EMA switched on while resuming: start it from the current weights
            ema.load_state_dict(checkpoint["model"])
    if optimizer is not None and checkpoint.get("optimizer") is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler") is not None:
        scaler.load_state_dict(checkpoint["scaler"])
    rng = checkpoint.get("rng")
    if restore_rng and rng:
        rank, world = get_rank(), get_world_size()
        if len(rng) == world:
            restore_rng_state(rng[rank])
        elif is_main_process():
            print(f"note: the checkpoint was written by {len(rng)} process(es), this run has {world}: random "
                  "augmentation will not repeat the original run exactly (data order and LR schedule do)",
                  file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- writing
def prepare_output_dir(output_dir: PathLike, *, resume: Optional[PathLike] = None, overwrite: bool = False,
                       last_name: str = "last.pth", clean: Optional[bool] = None) -> Path:
    """Check that a run may write into ``output_dir`` before it starts, create it, and remove stale temporaries.

    A run's folder is its own: a new run refuses a folder that already holds a ``last.pth``, and a resumed run
    refuses one that holds the ``last.pth`` of *another* run (a folder other than the resumed checkpoint's), unless
    ``overwrite``. A file where the folder should be, or a folder that cannot be written (read-only, no permission),
    is one :class:`~vimamba.errors.FileSystemError` naming it. Temporary files that killed saves left behind (our own
    pattern only) are removed on the main process (``clean``, default: rank 0).
    """
    out = ensure_folder(output_dir, "--output folder")
    last = out / last_name
    if last.is_file() and not overwrite:
        if resume is None:
            raise UserError(f"'{out}' already holds a training run ({last}); continue it with --resume {last}, "
                            "choose another --output, or pass --overwrite to start over there")
        resume = Path(resume)
        if not (same_file(resume.parent, out) or same_file(resume, last)):
            raise UserError(f"'{out}' holds another run ({last}); resuming '{resume}' there would overwrite it. "
                            f"Resume into the checkpoint's own folder (leave out --output), choose an empty "
                            f"--output, or pass --overwrite to replace that run")
    check_writable(out)
    if is_main_process() if clean is None else clean:
        remove_stale_temporaries_in(out)
    return out


def _all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if torch.is_tensor(t) and t.is_floating_point())


class CheckpointManager:
    """Writes ``last.pth`` every time and ``best.pth`` when the tracked metric improves, atomically.

    Every rank calls :meth:`save` (it gathers each rank's RNG state); only rank 0 writes. Example::

        manager = CheckpointManager("runs/exp", metric="top1", mode="max")
        manager.save(dict(task=..., arch=..., model=..., optimizer=..., step=...), metric_value=top1)
    """

    def __init__(self, output_dir: PathLike, *, metric: str = "top1", mode: str = "max",
                 last_name: str = "last.pth", best_name: str = "best.pth", best_value: Optional[float] = None):
        if mode not in ("max", "min"):
            raise InputError(f"mode must be 'max' or 'min', got {mode!r}")
        self.output_dir = Path(output_dir)
        self.metric, self.mode = metric, mode
        self.last_path = self.output_dir / last_name
        self.best_path = self.output_dir / best_name
        self.best_value = best_value

    def is_better(self, value: Optional[float]) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.mode == "max" else value < self.best_value

    def save(self, fields: Dict[str, Any], *, metric_value: Optional[float] = None) -> List[Path]:
        """Write the checkpoint of ``fields`` (keyword arguments of :func:`~vimamba.checkpoints.make_checkpoint`
        except ``rng`` and ``best_metric``, which are added here) to ``last``, and to ``best`` if improved.

        Returns the paths written (empty on ranks other than 0). A state whose model weights are not all finite is
        refused (the previous checkpoint stays) with a :class:`TrainingCheckpointError`.
        """
        rng = all_gather_objects(capture_rng_state())  # collective: every rank must call save()
        improved = self.is_better(metric_value)
        if improved:
            self.best_value = float(metric_value)  # type: ignore[arg-type]
        if not is_main_process():
            return []
        model_state = fields.get("model") or {}
        if not _all_finite(model_state.values()):
            raise TrainingCheckpointError(
                f"refusing to overwrite '{self.last_path}': the model weights contain NaN/inf values; the previous "
                "checkpoint is intact"
            )
        payload = make_checkpoint(**fields, rng=rng,
                                  best_metric={"name": self.metric, "mode": self.mode, "value": self.best_value})
        written = [atomic_torch_save(payload, self.last_path)]
        if improved:
            self._link_or_copy(self.last_path, self.best_path)
            written.append(self.best_path)
        return written

    @staticmethod
    def _link_or_copy(source: Path, target: Path) -> None:
        """Make ``target`` hold the same bytes as ``source``: a hard link where possible (no second write)."""
        with atomic_write(target) as tmp:
            try:
                tmp.unlink()
                os.link(source, tmp)
            except OSError:
                import shutil

                shutil.copyfile(source, tmp)


# ---------------------------------------------------------------------------------------------------- signals
class GracefulInterrupt:
    """While active, SIGINT (Ctrl-C) and SIGTERM set :attr:`requested` instead of killing the process.

    The training loop polls ``interrupt.requested`` after each step; when set it saves a checkpoint and leaves.
    A second signal restores the default behaviour and re-delivers the signal: Ctrl-C twice quits at once.
    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM), message: bool = True):
        self.signals = tuple(signals)
        self.message = message
        self.requested: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    @property
    def exit_code(self) -> int:
        """The shell convention for death by signal: 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + int(self.requested) if self.requested else 0

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.requested).name if self.requested else ""

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:  # second signal: give up waiting
            self._restore()
            signal.raise_signal(signum)
            return
        self.requested = signum
        if self.message and is_main_process():
            print(f"\nreceived {signal.Signals(signum).name}: finishing the current step, saving a checkpoint, then "
                  "exiting (send it again to quit at once)", file=sys.stderr, flush=True)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> "GracefulInterrupt":
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()


def leave_signals_to_main_process(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers leave SIGINT/SIGTERM to the main process, and end when it says so.

    Ctrl-C, ``timeout``, ``kill -- -PGID`` and Slurm's ``scancel`` signal every process of the job, data workers
    included. A worker that died of it would take the run down before the main process had saved its checkpoint;
    so a worker ignores SIGINT and any SIGTERM not sent by its own main process, which saves and then shuts its
    workers down with a SIGTERM of its own (see :mod:`vimamba.data.workers`).
    """
    from ..data.workers import worker_init

    worker_init(worker_id)
