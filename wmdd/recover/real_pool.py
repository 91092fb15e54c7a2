"""Real train images of a class batch, decoded once and kept as uint8 on the device, from
which the DM-family methods draw a fresh random real batch of every class each iteration
in a fixed number of operations (one random draw, one gather), whatever the number of
classes."""

from __future__ import annotations

import torch
from torchvision.datasets import ImageFolder

from wmdd.data.datasets import DatasetSpec
from wmdd.data.device_split import fits_on_device, uint8_images
from wmdd.data.transforms import normalize


class RealPool:
    """The real images of ``classes``, evaluation geometry, uint8, grouped by class in the
    order of ``classes``.

    Args:
        dataset: the real train split (its samples and targets are used; its
            transform is replaced by the uint8 evaluation transform).
        classes: class indices to load.
        spec: normalisation of the dataset.
        input_size: image side in pixels.
        workers: DataLoader workers for the one decoding pass.
        device: where the batches are returned; the pixels are kept there too when they fit in
            a quarter of its free memory (:data:`wmdd.data.device_split.MEMORY_SHARE`), else in
            host memory (each batch is then gathered there and copied).

    Memory: ``3 S^2`` bytes per image (CIFAR-10: 15 MB per class of 5,000).
    """

    def __init__(self, dataset: ImageFolder, classes: list[int], spec: DatasetSpec, input_size: int,
                 workers: int = 0, device: torch.device | str = "cpu"):
        self.spec = spec
        self.classes = list(classes)
        wanted = set(classes)
        index = [i for i, t in enumerate(dataset.targets) if t in wanted]
        pixels, targets = uint8_images(dataset, spec, input_size, workers, index)
        by_class = [pixels[targets == c] for c in self.classes]
        self.sizes = [len(p) for p in by_class]
        self.offsets = torch.tensor([0, *self.sizes[:-1]]).cumsum(0)
        self.device = torch.device(device)
        self.pixels = torch.cat(by_class)
        if fits_on_device(self.pixels, self.device):
            self.pixels = self.pixels.to(self.device)

    def size(self, c: int) -> int:
        """Number of real images of class ``c``."""
        return self.sizes[self.classes.index(c)]

    def sample(self, c: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``min(n, size(c))`` distinct random images of class ``c`` (DM's ``get_images``):
        float32 ``[min(n, size(c)), 3, S, S]`` normalised, on the pool's device; randomness from
        ``generator``."""
        j = self.classes.index(c)
        pick = torch.randperm(self.sizes[j], generator=generator)[:n] + self.offsets[j]
        return normalize(self.pixels[pick.to(self.pixels.device)].to(self.device), self.spec)

    def sample_classes(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[int]]:
        """For every class of the pool, ``min(n, size(c))`` distinct random images (DM's
        ``get_images`` per class), drawn together: one ``[G, max size]`` array of uniform keys
        from ``generator`` (on the CPU), the ``n`` smallest of each row (a uniformly random
        subset in random order), one gather on the device.

        Returns:
            ``(images [sum_c min(n, size(c)), 3, S, S] float32 normalised on the pool's device,
            grouped by class in pool order, per-class counts)``.
        """
        sizes = torch.tensor(self.sizes)
        keys = torch.rand(len(self.sizes), max(self.sizes), generator=generator)
        keys.masked_fill_(torch.arange(keys.shape[1]) >= sizes.view(-1, 1), 2.0)
        k = min(n, keys.shape[1])
        pick = keys.topk(k, dim=1, largest=False).indices + self.offsets.view(-1, 1)
        counts = sizes.clamp(max=n)
        flat = pick[torch.arange(k) < counts.view(-1, 1)]
        return normalize(self.pixels[flat.to(self.pixels.device)].to(self.device), self.spec), counts.tolist()
