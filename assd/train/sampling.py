"""Reproducible sample order and augmentation, so a resumed run continues exactly.

* ``ResumableSampler``: torch's ``DistributedSampler`` (shuffle seeded by ``seed + epoch``, one shard per
  process) that can start part-way into an epoch and yields ``(epoch, index)`` keys.
* ``SeededSamples``: wraps a dataset; ``samples[(epoch, index)]`` runs the dataset's (random)
  augmentation under RNGs seeded by ``(seed, epoch, index)``.

Together the batches of step k of epoch e are the same whatever happened before (a fresh run, a resumed
one, 0 or 8 DataLoader workers), which is what ``--resume`` needs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` yielding ``(epoch, index)``; ``set_position(epoch, skip)`` drops the first
    ``skip`` samples of this shard's order for ``epoch`` (those already trained on)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=False)
        self.skip = 0

    def set_position(self, epoch: int, skip: int = 0) -> None:
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.skip:]
        return iter([(self.epoch, index) for index in indices])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 32-bit seed for one sample of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededSamples(Dataset):
    """``dataset`` addressed by ``(epoch, index)``: every sample is drawn under fresh RNG states seeded by
    ``(seed, epoch, index)`` (torch, numpy and ``random``; torchvision's transforms use torch's), and the
    caller's RNG states are left as they were."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        seed = sample_seed(self.seed, epoch, index)
        torch_state, numpy_state, random_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
        torch.default_generator.manual_seed(seed)  # CPU generator only: CUDA RNGs are untouched
        np.random.seed(seed)
        random.seed(seed)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(torch_state)
            np.random.set_state(numpy_state)
            random.setstate(random_state)
