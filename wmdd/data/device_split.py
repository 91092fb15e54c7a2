"""A train split held on the device: its images decoded once into one uint8 tensor, then
shuffled and augmented there, batch by batch, in a fixed number of tensor operators
(no JPEG decoding, no worker processes, no host-to-device copy per batch).

The augmentation is :func:`wmdd.data.transforms.train_transform`'s recipe. Images of at
most 64 px (CIFAR, the digits, Tiny-ImageNet): resize to the input size (done once, at
decoding), a random crop of the image zero-padded by ``size // 8`` pixels (a random shift
of the content by ``-p..p`` pixels on each axis, black fill) and a horizontal flip with
probability 0.5. Larger images (Imagenette, ImageNet subsets): held as the centre square
of :func:`wmdd.data.transforms.holding_size` pixels, then a random-resized crop of
``v2.RandomResizedCrop``'s distribution (scale 0.08-1, ratio 3/4-4/3) per image, resized to
the input size by one ``roi_align`` for the batch, and the flip. Every draw comes from a
generator seeded by ``(seed, epoch, rank)``: the same distribution as the DataLoader path
(for large images, on the centre square instead of the whole image), other random numbers.
The shuffle is :class:`torch.utils.data.DistributedSampler`'s (one permutation per epoch
shared by the ranks, padded by repeating its start, rank ``r`` takes every
``world_size``-th index from ``r``), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import math
import os

import torch
from torch.utils.data import DataLoader, Subset
from torchvision.transforms import v2

from wmdd.data.datasets import SMALL_STEM_MAX_SIZE, DatasetSpec
from wmdd.data.folders import with_transform
from wmdd.data.transforms import (
    crop_resize,
    eval_pixels_transform,
    holding_pixels_transform,
    holding_size,
    random_resized_boxes,
    shift_images,
)
from wmdd.errors import UserError
from wmdd.runtime.distributed import DistContext
from wmdd.runtime.training import derive_seed

#: ``--input-pipeline`` values: ``device`` (this module), ``loader`` (a DataLoader with
#: worker processes), ``auto`` (``device`` on CUDA when the split fits, else ``loader``).
INPUT_PIPELINES = ("auto", "device", "loader")

#: The share of the free device memory (or of the available RAM on the CPU) that ``auto``
#: lets the uint8 split take.
MEMORY_SHARE = 0.25


def uint8_images(dataset, spec: DatasetSpec, size: int, workers: int, index: list[int] | None = None,
                 hold: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The split (or its images at ``index``) in the evaluation geometry (``hold``: the
    geometry a :class:`DeviceSplit` augments from, :func:`wmdd.data.transforms.holding_pixels_transform`),
    decoded in one DataLoader pass: ``(uint8 [N, 3, S, S], int64 [N])`` on the CPU, in dataset order."""
    transform = holding_pixels_transform(spec, size) if hold else eval_pixels_transform(spec, size)
    pixels = with_transform(dataset, transform)
    loader = DataLoader(pixels if index is None else Subset(pixels, index), batch_size=500, num_workers=workers)
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def split_bytes(count: int, size: int) -> int:
    """Bytes of ``count`` uint8 images of ``3 x size x size``."""
    return count * 3 * size * size


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: CUDA's free memory; on the CPU the free physical pages the OS
    reports (``sysconf``; less than what page-cache reclaim would make available, so the test
    errs on keeping data where it was), or 0 where ``sysconf`` does not report them."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


def fits_on_device(tensors: torch.Tensor | list[torch.Tensor], device: torch.device) -> bool:
    """Whether ``tensors`` (one, or a list) take at most :data:`MEMORY_SHARE` of ``device``'s free memory."""
    tensors = tensors if isinstance(tensors, list) else [tensors]
    return sum(t.numel() * t.element_size() for t in tensors) <= MEMORY_SHARE * free_memory(device)


def choose_pipeline(choice: str, spec: DatasetSpec, count: int, size: int, device: torch.device) -> str:
    """Resolve ``--input-pipeline`` to ``"device"`` or ``"loader"`` for ``count`` train images
    trained at ``size`` px (held at :func:`wmdd.data.transforms.holding_size`).

    Raises:
        UserError: ``device`` asked for a split larger than the free memory.
    """
    if choice == "loader":
        return "loader"
    need, free = split_bytes(count, holding_size(spec, size)), free_memory(device)
    if choice == "auto":
        return "device" if device.type == "cuda" and need <= MEMORY_SHARE * free else "loader"
    if need > free:
        raise UserError(f"--input-pipeline device: the train split takes {need / 2 ** 30:.1f} GiB as uint8, "
                        f"{device} has {free / 2 ** 30:.1f} GiB free; use --input-pipeline loader")
    return "device"


class DeviceSplit:
    """The train split on ``ctx.device`` (see the module docstring), iterated like the
    DataLoader of :func:`wmdd.data.loaders.train_loader` (``set_epoch``, then its batches).

    Args:
        pixels: uint8 ``[N, 3, S, S]`` in the holding geometry (:func:`uint8_images` with
            ``hold=True``; ``S`` is the input size for datasets of at most 64 px).
        labels: int64 ``[N]``.
        spec: normalisation, and whether its images are small (padded crop) or large
            (random-resized crop).
        batch_size: images per batch and rank.
        seed: the run's seed.
        ctx: rank, world size and device.
        size: output side in pixels (default ``S``; large datasets crop ``S`` down to it).

    Memory: ``3 S^2`` bytes per image on the device (CIFAR-10: 147 MiB; Imagenette at
    224 px: 9,469 x 3 x 256^2 bytes = 1.7 GiB).
    """

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, spec: DatasetSpec, *, batch_size: int,
                 seed: int, ctx: DistContext, size: int | None = None):
        self.pixels, self.labels = pixels.to(ctx.device), labels.to(ctx.device)
        self.mean = torch.tensor(spec.mean, device=ctx.device).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std, device=ctx.device).view(1, 3, 1, 1)
        self.batch_size, self.seed, self.ctx = batch_size, seed, ctx
        self.size = size or pixels.shape[-1]
        self.resized_crops = spec.image_size > SMALL_STEM_MAX_SIZE
        self.pad = max(1, pixels.shape[-1] // 8)
        self.per_rank = math.ceil(len(pixels) / ctx.world_size)
        self.epoch = 0

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return math.ceil(self.per_rank / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make iteration yield epoch ``epoch``'s batches (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def __iter__(self):
        """This rank's batches of the current epoch: ``(images [B, 3, S, S] float32
        normalised, labels [B] int64)`` on the device; the last batch may be smaller."""
        n, world = len(self.pixels), self.ctx.world_size
        order = torch.randperm(n, generator=torch.Generator().manual_seed(
            derive_seed(self.seed, "epoch-order", self.epoch)))
        order = order.repeat(math.ceil(self.per_rank * world / n))[:self.per_rank * world][self.ctx.rank::world]
        g = torch.Generator().manual_seed(derive_seed(self.seed, "epoch-augment", self.epoch, self.ctx.rank))
        if self.resized_crops:
            crops = random_resized_boxes(len(order), self.pixels.shape[-1], g)
        else:
            crops = torch.randint(-self.pad, self.pad + 1, (2, len(order)), generator=g).T  # (dx, dy) per image
        flips = torch.rand(len(order), generator=g) < 0.5
        order, crops, flips = (t.to(self.ctx.device) for t in (order, crops, flips))
        for start in range(0, len(order), self.batch_size):
            rows = slice(start, start + self.batch_size)
            index = order[rows]
            x = v2.functional.to_dtype(self.pixels[index], torch.float32, scale=True)
            if self.resized_crops:
                x = crop_resize(x, crops[rows], self.size)
            else:
                x = shift_images(x, crops[rows, 0], crops[rows, 1])
            x = torch.where(flips[rows].view(-1, 1, 1, 1), x.flip(-1), x)
            yield (x - self.mean) / self.std, self.labels[index]
