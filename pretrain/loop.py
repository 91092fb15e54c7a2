"""The teacher's training epoch and the data loaders of the pretrain stage."""

from __future__ import annotations

import time
from typing import Iterable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from common.distributed import DistContext
from common.training import derive_seed


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


def seed_epoch(loader: DataLoader, seed: int, epoch: int, ctx: DistContext) -> None:
    """Fix every random choice of epoch ``epoch``: sampler order, worker seeds, and
    the main-process RNG (used by augmentation when ``workers == 0``)."""
    loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(derive_seed(seed, "loader", epoch, ctx.rank))
    torch.manual_seed(derive_seed(seed, "epoch", epoch, ctx.rank))


def eval_loader(dataset: Dataset, *, batch_size: int, workers: int, ctx: DistContext) -> DataLoader:
    """In-order loader over this rank's shard of ``dataset`` (no padding, so
    summed counts over ranks cover every image exactly once)."""
    return DataLoader(Subset(dataset, list(ctx.shard(len(dataset)))), batch_size=batch_size, shuffle=False,
                      num_workers=workers, pin_memory=ctx.device.type == "cuda")


def train_one_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer, ctx: DistContext, *,
                    amp: bool = False, channels_last: bool = False) -> dict:
    """One pass of cross-entropy training over ``batches`` of ``(images [B,3,S,S] float32, labels [B] int64)``.

    Returns:
        ``{"train_loss", "train_top1" (percent), "images", "seconds", "images_per_s"}``
        for this rank. Running sums stay on the device (no per-step host sync).
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
    count = 0
    start = time.perf_counter()
    for images, labels in batches:
        images = images.to(ctx.device, non_blocking=True)
        labels = labels.to(ctx.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
            loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(labels)
        correct += (logits.detach().argmax(1) == labels).sum()
        count += len(labels)
    seconds = time.perf_counter() - start
    return {"train_loss": float(loss_sum) / max(1, count), "train_top1": 100.0 * float(correct) / max(1, count),
            "images": count, "seconds": seconds, "images_per_s": count / max(seconds, 1e-9)}

