"""The data side of a run: datasets from a recipe, the per-epoch index batches, the loaders,
and how many threads and loader workers a process gets.

Owns :func:`datasets` (the recipe's keys → :func:`mixpro.data.factory.training_data`),
:class:`EpochBatches` (a resumed epoch skips trained batches without loading them),
:func:`loaders` and :func:`auto_threads` / :func:`auto_workers`.
"""

from __future__ import annotations

import itertools
import os

from torch.utils.data import BatchSampler, DistributedSampler

from mixpro.data.factory import TrainingData, is_fashion_mnist, training_data
from mixpro.data.loading import DatasetLoader

from . import distributed
from .recipe import Recipe


def auto_threads(world: int = 1, workers: int = 0) -> int:
    """Intra-op threads: the cores per process, minus one left to the loader workers when
    there are any (the in-memory Fashion-MNIST loader has none: 2 threads train the default
    ViT ~1.5x faster than 1 on a 2-core machine)."""
    cpus = max(1, (os.cpu_count() or 1) // world)
    return max(1, cpus - 1) if workers > 0 else cpus


def auto_workers(cfg: Recipe, world: int) -> int:
    if cfg.workers is not None:
        return cfg.workers
    if is_fashion_mnist(cfg.data):
        return 0  # in memory, batched indexing: workers only add overhead
    return max(1, min(8, (os.cpu_count() or 1) // world - 1))


def datasets(cfg: Recipe) -> TrainingData:
    return training_data(
        cfg.data, img_size=cfg.img_size, in_chans=cfg.in_channels, data_dir=cfg.data_dir,
        translate=cfg.translate, hflip=cfg.hflip, auto_augment=cfg.aa, re_prob=cfg.re_prob,
        interpolation=cfg.interpolation, crop_pct=cfg.crop_pct, train_subset=cfg.train_subset,
        subset_seed=cfg.subset_seed, holdout_classes=cfg.holdout_classes,
        train_split=cfg.train_split, val_split=cfg.val_split)


class EpochBatches:
    """The index batches of one epoch from step ``start`` up to ``stop`` (exclusive): a
    resumed epoch skips the batches already trained without loading them, and the loader
    never fetches a batch past ``max_steps``."""

    def __init__(self, batches: BatchSampler, stop: int) -> None:
        self.batches, self.start, self.stop = batches, 0, stop

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.start, self.stop)

    def __len__(self) -> int:
        return max(0, min(self.stop, len(self.batches)) - self.start)


def loaders(cfg: Recipe, train, test, batched: bool, info: distributed.DistInfo):
    workers = auto_workers(cfg, info.world)
    sampler = DistributedSampler(train, num_replicas=info.world, rank=info.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    full = BatchSampler(sampler, cfg.batch_size, drop_last=True)
    steps = len(full) if cfg.max_steps is None else min(len(full), cfg.max_steps)
    batches = EpochBatches(full, steps)
    shard = range(info.rank, len(test), info.world)
    pin = info.device.type == "cuda"
    common = dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    if batched:  # dataset[list_of_indices] -> a whole batch
        tl = DatasetLoader(train, batch_size=None, sampler=batches, **common)
        vl = DatasetLoader(test, batch_size=None,
                           sampler=BatchSampler(shard, cfg.eval_batch_size, drop_last=False),
                           **common)
    else:
        tl = DatasetLoader(train, batch_sampler=batches, **common)
        vl = DatasetLoader(test, batch_size=cfg.eval_batch_size, sampler=list(shard), **common)
    return tl, vl, sampler, batches
