"""The shared recover loop: optimise one class batch of synthetic images with a
method's per-iteration loss (see :mod:`wmdd.recover.methods`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from wmdd.recover.methods.registry import Objective, Optimisation


@dataclass(frozen=True)
class SynthesisConfig:
    """Settings of the recover optimisation.

    Attributes:
        iterations: optimiser steps.
        lr: learning rate on the pixels (normalised space).
        optimisation: optimiser (Adam with betas 0.5, 0.9, or SGD with momentum) and
            schedule (cosine decay to 0 over ``iterations``, or constant).
        log_every: record the loss every this many iterations (and the first and last).
    """

    iterations: int
    lr: float
    optimisation: Optimisation = field(default_factory=Optimisation)
    log_every: int = 50


def _optimizer(x: torch.Tensor, config: SynthesisConfig) -> torch.optim.Optimizer:
    opt = config.optimisation
    if opt.optimizer == "adam":
        return torch.optim.Adam([x], lr=config.lr, betas=(0.5, 0.9), eps=1e-8)
    if opt.optimizer == "sgd":
        return torch.optim.SGD([x], lr=config.lr, momentum=opt.momentum)
    raise ValueError(f"unknown optimizer {opt.optimizer!r}")


def synthesize(objective: Objective, init: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
               config: SynthesisConfig) -> tuple[torch.Tensor, list[dict]]:
    """Optimise ``init [G * ipc, 3, S, S]`` float32 (normalised space, grouped by class) so
    that ``objective(x, iteration)`` falls: Adam with betas (0.5, 0.9) (WMDD Tables V-VII) or
    SGD with momentum (DM family), at a cosine-decayed lr ``lr * 0.5 (1 + cos(pi it /
    iterations))`` (WMDD Tables V-VII) or a constant one (DM, Zhao & Bilen, WACV 2023).
    Pixels are clipped to ``[low, high]`` (``[1, 3, 1, 1]`` normalised pixel bounds) after
    every step as in WMDD's official code; the DM family's authors do not clip.

    Returns:
        ``(images [G * ipc, 3, S, S] float32 detached, curve)`` where ``curve`` is a
        list of ``{"iteration", "loss", "lr", <term>: value}`` records.

    Raises:
        ValueError: an unknown ``config.optimisation.optimizer``.
    """
    x = init.clone().requires_grad_(True)
    optimizer = _optimizer(x, config)
    cosine = config.optimisation.schedule == "cosine"
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: 0.5 * (1 + math.cos(math.pi * it / config.iterations)) if cosine else 1.0)
    low, high = low.to(x.device), high.to(x.device)
    curve = []
    for it in range(config.iterations):
        loss, parts = objective(x, it)
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
