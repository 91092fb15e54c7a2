"""Data loaders over real images shared by pretrain and train: a seeded,
resumable shuffled loader (or a split held on the device, :mod:`wmdd.data.device_split`)
and an in-order sharded evaluation loader."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from wmdd.data.device_split import DeviceSplit
from wmdd.runtime.distributed import DistContext
from wmdd.runtime.training import derive_seed


def train_loader(dataset: Dataset, *, batch_size: int, workers: int, seed: int, ctx: DistContext) -> DataLoader:
    """Shuffled loader over this rank's share of ``dataset``.

    A :class:`DistributedSampler` (also with one process) orders the data from
    ``(seed, epoch)``; call :func:`seed_epoch` before each epoch so that worker
    augmentation seeds also depend only on ``(seed, epoch, rank)``, which makes
    a resumed run equal to an uninterrupted one.
    """
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=ctx.device.type == "cuda", generator=torch.Generator(),
                      persistent_workers=False)


def seed_epoch(loader: DataLoader | DeviceSplit, seed: int, epoch: int, ctx: DistContext) -> None:
    """Fix every random choice of epoch ``epoch``: sampler order, worker seeds, and
    the main-process RNG (used by augmentation when ``workers == 0``); for a
    :class:`DeviceSplit`, its order and augmentation."""
    if isinstance(loader, DeviceSplit):
        loader.set_epoch(epoch)
    else:
        loader.sampler.set_epoch(epoch)
        loader.generator.manual_seed(derive_seed(seed, "loader", epoch, ctx.rank))
    torch.manual_seed(derive_seed(seed, "epoch", epoch, ctx.rank))


def eval_loader(dataset: Dataset, *, batch_size: int, workers: int, ctx: DistContext) -> DataLoader:
    """In-order loader over this rank's shard of ``dataset`` (no padding, so
    summed counts over ranks cover every image exactly once)."""
    return DataLoader(Subset(dataset, list(ctx.shard(len(dataset)))), batch_size=batch_size, shuffle=False,
                      num_workers=workers, pin_memory=ctx.device.type == "cuda")
