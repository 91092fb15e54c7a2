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

import math

import torch
from torchvision.ops import roi_align
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


def holding_size(spec: DatasetSpec, size: int) -> int:
    """Side (pixels) at which a device-held train split keeps its images: ``size`` for datasets
    of at most 64 px (their augmentation starts from the resized image); for larger ones the
    random-resized crops are cut from a square of ``max(round(size * 256 / 224), min(native,
    2 * size))`` pixels (Imagenette at 224 px: 256; at 32 px: 64), so that a crop of a tenth of
    the image still has about as many source pixels as the output."""
    if spec.image_size <= SMALL_STEM_MAX_SIZE:
        return size
    return max(round(size * 256 / 224), min(spec.image_size, 2 * size))


def holding_pixels_transform(spec: DatasetSpec, size: int) -> v2.Compose:
    """PIL image -> uint8 ``[3, S, S]`` with ``S = holding_size(spec, size)``: datasets of at most
    64 px resized to ``size x size`` (as :func:`train_transform` first does); larger ones resized
    (shorter side ``S``) and centre-cropped to ``S x S``, the square the device's random-resized
    crops are drawn from (the loader draws them from the whole image: the device split leaves out
    the ends of the longer side, 12.5 % of each end of a 4:3 image)."""
    hold = holding_size(spec, size)
    if spec.image_size <= SMALL_STEM_MAX_SIZE:
        return eval_pixels_transform(spec, size)
    return v2.Compose([v2.Resize(hold, antialias=True), v2.CenterCrop(hold), v2.ToImage()])


def random_resized_boxes(count: int, side: int, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                         ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10) -> torch.Tensor:
    """``count`` boxes of ``v2.RandomResizedCrop``'s distribution on a ``side x side`` image,
    drawn for all images at once: per image up to ``attempts`` (area, aspect ratio) draws, the
    first whose integer width and height fit is kept, else the whole image (torchvision's
    fallback for a square image), then a uniform integer position.

    Returns:
        float32 ``[count, 4]``: ``(x1, y1, x2, y2)`` in pixels (``x2 - x1`` the width), on the CPU.
    """
    area = side * side * torch.empty(count, attempts).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(count, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    ok = (w > 0) & (w <= side) & (h > 0) & (h <= side)
    first = torch.where(ok.any(1), ok.int().argmax(1), -1)
    rows = torch.arange(count)
    w = torch.where(first >= 0, w[rows, first.clamp(min=0)], float(side))
    h = torch.where(first >= 0, h[rows, first.clamp(min=0)], float(side))
    u = torch.rand(count, 2, generator=generator)
    x1 = torch.floor(u[:, 0] * (side - w + 1))
    y1 = torch.floor(u[:, 1] * (side - h + 1))
    return torch.stack([x1, y1, x1 + w, y1 + h], 1)


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop box i of image i and resize it to ``size x size``, for the whole batch in one
    ``torchvision.ops.roi_align`` (bilinear samples averaged over each output pixel's area,
    ``ceil(box side / size)`` samples per axis: an area average when downsampling).

    Args:
        x: float ``[N, C, H, W]``.
        boxes: float ``[N, 4]`` ``(x1, y1, x2, y2)`` in pixels of ``x``, on ``x``'s device.
        size: output side in pixels.

    Returns:
        ``[N, C, size, size]``, ``x``'s dtype.
    """
    index = torch.arange(len(x), device=x.device, dtype=x.dtype).view(-1, 1)
    return roi_align(x, torch.cat([index, boxes.to(x.dtype)], 1), output_size=size, spatial_scale=1.0,
                     sampling_ratio=-1, aligned=True)


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
