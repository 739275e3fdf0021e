"""Samplers that make data order a function of (seed, epoch), shard it over ranks, and resume mid-epoch.

* :func:`build_train_sampler`: a shuffling sampler whose order depends only on the seed and the epoch
  (``set_epoch``) — torch's ``DistributedSampler`` (also in a single process), or timm's ``RepeatAugSampler``
  (each image repeated ``num_repeats`` times per epoch across ranks, DeiT's repeated augmentation) when
  distributed. With ``W`` ranks and per-rank batch ``b``, the union of the ranks' k-th batches is exactly the
  k-th batch of ``W * b`` images a single process would draw (rank ``r`` takes every W-th index from ``r``).
* :class:`ResumeSampler` skips the indices already consumed in the epoch a run was interrupted in, so a resumed
  run sees the rest of that epoch in the original order.
* :class:`ShardedEvalSampler` splits an evaluation set over ranks without padding or duplicates, so summed
  counts are exact.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sized

from torch.utils.data import DistributedSampler, Sampler

__all__ = ["build_train_sampler", "ResumeSampler", "ShardedEvalSampler"]


def build_train_sampler(dataset: Sized, *, seed: int, rank: int = 0, world_size: int = 1,
                        repeated_aug: bool = False, num_repeats: int = 3) -> "ResumeSampler":
    """The training sampler (wrapped in a :class:`ResumeSampler`); call ``set_epoch(epoch)`` before each epoch."""
    if repeated_aug and world_size > 1:
        from timm.data.distributed_sampler import RepeatAugSampler

        # DeiT's RASampler keeps a multiple of 256 images per epoch; tiny datasets would keep none, so keep all
        selected_round = 256 if len(dataset) >= 256 * world_size else 0
        inner = RepeatAugSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, num_repeats=num_repeats,
                                 selected_round=selected_round)
    else:
        inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                   drop_last=False)
    return ResumeSampler(inner)


class ResumeSampler(Sampler[int]):
    """Wraps an epoch-seeded sampler; ``skip(n)`` drops the first ``n`` indices of the next epoch only."""

    def __init__(self, sampler: Sampler[int]):
        self.sampler = sampler
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def skip(self, num_indices: int) -> None:
        self._skip = max(0, int(num_indices))

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        for i, index in enumerate(self.sampler):
            if i >= skip:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self._skip)  # type: ignore[arg-type]


class ShardedEvalSampler(Sampler[int]):
    """Indices ``rank, rank + W, rank + 2W, ...`` in order: every sample exactly once over all ranks."""

    def __init__(self, dataset: Sized, rank: int = 0, world_size: int = 1):
        self.num_samples = len(dataset)
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world_size))
