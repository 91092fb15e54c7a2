"""Per-class BatchNorm statistics through forward hooks (WMDD Sec. III-D, Eq. 6).

Works on any model with ``nn.BatchNorm2d`` layers (torchvision, timm, ours):
forward pre-hooks see each BN layer's input ``[B, C, H, W]``; no custom
BatchNorm class and no edit of the architecture.

Statistics are exact: float64 per-class sums of x and x^2 over all images and
pixels of the class, so mean = S1 / n and (biased) variance = S2 / n - mean^2.
(WMDD's code averages per-batch variances, which drops the between-batch
term.) Sums add across batches and ranks, so a ``torchrun`` pass sums them
with one all-reduce.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

from wmdd.errors import UserError
from wmdd.runtime.distributed import DistContext


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """``(module name, module)`` of every ``nn.BatchNorm2d`` (subclasses included), in
    forward-definition order; names are those of the unwrapped model."""
    model = model.module if hasattr(model, "module") else model
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


class BNInputCapture:
    """Context manager calling ``callback(layer_name, x)`` with the input
    ``x [B, C, H, W]`` of every BatchNorm2d layer during forward passes.

    Raises:
        UserError: the model has no BatchNorm2d layer.
    """

    def __init__(self, model: nn.Module, callback: Callable[[str, torch.Tensor], None]):
        self.layers = batchnorm_layers(model)
        if not self.layers:
            raise UserError(f"{type(model).__name__} has no BatchNorm2d layer, so it has no BatchNorm "
                            "statistics; use a teacher with BatchNorm (e.g. resnet18, convnet norm=batch)")
        self.callback = callback
        self._handles: list = []

    def __enter__(self) -> "BNInputCapture":
        for name, module in self.layers:
            self._handles.append(module.register_forward_pre_hook(
                lambda m, inp, name=name: self.callback(name, inp[0])))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def class_moments(x: torch.Tensor, labels: torch.Tensor,
                  num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class sums of one BN input, from which :func:`moments_to_stats` gives the real
    class statistics ``mu_{l,c}``, ``sigma^2_{l,c}`` of WMDD Eq. 6.

    Args:
        x: ``[B, C, H, W]`` activations (any float dtype).
        labels: ``[B]`` int64 class indices in ``[0, num_classes)``.
        num_classes: K.

    Returns:
        ``(s1, s2, n)``: float64 ``[K, C]`` sums of x and of x^2 over the
        images of each class and all pixels, and float64 ``[K]`` pixel counts.
    """
    xd = x.detach().to(torch.float64)
    per_image_s1 = xd.sum(dim=(2, 3))
    per_image_s2 = xd.square().sum(dim=(2, 3))
    k, c = num_classes, x.shape[1]
    s1 = torch.zeros(k, c, dtype=torch.float64, device=x.device).index_add_(0, labels, per_image_s1)
    s2 = torch.zeros(k, c, dtype=torch.float64, device=x.device).index_add_(0, labels, per_image_s2)
    pixels = torch.full((x.shape[0],), float(x.shape[2] * x.shape[3]), dtype=torch.float64, device=x.device)
    n = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(0, labels, pixels)
    return s1, s2, n


def moments_to_stats(s1: torch.Tensor, s2: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance from sums: ``s1, s2 [..., C]``, ``n [...]`` (float64) ->
    ``(mean [..., C], var [..., C])`` float64, i.e. ``mu_{l,c} = S1 / n`` and
    ``sigma^2_{l,c} = S2 / n - mu^2`` of WMDD Eq. 6 (exact; the official code averages
    per-batch variances).

    Variance is clamped at 0 against rounding.
    """
    mean = s1 / n.unsqueeze(-1)
    var = (s2 / n.unsqueeze(-1) - mean.square()).clamp_min(0)
    return mean, var


class PerClassBNStatistics:
    """Accumulates per-class moments of every BN layer's input: the real class statistics
    of WMDD Eq. 6, "computed with one epoch of forward pass over the training dataset"
    (WMDD Sec. III-D), as exact sums (see the module docstring).

    Raises:
        UserError: the model has no BatchNorm2d layer.

    Usage::

        acc = PerClassBNStatistics(model, num_classes)
        with acc:
            for x, y in loader:
                acc.set_labels(y)
                model(x)
        stats = acc.result(ctx)
    """

    def __init__(self, model: nn.Module, num_classes: int):
        self.num_classes = num_classes
        self.capture = BNInputCapture(model, self._on_input)
        self.s1: dict[str, torch.Tensor] = {}
        self.s2: dict[str, torch.Tensor] = {}
        self.n: dict[str, torch.Tensor] = {}
        self.images = torch.zeros(num_classes, dtype=torch.float64)
        self._labels: torch.Tensor | None = None

    def set_labels(self, labels: torch.Tensor) -> None:
        """Labels ``[B]`` (int64) of the batch about to go through the model.

        Raises:
            ValueError: a label outside ``[0, num_classes)``.
        """
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes})")
        self._labels = labels
        self.images += torch.bincount(labels.cpu(), minlength=self.num_classes).double()

    def _on_input(self, name: str, x: torch.Tensor) -> None:
        labels = self._labels.to(x.device)
        s1, s2, n = class_moments(x, labels, self.num_classes)
        if name not in self.s1:
            self.s1[name], self.s2[name], self.n[name] = s1, s2, n
        else:
            self.s1[name] += s1
            self.s2[name] += s2
            self.n[name] += n

    def __enter__(self) -> "PerClassBNStatistics":
        self.capture.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.capture.__exit__(*exc)

    def result(self, ctx: DistContext | None = None) -> dict:
        """Statistics summed over ranks (when ``ctx`` is distributed).

        Returns:
            A plain dict (loadable with ``torch.load(weights_only=True)``)::

                {"layers": [name, ...],                 # BN layers in order
                 "images_per_class": int64 [K],
                 "per_class_mean": {name: float64 [K, C]},
                 "per_class_var":  {name: float64 [K, C]},   # biased
                 "global_mean":    {name: float64 [C]},
                 "global_var":     {name: float64 [C]}}

        Raises:
            RuntimeError: a BN layer saw no input (no batch was run).
            UserError: a class received no image.
        """
        names = [n for n, _ in self.capture.layers]
        missing = [n for n in names if n not in self.s1]
        if missing:
            raise RuntimeError(f"BN layer {missing[0]} saw no input; run at least one batch first")
        if ctx is not None:
            ctx.all_reduce_sum(self.images)
            for name in names:
                for t in (self.s1[name], self.s2[name], self.n[name]):
                    ctx.all_reduce_sum(t)
        empty = (self.images == 0).nonzero().flatten().tolist()
        if empty:
            raise UserError(f"class indices {empty} have no training image, so they have no "
                            "BatchNorm statistics; every class needs at least one image")
        out = {"layers": names, "images_per_class": self.images.long(), "per_class_mean": {},
               "per_class_var": {}, "global_mean": {}, "global_var": {}}
        for name in names:
            s1, s2, n = self.s1[name].cpu(), self.s2[name].cpu(), self.n[name].cpu()
            out["per_class_mean"][name], out["per_class_var"][name] = moments_to_stats(s1, s2, n)
            out["global_mean"][name], out["global_var"][name] = moments_to_stats(s1.sum(0), s2.sum(0), n.sum(0))
        return out


@torch.no_grad()
def compute_bn_statistics(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                          num_classes: int, ctx: DistContext, progress: Callable | None = None) -> dict:
    """WMDD Sec. III-D's statistics pass (the targets of Eq. 6): one pass of ``model`` in eval
    mode over ``batches`` of ``(images [B,3,H,W] float32, labels [B] int64)``, returning
    :meth:`PerClassBNStatistics.result`. Under ``torchrun`` each rank passes its own shard
    and the sums are added over ranks.

    Raises:
        UserError: the model has no BatchNorm2d layer, or a class received no image.
    """
    was_training = model.training
    model.eval()
    acc = PerClassBNStatistics(model, num_classes)
    with acc:
        for images, labels in (progress(batches) if progress else batches):
            acc.set_labels(labels.to(ctx.device))
            model(images.to(ctx.device))
    model.train(was_training)
    return acc.result(ctx)
