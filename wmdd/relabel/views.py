"""Recorded training views (FKD): every random choice of a student epoch, fixed
in advance so that the teacher (relabel) and the student (train) see exactly
the same pixels.

For epoch ``e`` of the student, :func:`plan_epoch` draws from ``(seed, e)``:

* the order of the images (a permutation; consecutive ``batch_size`` positions
  form a batch),
* each position's random-resized-crop box in its source image and its flip,
* each batch's mix: the partner of every position (a permutation inside the
  batch), the coefficient lambda and, for CutMix, the pasted box.

:class:`PlannedBatches` is a map-style dataset whose item ``(epoch, b)`` is
batch ``b`` of that epoch's plan, built from the image files exactly as
recorded, so a standard ``DataLoader`` with worker processes replays it (no
patched PyTorch).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as v1
from torchvision.transforms.v2 import functional as F

from wmdd.data.datasets import DatasetSpec
from wmdd.data.folders import load_image
from wmdd.errors import UserError
from wmdd.runtime.training import derive_seed

MIX_TYPES = ("cutmix", "mixup", "none")
RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class ViewSettings:
    """How views are drawn: FKD's relabelling views (Shen & Xing, ECCV 2022; no equation
    number on record), defaults as in WMDD's official run.sh (random-resized crop of area
    0.08-1, flip, CutMix).

    Attributes:
        batch_size: images per batch.
        input_size: view side in pixels.
        min_scale, max_scale: random-resized-crop area range (fraction of the image).
        mix_type: ``cutmix``, ``mixup`` or ``none``.
        mix_alpha: lambda ~ Beta(alpha, alpha).
    """

    batch_size: int
    input_size: int
    min_scale: float = 0.08
    max_scale: float = 1.0
    mix_type: str = "cutmix"
    mix_alpha: float = 1.0

    @classmethod
    def from_relabel_args(cls, args) -> "ViewSettings":
        """The checked settings of relabel's options: ``args.batch_size``,
        ``args.input_size`` (pixels, already resolved), ``args.min_scale_crops``,
        ``args.max_scale_crops``, ``args.mix_type`` and ``args.mix_alpha``.

        Raises:
            UserError: out-of-range settings (:meth:`check`).
        """
        settings = cls(batch_size=args.batch_size, input_size=args.input_size, min_scale=args.min_scale_crops,
                       max_scale=args.max_scale_crops, mix_type=args.mix_type, mix_alpha=args.mix_alpha)
        settings.check()
        return settings

    def check(self) -> None:
        """Raises :class:`UserError` on out-of-range settings."""
        if self.batch_size < 1 or self.input_size < 1:
            raise UserError(f"batch size and input size must be >= 1, got {self.batch_size}, {self.input_size}")
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise UserError(f"crop scales must satisfy 0 < min ({self.min_scale}) <= max ({self.max_scale}) <= 1")
        if self.mix_type not in MIX_TYPES:
            raise UserError(f"--mix-type {self.mix_type!r}: expected one of {', '.join(MIX_TYPES)}")
        if self.mix_alpha <= 0:
            raise UserError(f"--mix-alpha must be > 0, got {self.mix_alpha}")


@dataclass
class EpochPlan:
    """The random choices of one epoch over N images in B batches.

    Attributes:
        order: int64 ``[N]``, image index at each position.
        boxes: int64 ``[N, 4]``, crop (top, left, height, width) in source-image pixels.
        flips: bool ``[N]``, horizontal flip after the crop.
        partner: int64 ``[N]``, position whose view is mixed into each position (same batch).
        lam: float32 ``[B]``, weight of a position's own view (for CutMix: 1 - pasted area fraction).
        mix_boxes: int64 ``[B, 4]``, CutMix box (top, left, height, width) in view pixels.
        batch_size: positions per batch (the last batch may be smaller).
    """

    order: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor
    partner: torch.Tensor
    lam: torch.Tensor
    mix_boxes: torch.Tensor
    batch_size: int

    @property
    def num_batches(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def positions(self, b: int) -> range:
        """Positions of batch ``b``."""
        return range(b * self.batch_size, min((b + 1) * self.batch_size, len(self.order)))

    def batch_of(self, positions: torch.Tensor) -> torch.Tensor:
        """Batch index ``[n]`` of each position ``[n]``."""
        return torch.div(positions, self.batch_size, rounding_mode="floor")

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Compact named tensors for storage (int32 indices, int16 boxes when they fit)."""
        largest = int(self.boxes.max()) if self.boxes.numel() else 0
        box_dtype = torch.int16 if largest < 2 ** 15 else torch.int32
        return {"order": self.order.int(), "boxes": self.boxes.to(box_dtype), "flips": self.flips,
                "partner": self.partner.int(), "lam": self.lam, "mix_boxes": self.mix_boxes.to(box_dtype),
                "batch_size": torch.tensor(self.batch_size)}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> "EpochPlan":
        """Inverse of :meth:`to_tensors`."""
        return cls(order=t["order"].long(), boxes=t["boxes"].long(), flips=t["flips"].bool(),
                   partner=t["partner"].long(), lam=t["lam"].float(), mix_boxes=t["mix_boxes"].long(),
                   batch_size=int(t["batch_size"]))


def cutmix_box(lam: float, size: int, generator: torch.Generator | None = None
               ) -> tuple[tuple[int, int, int, int], float]:
    """CutMix box for coefficient ``lam`` in a ``size x size`` view (CutMix, Yun et al., ICCV 2019,
    as in FKD/SRe2L; no equation number on record):
    side ``size * sqrt(1 - lam)`` around a uniform random centre, clipped to the view.
    Uses ``generator`` (CPU), or the global torch RNG when it is ``None``.

    Returns:
        ``((top, left, height, width), adjusted lam = 1 - box area / view area)``.
    """
    cut = int(size * math.sqrt(1.0 - lam))
    cy, cx = torch.randint(0, size, (2,), generator=generator).tolist()
    top, bottom = max(cy - cut // 2, 0), min(cy + cut // 2, size)
    left, right = max(cx - cut // 2, 0), min(cx + cut // 2, size)
    h, w = bottom - top, right - left
    return (top, left, h, w), 1.0 - (h * w) / (size * size)


def plan_epoch(image_sizes: list[tuple[int, int]], settings: ViewSettings, seed: int, epoch: int) -> EpochPlan:
    """Draw epoch ``epoch``'s plan from ``(seed, epoch)`` alone: the crop boxes, flips and
    mixes that FKD's soft-label relabelling (Shen & Xing, ECCV 2022) fixes for an epoch.

    Args:
        image_sizes: ``(height, width)`` of each image, in image-index order.
        settings: view settings.
        seed, epoch: the plan is a function of these (and the sizes) only.

    Returns:
        The :class:`EpochPlan` (dtypes and shapes there).
    """
    n, s = len(image_sizes), settings.input_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "views", epoch))
        order = torch.randperm(n)
        boxes = torch.tensor([v1.RandomResizedCrop.get_params(torch.empty(1, 1, 1).expand(1, *image_sizes[i]),
                                                              [settings.min_scale, settings.max_scale], list(RATIO))
                              for i in order.tolist()], dtype=torch.int64).reshape(n, 4)
        flips = torch.rand(n) < 0.5
        partner = torch.empty(n, dtype=torch.int64)
        num_batches = math.ceil(n / settings.batch_size)
        lam = torch.ones(num_batches)
        mix_boxes = torch.zeros(num_batches, 4, dtype=torch.int64)
        beta = torch.distributions.Beta(settings.mix_alpha, settings.mix_alpha)
        for b in range(num_batches):
            start, stop = b * settings.batch_size, min((b + 1) * settings.batch_size, n)
            partner[start:stop] = start + torch.randperm(stop - start)
            if settings.mix_type == "none":
                continue
            value = float(beta.sample())
            if settings.mix_type == "cutmix":
                box, value = cutmix_box(value, s)
                mix_boxes[b] = torch.tensor(box)
            lam[b] = value
    return EpochPlan(order, boxes, flips, partner, lam, mix_boxes, settings.batch_size)


def read_image(path: str | Path) -> torch.Tensor:
    """Decode ``path`` (PIL) to uint8 ``[3, H, W]`` RGB.

    Raises:
        UserError: unreadable file (names it).
    """
    return F.pil_to_tensor(load_image(str(path)))


def image_sizes(paths: list[str | Path]) -> list[tuple[int, int]]:
    """``(height, width)`` of each image, read from the file headers."""
    sizes = []
    for p in paths:
        try:
            with Image.open(p) as im:
                sizes.append((im.height, im.width))
        except OSError as exc:
            raise UserError(f"{p}: cannot read image ({exc}); replace or delete the file") from None
    return sizes


def base_view(image: torch.Tensor, box: torch.Tensor, flip: bool, size: int, spec: DatasetSpec) -> torch.Tensor:
    """uint8 ``[3, H, W]`` -> crop ``box`` resized to ``size`` (bilinear, antialiased, on uint8),
    flipped if ``flip``, normalised float32 ``[3, size, size]``."""
    top, left, h, w = box.tolist()
    view = F.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    if flip:
        view = F.horizontal_flip(view)
    return F.normalize(view.float().div_(255), list(spec.mean), list(spec.std))


def mix_views(own: torch.Tensor, other: torch.Tensor, lam: float, mix_box: torch.Tensor, mix_type: str) -> torch.Tensor:
    """Mix ``other [n, 3, S, S]`` into ``own`` (same shape): CutMix (Yun et al., ICCV 2019)
    pastes ``other``'s box region, MixUp (Zhang et al., ICLR 2018) blends
    ``lam * own + (1 - lam) * other``; ``none`` returns ``own``."""
    if mix_type == "cutmix":
        top, left, h, w = mix_box.tolist()
        mixed = own.clone()
        mixed[:, :, top:top + h, left:left + w] = other[:, :, top:top + h, left:left + w]
        return mixed
    if mix_type == "mixup":
        return lam * own + (1.0 - lam) * other
    return own


def cutmix_batch(x: torch.Tensor, prob: float, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al., ICCV 2019) of a whole batch with probability ``prob`` (IDC/DANCE's training: one
    decision, one lambda ~ U(0, 1) = Beta(1, 1), one box and a random partner
    permutation per batch).

    Args:
        x: ``[B, C, S, S]`` float views.
        prob: probability of mixing this batch; 0 draws nothing from ``generator``
            (so a run without CutMix is unchanged).
        generator: CPU source of the decision, lambda, partners and box.

    Returns:
        ``(views [B, C, S, S], partner [B] int64, lam)`` where ``lam`` is the share of
        each view's own label (1 - pasted area; 1.0 and the identity partner when
        the batch is not mixed).
    """
    n = x.shape[0]
    if prob <= 0 or float(torch.rand(1, generator=generator)) >= prob:
        return x, torch.arange(n), 1.0
    lam = float(torch.rand(1, generator=generator))
    partner = torch.randperm(n, generator=generator)
    box, lam = cutmix_box(lam, x.shape[-1], generator)
    return mix_views(x, x[partner.to(x.device)], lam, torch.tensor(box), "cutmix"), partner, lam


class DrawnEpochs:
    """Epoch plans drawn on demand from ``(seed, epoch)`` (relabel; online-teacher
    and hard-label training). Picklable, so DataLoader workers draw them too."""

    def __init__(self, sizes: list[tuple[int, int]], settings: ViewSettings, seed: int):
        self.sizes, self.settings, self.seed = sizes, settings, seed

    def __call__(self, epoch: int) -> tuple[EpochPlan, torch.Tensor | None]:
        return plan_epoch(self.sizes, self.settings, self.seed, epoch), None


class PlannedBatches(Dataset):
    """FKD's replay (Shen & Xing, ECCV 2022): item ``(epoch, b)`` = the views of batch ``b``
    of epoch ``epoch``'s plan, exactly as recorded, with what the loss needs. Each worker keeps the plan of the epoch it
    is on, so one DataLoader (with its workers) serves every epoch of a run.

    Under ``torchrun`` each rank takes every ``world_size``-th position of each
    batch (starting at ``rank``), so the ranks together cover each batch once.

    Args:
        paths: image files in image-index order.
        source: ``epoch -> (EpochPlan, teacher logits [N, K] or None)``, e.g.
            :class:`DrawnEpochs` or the train stage's stored soft labels.
        spec: normalisation.
        settings: view size and mix type.
        rank, world_size: this process's share of each batch.
        images: the decoded images (uint8 ``[3, H, W]`` each, in ``paths`` order, on any device),
            to cut the views from instead of reading the files (the views are then on that device).

    Item:
        ``{"views": float32 [n, 3, S, S], "positions": int64 [n], "own": int64 [n]
        (image index), "other": int64 [n] (image index of the mixed-in partner),
        "lam": float32 [] (weight of the own view), "epoch", "batch", "batch_len":
        int64 [], and "targets": float32 [n, K] when the source has logits}``.
        ``n`` may be 0 on a rank when the batch has fewer positions than ranks.
    """

    def __init__(self, paths: list[str | Path], source, spec: DatasetSpec, settings: ViewSettings,
                 rank: int = 0, world_size: int = 1, images: list[torch.Tensor] | None = None):
        self.paths, self.source, self.spec, self.settings = [str(p) for p in paths], source, spec, settings
        self.rank, self.world_size, self.images = rank, world_size, images
        self._epoch: int | None = None
        self._plan: EpochPlan | None = None
        self._logits: torch.Tensor | None = None

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.paths) / self.settings.batch_size)

    def keys(self, epochs) -> list[tuple[int, int]]:
        """``(epoch, batch)`` of every batch of ``epochs``, in order (the loader's sampler)."""
        return [(e, b) for e in epochs for b in range(self.batches_per_epoch)]

    def plan(self, epoch: int) -> tuple[EpochPlan, torch.Tensor | None]:
        """The plan (and logits) of ``epoch``, cached for consecutive batches."""
        if self._epoch != epoch:
            self._plan, self._logits = self.source(epoch)
            self._epoch = epoch
        return self._plan, self._logits

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, b = key
        plan, logits = self.plan(epoch)
        s = self.settings.input_size
        batch = plan.positions(b)
        mine = torch.tensor(batch[self.rank::self.world_size], dtype=torch.int64)
        item = {"positions": mine, "own": plan.order[mine], "other": plan.order[plan.partner[mine]],
                "lam": plan.lam[b], "epoch": torch.tensor(epoch), "batch": torch.tensor(b),
                "batch_len": torch.tensor(len(batch))}
        if logits is not None:
            item["targets"] = logits[mine]
        if len(mine) == 0:
            item["views"] = torch.empty(0, 3, s, s)
            return item
        needed = sorted(set(mine.tolist()) | set(plan.partner[mine].tolist()))
        image = (lambda i: self.images[i]) if self.images is not None else (lambda i: read_image(self.paths[i]))
        base = {p: base_view(image(int(plan.order[p])), plan.boxes[p], bool(plan.flips[p]), s, self.spec)
                for p in needed}
        own = torch.stack([base[p] for p in mine.tolist()])
        other = torch.stack([base[p] for p in plan.partner[mine].tolist()])
        item["views"] = mix_views(own, other, float(plan.lam[b]), plan.mix_boxes[b], self.settings.mix_type)
        return item


def planned_in_process(dataset: PlannedBatches, epochs):
    """``(epoch, batches)`` pairs over ``epochs``, each batch built in this process (for a
    :class:`PlannedBatches` holding its images on the device: no worker processes, no files)."""
    for epoch in epochs:
        yield epoch, (dataset[(epoch, b)] for b in range(dataset.batches_per_epoch))


def planned_loader(dataset: PlannedBatches, epochs, workers: int, pin_memory: bool = False):
    """``(epoch, batches)`` pairs over ``epochs`` from one DataLoader: workers start
    once per run, not once per epoch (tiny distilled sets have one batch per epoch)."""
    loader = DataLoader(dataset, batch_size=None, sampler=dataset.keys(epochs), num_workers=workers,
                        pin_memory=pin_memory)
    return ((epoch, items) for epoch, items in itertools.groupby(loader, key=lambda item: int(item["epoch"])))
