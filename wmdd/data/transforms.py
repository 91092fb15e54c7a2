"""Image transforms (torchvision transforms v2) for training and evaluation.

Small images (native side <= 64 px: CIFAR, digits, Tiny-ImageNet) are first
resized to the input size (``size x size``; a no-op, bit for bit, for an image
already at that size), then train with a padded random crop and a flip;
larger ones train with a random-resized crop (scale 0.08-1) and a flip, as in
torchvision's ImageNet reference. Evaluation resizes small images to the input
size and applies resize (input * 256/224) + centre crop to large ones. Every
transform therefore yields ``[3, size, size]`` from an image of any size (a
24 px image in a 32 px dataset, a 300x40 strip), in every stage; the recorded
views of relabel/train (:mod:`wmdd.relabel.views`) are random-resized crops, which
do the same.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from wmdd.data.datasets import SMALL_STEM_MAX_SIZE, DatasetSpec


def to_normalized_tensor(spec: DatasetSpec) -> v2.Compose:
    """PIL image -> float32 tensor ``[3, H, W]`` normalised by the spec's mean/std."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(spec.mean), list(spec.std))])


def train_transform(spec: DatasetSpec, size: int) -> v2.Compose:
    """Training augmentation: PIL image of any size -> float32 ``[3, size, size]`` (normalised).
    Large images: torchvision's ImageNet reference recipe (random-resized crop 0.08-1, flip),
    with which WMDD's official run.sh trains the teacher; small ones: padded random crop, flip."""
    if spec.image_size <= SMALL_STEM_MAX_SIZE:
        ops = [v2.Resize((size, size), antialias=True), v2.RandomCrop(size, padding=max(1, size // 8)),
               v2.RandomHorizontalFlip()]
    else:
        ops = [v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    return v2.Compose(ops + [to_normalized_tensor(spec)])


def _eval_geometry(spec: DatasetSpec, size: int) -> list:
    if spec.image_size <= SMALL_STEM_MAX_SIZE:
        return [v2.Resize((size, size), antialias=True)]
    return [v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size)]


def eval_transform(spec: DatasetSpec, size: int) -> v2.Compose:
    """Deterministic evaluation transform: PIL image of any size -> float32 ``[3, size, size]`` (normalised)."""
    return v2.Compose(_eval_geometry(spec, size) + [to_normalized_tensor(spec)])


def distilled_transform(spec: DatasetSpec, size: int) -> v2.Compose:
    """A stored distilled image (a PNG written at the input size) -> float32 ``[3, size,
    size]`` (normalised): resized to ``size x size`` when its size differs (the identity
    when it does not), never cropped, so that every stored pixel reaches the student
    (:func:`eval_transform` crops the centre of images above 64 px). Equals
    :func:`eval_transform` for datasets of 64 px and below."""
    return v2.Compose([v2.Resize((size, size), antialias=True), to_normalized_tensor(spec)])


def eval_pixels_transform(spec: DatasetSpec, size: int) -> v2.Compose:
    """:func:`eval_transform` without the normalisation: ``[3, size, size]`` uint8
    tensors (a quarter of the memory; :func:`normalize` finishes the job)."""
    return v2.Compose(_eval_geometry(spec, size) + [v2.ToImage()])


def normalize(pixels: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """uint8 pixels ``[..., 3, H, W]`` -> float32 normalised by the spec's mean/std
    (the same values :func:`to_normalized_tensor` gives)."""
    return v2.functional.normalize(v2.functional.to_dtype(pixels, torch.float32, scale=True),
                                   list(spec.mean), list(spec.std))


def shift_images(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Move image i's content right by ``dx[i]`` and down by ``dy[i]`` pixels, zero fill:
    ``x [N, C, H, W]`` (any dtype) and int64 ``dx``, ``dy`` ``[N]`` on ``x``'s device ->
    the same shape, differentiable w.r.t. ``x``. A padded random crop (``v2.RandomCrop(S,
    padding=p)``) and DSA's translation are such shifts; here they cost two gathers and one
    select for the whole batch, exact copies of the pixels (torchvision's ``crop`` takes one
    box per call)."""
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device) - dy.view(-1, 1)
    cols = torch.arange(w, device=x.device) - dx.view(-1, 1)
    inside = ((rows >= 0) & (rows < h)).view(n, 1, h, 1) & ((cols >= 0) & (cols < w)).view(n, 1, 1, w)
    out = x.gather(2, rows.clamp(0, h - 1).view(n, 1, h, 1).expand(n, c, h, w))
    out = out.gather(3, cols.clamp(0, w - 1).view(n, 1, 1, w).expand(n, c, h, w))
    return torch.where(inside, out, out.new_zeros(()))


def pixel_bounds(spec: DatasetSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised values of pixel 0 and pixel 1 per channel, each ``[1, 3, 1, 1]`` float32.

    Synthetic images live in normalised space; clipping them to these bounds
    keeps them valid images (WMDD's official code clamps after each recover step).
    """
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def denormalize(x: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """Normalised ``[B, 3, H, W]`` -> pixel values in [0, 1] (clamped)."""
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)
