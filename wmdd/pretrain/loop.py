"""The teacher's training epoch (cross-entropy on real images)."""

from __future__ import annotations

import time
from typing import Iterable

import torch
import torch.nn as nn

from wmdd.runtime.distributed import DistContext


def train_one_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer, ctx: DistContext, *,
                    amp: bool = False, channels_last: bool = False) -> dict:
    """One pass of cross-entropy training over ``batches`` of ``(images [B,3,S,S] float32, labels [B] int64)``:
    the teacher of WMDD's pretrain stage (the torchvision reference recipe of its official
    run.sh; no equation of the paper).

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

