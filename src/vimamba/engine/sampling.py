"""Samplers that make data order a function of (seed, epoch), shard it over ranks, and resume mid-epoch.

* :func:`build_train_sampler`: a shuffling sampler whose order depends only on the seed and the epoch
  (``set_epoch``) — torch's ``DistributedSampler`` (also in a single process), or timm's ``RepeatAugSampler``
  (each image repeated ``num_repeats`` times per epoch across ranks, DeiT's repeated augmentation) when
  distributed. With ``W`` ranks and per-rank batch ``b``, the union of the ranks' k-th batches is exactly the
  k-th batch of ``W * b`` images a single process would draw (rank ``r`` takes every W-th index from ``r``).
* :class:`ResumeSampler` skips the indices already consumed in the epoch a run was interrupted in, so a resumed
  run sees the rest of that epoch in the original order.
* :class:`SeededSamples` makes the random augmentation of each sample a function of (seed, epoch, rank, position
  in the epoch): the sampler hands each index with its own seed to the dataset, which draws the sample's random
  numbers from it. The augmentation is then the same whichever data worker (or the main process) loads the sample,
  however far workers had prefetched, and after a resume mid-epoch: a killed run that resumes repeats exactly the
  batches an uninterrupted run would have drawn (worker processes start with fresh random states, so their
  own random streams cannot be resumed).
* :class:`ShardedEvalSampler` splits an evaluation set over ranks without padding or duplicates, so summed
  counts are exact.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator, NamedTuple, Optional, Sized, Union

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

__all__ = ["build_train_sampler", "ResumeSampler", "ShardedEvalSampler", "SeededSamples", "SeededIndex",
           "sample_seed", "seeded_random_state"]


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


class SeededIndex(NamedTuple):
    """A dataset index with the seed of that sample's random augmentation."""

    index: int
    seed: int


def sample_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """The augmentation seed of the sample at ``position`` of rank ``rank``'s share of epoch ``epoch``."""
    words = [int(seed) & 0xFFFFFFFF, int(epoch), int(rank), int(position)]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@contextmanager
def seeded_random_state(seed: int):
    """Python's ``random``, NumPy's global generator and torch's CPU generator seeded from ``seed`` inside the
    block, and put back as they were afterwards (so loading a sample in the main process leaves the training
    run's random stream alone)."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


class SeededSamples(Dataset):
    """A dataset whose items are :class:`SeededIndex` pairs: ``dataset[index]`` under :func:`seeded_random_state`.

    Plain integer indices load without reseeding. Other attributes are the wrapped dataset's.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: Union[int, SeededIndex, Any]):
        if isinstance(item, tuple) and len(item) == 2:
            index, seed = item
            with seeded_random_state(int(seed)):
                return self.dataset[int(index)]
        return self.dataset[item]

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumeSampler(Sampler[int]):
    """Wraps an epoch-seeded sampler; ``skip(n)`` drops the first ``n`` indices of the next epoch only.

    After :meth:`seed_samples` it yields :class:`SeededIndex` pairs (for a :class:`SeededSamples` dataset) whose
    seeds depend on (seed, epoch, rank, position in the epoch), not on what was skipped.
    """

    def __init__(self, sampler: Sampler[int]):
        self.sampler = sampler
        self.epoch = 0
        self._skip = 0
        self._seeding: Optional[tuple] = None

    def seed_samples(self, seed: int, rank: int = 0) -> "ResumeSampler":
        self._seeding = (int(seed), int(rank))
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def skip(self, num_indices: int) -> None:
        self._skip = max(0, int(num_indices))

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        epoch, seeding = self.epoch, self._seeding
        for i, index in enumerate(self.sampler):
            if i >= skip:
                yield index if seeding is None else SeededIndex(int(index), sample_seed(seeding[0], epoch,
                                                                                        seeding[1], i))

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
