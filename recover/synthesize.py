"""Optimisation of one batch of synthetic images (WMDD/SRe2L recover loop)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from recover.losses import RecoverObjective


@dataclass(frozen=True)
class SynthesisConfig:
    """Settings of the recover optimisation.

    Attributes:
        iterations: optimiser steps.
        lr: Adam learning rate (betas 0.5, 0.9), cosine-decayed to 0 over ``iterations``.
        min_scale, max_scale: area range of the per-iteration random-resized crop.
        random_crop: apply the random-resized crop (WMDD/SRe2L on ImageNet-sized images;
            SRe2L's CIFAR recipe has only the roll).
        flip: apply the random horizontal flip.
        jitter: maximum random roll in pixels (0 to ``jitter`` on each axis, as WMDD's code).
        amp: bf16 autocast of the teacher forward.
        channels_last: channels_last memory format for the teacher input.
        log_every: record the loss every this many iterations (and the first and last).
    """

    iterations: int
    lr: float
    min_scale: float = 0.08
    max_scale: float = 1.0
    random_crop: bool = True
    flip: bool = True
    jitter: int = 4
    amp: bool = False
    channels_last: bool = False
    log_every: int = 50


def augment(x: torch.Tensor, config: SynthesisConfig) -> torch.Tensor:
    """One random view of the whole batch ``x [B, 3, S, S]`` (differentiable): the same
    random-resized crop (area ``[min_scale, max_scale]``) and horizontal flip for every
    image, as in SRe2L/WMDD (each switchable), then a random roll by 0 to ``jitter``
    pixels on each axis (wrapping around). Uses the global torch RNG."""
    view = x
    if config.random_crop:
        view = v2.RandomResizedCrop(x.shape[-1], scale=(config.min_scale, config.max_scale), antialias=False)(view)
    if config.flip:
        view = v2.RandomHorizontalFlip()(view)
    jitter = config.jitter
    if jitter > 0:
        dy, dx = torch.randint(0, jitter + 1, (2,)).tolist()
        view = torch.roll(view, shifts=(dy, dx), dims=(2, 3))
    return view


def synthesize(objective: RecoverObjective, init: torch.Tensor, classes: torch.Tensor,
               support: torch.Tensor | None, low: torch.Tensor, high: torch.Tensor,
               config: SynthesisConfig) -> tuple[torch.Tensor, list[dict]]:
    """Optimise ``init [G * ipc, 3, S, S]`` (normalised space, grouped by class) so that
    the teacher's loss (:class:`RecoverObjective`) falls; pixels are clipped to
    ``[low, high]`` (``[1, 3, 1, 1]`` normalised pixel bounds) after every step.

    Returns:
        ``(images [G * ipc, 3, S, S] float32 detached, curve)`` where ``curve`` is a
        list of ``{"iteration", "loss", "lr", <term>: value}`` records.
    """
    x = init.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=config.lr, betas=(0.5, 0.9), eps=1e-8)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: 0.5 * (1 + math.cos(math.pi * it / config.iterations)))
    low, high = low.to(x.device), high.to(x.device)
    curve = []
    for it in range(config.iterations):
        view = augment(x, config)
        if config.channels_last:
            view = view.contiguous(memory_format=torch.channels_last)
        loss, parts = objective(view, classes, support, amp=config.amp)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            x.clamp_(low, high)
        if it == 0 or it == config.iterations - 1 or (it + 1) % config.log_every == 0:
            curve.append({"iteration": it, "loss": float(loss.detach()), "lr": lr,
                          **{k: float(v) for k, v in parts.items()}})
    return x.detach(), curve
