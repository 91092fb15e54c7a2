"""Real train images of a class batch, decoded once and kept as uint8, from which
the DM-family methods draw a fresh random real batch of each class every iteration."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from wmdd.data.datasets import DatasetSpec
from wmdd.data.folders import with_transform
from wmdd.data.transforms import eval_pixels_transform, normalize


class RealPool:
    """The real images of ``classes``, evaluation geometry, uint8 in memory.

    Args:
        dataset: the real train split (its samples and targets are used; its
            transform is replaced by the uint8 evaluation transform).
        classes: class indices to load.
        spec: normalisation of the dataset.
        input_size: image side in pixels.
        workers: DataLoader workers for the one decoding pass.

    Memory: ``3 S^2`` bytes per image (CIFAR-10: 15 MB per class of 5,000).
    """

    def __init__(self, dataset: ImageFolder, classes: list[int], spec: DatasetSpec, input_size: int,
                 workers: int = 0):
        self.spec = spec
        wanted = set(classes)
        index = [i for i, t in enumerate(dataset.targets) if t in wanted]
        loader = DataLoader(Subset(with_transform(dataset, eval_pixels_transform(spec, input_size)), index),
                            batch_size=500, num_workers=workers)
        images, labels = [], []
        for x, y in loader:
            images.append(x)
            labels.append(y)
        pixels, targets = torch.cat(images), torch.cat(labels)
        self.by_class = {c: pixels[targets == c] for c in classes}

    def size(self, c: int) -> int:
        """Number of real images of class ``c``."""
        return len(self.by_class[c])

    def sample(self, c: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``min(n, size(c))`` distinct random images of class ``c`` (DM's ``get_images``):
        float32 ``[n, 3, S, S]`` normalised, on the CPU; randomness from ``generator``."""
        images = self.by_class[c]
        pick = torch.randperm(len(images), generator=generator)[:n]
        return normalize(images[pick], self.spec)
