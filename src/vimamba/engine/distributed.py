"""Distributed training helpers: one process per device, launched by ``torchrun`` (or a plain single process).

``torchrun --nproc_per_node=8 -m vimamba.cli train ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`init_distributed` reads them, picks the device (``cuda:LOCAL_RANK`` on GPUs) and the backend (NCCL on GPU,
gloo on CPU) and returns a :class:`DistInfo`. Without those variables everything runs in one process and every
helper here degrades to a no-op, so task code calls them unconditionally::

    dist_info = init_distributed("auto")
    seed_everything(seed, rank=dist_info.rank)       # same model init everywhere, different augmentation per rank
    ...
    totals = all_reduce_sums({"loss": loss_sum, "correct": correct, "count": count}, device=dist_info.device)
    print_once(f"top-1 {100 * totals['correct'] / totals['count']:.2f}")   # printed by rank 0 only
    cleanup_distributed()
"""
from __future__ import annotations

import builtins
import os
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DistInfo", "init_distributed", "cleanup_distributed", "resolve_device", "is_distributed", "get_rank",
    "get_world_size", "is_main_process", "print_once", "barrier", "all_reduce_sums", "all_reduce_max",
    "all_gather_objects", "broadcast_object", "seed_everything", "unwrap_model",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:LOCAL_RANK`` when a GPU is there, else ``mps``, else ``cpu``; else the named device.

    Under ``torchrun`` a bare ``"cuda"`` also becomes ``cuda:LOCAL_RANK``: one GPU per process.
    """
    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        resolved = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from e
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but PyTorch sees no CUDA GPU; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {resolved} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    return resolved


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def init_distributed(device: str = "auto", timeout_s: Optional[float] = None) -> DistInfo:
    """Join the process group torchrun describes (if any) and return this process's :class:`DistInfo`.

    Backend: NCCL when the device is a CUDA GPU, gloo otherwise. With several processes on one CPU machine each
    gets an equal share of the cores (unless ``OMP_NUM_THREADS`` says otherwise), so they do not oversubscribe.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        kwargs: Dict[str, Any] = {}
        if timeout_s is not None:
            from datetime import timedelta

            kwargs["timeout"] = timedelta(seconds=timeout_s)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
        if resolved.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            local_world = _env_int("LOCAL_WORLD_SIZE", world_size)
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def print_once(*args, **kwargs) -> None:
    """``print`` on rank 0 only (always flushed, so logs interleave sensibly under torchrun)."""
    if is_main_process():
        kwargs.setdefault("flush", True)
        builtins.print(*args, **kwargs)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _reduction_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(values: Mapping[str, float], op, device: Optional[torch.device]) -> Dict[str, float]:
    if not is_distributed():
        return {k: float(v) for k, v in values.items()}
    keys = list(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device or _reduction_device())
    dist.all_reduce(tensor, op=op)
    return dict(zip(keys, tensor.tolist()))


def all_reduce_sums(values: Mapping[str, float], device: Optional[torch.device] = None) -> Dict[str, float]:
    """Sum each named number over all processes (float64, so counts of millions stay exact).

    Reduce sums and counts, then divide: the mean of per-rank means is wrong when ranks hold different counts.
    """
    return _all_reduce(values, dist.ReduceOp.SUM, device)


def all_reduce_max(values: Mapping[str, float], device: Optional[torch.device] = None) -> Dict[str, float]:
    """The maximum of each named number over all processes (e.g. "did any rank see a NaN / a stop request")."""
    return _all_reduce(values, dist.ReduceOp.MAX, device)


def all_gather_objects(obj: Any) -> List[Any]:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch (CPU and all GPUs) with ``seed + rank``; returns the seed used.

    Model initialisation should happen after ``seed_everything(seed)`` on every rank (DDP also broadcasts rank 0's
    weights); augmentation then draws different random numbers on each rank because of the ``+ rank``.
    """
    value = int(seed) + int(rank)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)  # also seeds every CUDA device
    return value


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model, (torch.nn.parallel.DistributedDataParallel,
                                                           torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
