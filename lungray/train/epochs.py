"""Which training images each epoch sees, and in which order: the steps per epoch
(:func:`epoch_plan`), a per-epoch shuffle (or class-weighted draw) that depends only on
(seed, epoch) so a resumed trial replays it exactly (:class:`EpochSampler`), the tag that lets
one DataLoader with persistent workers serve every epoch (:class:`EpochTagged`), and Keras'
``steps_per_epoch`` stream (:class:`StepStream`, study 5, PROTOCOLS.md section 5).

One subject of the trial loop (issue 22.2); :mod:`lungray.train.loop` re-exports these names.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from lungray.errors import ConfigError


def epoch_plan(n_train: int, batch_size: int, world_size: int = 1) -> tuple[int, bool]:
    """(optimisation steps per epoch per rank, drop_last) for ``n_train`` images.

    Each rank sees ``ceil(n / world_size)`` samples. A last batch of exactly one image is
    dropped (``drop_last``): batch norm cannot normalise a batch of one in training mode, and
    with the per-epoch shuffle a different image is left out each epoch.
    """
    if n_train < 1 or batch_size < 1:
        raise ConfigError(
            f"training size {n_train} with batch size {batch_size} gives zero optimisation steps; "
            "set schedule.batch_size/epochs (or size_rules/max_steps) >= 1"
        )
    per_rank = math.ceil(n_train / world_size)
    drop_last = per_rank > 1 and per_rank % batch_size == 1
    steps = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
    return steps, drop_last


class EpochSampler:
    """Shuffled (or class-weighted, with replacement) indices for one epoch, sharded by rank.

    The order of epoch e depends only on (seed, e), never on earlier epochs, so a resumed run
    replays it exactly; sharding is DistributedSampler's (pad by wrapping, take ``rank::world``)
    so each rank sees a disjoint slice of the same permutation.
    """

    def __init__(self, n: int, seed: int, *, weights: Optional[np.ndarray] = None, rank: int = 0, world_size: int = 1):
        self.n = int(n)
        self.seed = int(seed)
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.per_rank = math.ceil(self.n / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> list[int]:
        import torch

        from lungray.train.device import torch_generator

        g = torch_generator(self.seed, self.epoch, stream=1)
        if self.weights is not None:
            idx = torch.multinomial(torch.as_tensor(self.weights), self.n, replacement=True, generator=g)
        else:
            idx = torch.randperm(self.n, generator=g)
        idx = idx.tolist()
        total = self.per_rank * self.world_size
        if total > len(idx):
            idx = idx + idx[: total - len(idx)]
        return idx[self.rank : total : self.world_size]

    def __iter__(self):
        return iter(self.indices())

    def __len__(self) -> int:
        return self.per_rank


class EpochTagged:
    """A sampler that yields ``(epoch, i)`` for each ``i`` of ``sampler``'s current epoch.

    Lets one DataLoader with persistent workers serve every epoch: the sampler is iterated
    in the main process (where ``set_epoch`` is called), and the epoch travels with each
    index to the worker's copy of the dataset (:meth:`ImageDataset.__getitem__`). Building a
    DataLoader per epoch instead re-spawns its workers every epoch (``bench/bench_data.py``).
    """

    def __init__(self, sampler: EpochSampler):
        self.sampler = sampler

    def __iter__(self):
        e = self.sampler.epoch
        return iter([(e, i) for i in self.sampler.indices()])

    def __len__(self) -> int:
        return len(self.sampler)


class StepStream:
    """Epochs of ``steps`` batches cut from one endless stream of shuffled passes: Keras'
    ``fit(generator, steps_per_epoch=steps)`` (``schedule.steps_per_epoch``; study 5's code ran
    "epochs" of 9 steps, PROTOCOLS.md section 5).

    Pass ``p`` (0-based) is :class:`EpochSampler`'s order for epoch ``p + 1`` (shuffled, or
    class-weighted with replacement) cut into ``ceil(n / batch_size)`` batches, the last one
    short as Keras' iterator makes it (a last batch of exactly one image is dropped, as
    :func:`epoch_plan` does: batch norm cannot train on it). Epoch ``e`` (1-based) is global
    batches ``(e - 1) * steps ... e * steps - 1`` of the stream, so consecutive epochs walk
    through a pass and into the next one, and epoch ``e`` depends only on (seed, e): a resumed
    run replays it exactly. A batch sampler: it yields lists of ``(pass, i)``, the pass keying
    each image's augmentation draw (every image appears once per pass). One process only
    (validation refuses ``steps_per_epoch`` with DDP workers).

    >>> s = StepStream(5, batch_size=3, steps=3, seed=0)  # a pass is batches of 3 and 2
    >>> s.set_epoch(1); [len(b) for b in s], [b[0][0] for b in s]  # (batch sizes, their pass)
    ([3, 2, 3], [0, 0, 1])
    >>> s.set_epoch(2); [len(b) for b in s], [b[0][0] for b in s]
    ([2, 3, 2], [1, 2, 2])
    >>> StepStream(5, batch_size=2, steps=1, seed=0).per_pass  # 2, 2 and a dropped 1
    2
    """

    def __init__(self, n: int, batch_size: int, steps: int, seed: int, *, weights: Optional[np.ndarray] = None):
        self.order = EpochSampler(n, seed, weights=weights)
        self.n, self.batch_size, self.steps = int(n), int(batch_size), int(steps)
        sizes = [min(self.batch_size, self.n - i) for i in range(0, self.n, self.batch_size)]
        if len(sizes) > 1 and sizes[-1] == 1:
            sizes = sizes[:-1]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.per_pass = len(sizes)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self) -> list[list[tuple[int, int]]]:
        out: list[list[tuple[int, int]]] = []
        cache: dict[int, list[int]] = {}
        first = (max(self.epoch, 1) - 1) * self.steps
        for g in range(first, first + self.steps):
            p, j = divmod(g, self.per_pass)
            if p not in cache:
                self.order.set_epoch(p + 1)
                cache[p] = self.order.indices()
            out.append([(p, i) for i in cache[p][self.starts[j] : self.starts[j + 1]]])
        return out

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return self.steps
