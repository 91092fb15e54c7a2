"""Batches grouped by class: ``sizes[j]`` consecutive images of the batch's class ``j``.

The DM family reduces every per-class quantity of an iteration (mean embeddings, channel
moments, Gram matrices) over the classes of a batch at once, so that one iteration is a
fixed number of operations whatever the number of classes: a reshape when the classes
are equal-sized, one ``index_add`` otherwise.
"""

from __future__ import annotations

import torch


def class_index(sizes: list[int]) -> torch.Tensor:
    """``[sum(sizes)]`` int64 on the CPU: the class position ``j`` of each image of a batch
    grouped by class with ``sizes[j]`` images of class ``j``.

    Raises:
        ValueError: ``sizes`` empty or holding a negative count.
    """
    if not sizes or min(sizes) < 0:
        raise ValueError(f"class sizes must be a non-empty list of counts >= 0, got {sizes}")
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


def class_sum(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Per-class sums of a batch grouped by class: ``x [sum(sizes), *]`` -> ``[G, *]`` in
    ``x``'s dtype (differentiable; a class of size 0 sums to 0).

    Raises:
        ValueError: ``x`` does not have ``sum(sizes)`` rows, or as :func:`class_index`.
    """
    if x.shape[0] != sum(sizes):
        raise ValueError(f"a batch of {x.shape[0]} rows for classes of sizes {sizes}")
    if min(sizes) == max(sizes):
        return x.reshape(len(sizes), sizes[0], *x.shape[1:]).sum(dim=1)
    out = x.new_zeros(len(sizes), *x.shape[1:])
    return out.index_add(0, class_index(sizes).to(x.device), x)


def class_mean(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Per-class means of a batch grouped by class: ``x [sum(sizes), *]`` -> ``[G, *]``
    float32 (float64 for float64 input), differentiable.

    Raises:
        ValueError: a class of size 0, or as :func:`class_sum`.
    """
    if min(sizes, default=0) < 1:
        raise ValueError(f"every class needs at least one image, got sizes {sizes}")
    x = x if x.dtype == torch.float64 else x.float()
    if min(sizes) == max(sizes):
        return x.reshape(len(sizes), sizes[0], *x.shape[1:]).mean(dim=1)
    counts = torch.tensor(sizes, dtype=x.dtype, device=x.device)
    return class_sum(x, sizes) / counts.view(-1, *([1] * (x.ndim - 1)))
