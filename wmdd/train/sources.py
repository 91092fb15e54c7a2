"""The student's label sources, registered by name: what one training run trains on and how a
batch becomes a loss. :func:`wmdd.train.student.training_mode` picks one from the options given;
:class:`wmdd.train.student.StudentRun` delegates to it.

=========  ===========================================================================================
``soft``   recorded views (relabel's plans) with the teacher's stored soft labels: FKD's KL at
           temperature T (``--soft-labels``)
``online`` views drawn now, labelled by a teacher run on them (``--online-teacher``)
``hard``   views drawn now, folder labels mixed by CutMix/MixUp (``--hard-labels``)
``dsa``    ``--protocol dsa``/``dance``: the (decoded) images in memory, one DSA draw per image and
           batch, folder labels, CutMix with ``--cutmix-prob``
``real``   a full real train split (``--train-dir``) with pseudo labels from a CSV or folder labels,
           plus KD from ``--online-teacher`` when given
=========  ===========================================================================================
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterator

import torch
import torch.nn as nn

from wmdd.data.datasets import DatasetSpec, get_spec
from wmdd.data.device_split import fits_on_device
from wmdd.data.folders import image_folder, with_transform
from wmdd.data.loaders import seed_epoch, train_loader
from wmdd.data.transforms import train_transform
from wmdd.errors import UserError
from wmdd.io.manifest import MANIFEST
from wmdd.models.teacher import teacher_sha256
from wmdd.recover.dsa import DSAParams, augment
from wmdd.recover.multiformation import recorded_factor, refuse_tiled
from wmdd.relabel.soft_labels import SoftLabels
from wmdd.relabel.views import (
    DrawnEpochs,
    PlannedBatches,
    ViewSettings,
    cutmix_batch,
    image_sizes,
    planned_in_process,
    planned_loader,
    read_image,
)
from wmdd.runtime.training import derive_seed
from wmdd.train.data import load_decoded, load_image_set, load_sample_weights, recorded_input_size, relabelled
from wmdd.train.losses import kd_loss, mixed_cross_entropy
from wmdd.train.pseudo_labels import parse_pseudo_label_csv, summarize

if TYPE_CHECKING:
    from wmdd.train.student import StudentRun

log = logging.getLogger("wmdd.train")

#: Options that set views drawn now (FKD); recorded soft labels fix them, DSA replaces them.
VIEW_OPTIONS = ("min_scale_crops", "max_scale_crops", "mix_type", "mix_alpha")

SOURCES: dict[str, type[LabelSource]] = {}


def register_source(cls: type[LabelSource]) -> type[LabelSource]:
    """Class decorator: register a label source under ``cls.name``."""
    SOURCES[cls.name] = cls
    return cls


class LabelSource:
    """One way of getting a student's training images and targets.

    ``setup`` sets the run's ``classes``, ``spec`` (:class:`DatasetSpec`) and ``input_size`` (pixels);
    ``epochs(start)`` yields ``(epoch, batches)``; ``loss(model, batch)`` returns the batch's loss and
    its number of images on this rank, or ``(None, 0)`` for a batch all ranks skip.
    """

    name: ClassVar[str]

    def __init__(self, run: StudentRun):
        self.run, self.args = run, run.args

    def setup(self) -> None:
        raise NotImplementedError

    def num_images(self) -> int:
        """Stored images."""
        return len(self.run.images.files)

    def training_images(self) -> int:
        """Images one epoch trains on."""
        return self.num_images()

    def epochs(self, start: int) -> Iterator:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor | None, int]:
        raise NotImplementedError

    def _spec_from_args(self) -> DatasetSpec:
        if self.run.teacher is not None:
            return self.run.teacher.spec
        if not self.args.dataset:
            raise UserError("--dataset is required with --hard-labels or --train-dir (it sets the normalisation "
                            "and the model stem); e.g. --dataset cifar10")
        return get_spec(self.args.dataset)

    def _load_weights(self) -> None:
        """Per-image weights (recover's ``sample_weights.csv`` or ``--sample-weights``) into ``run.weights``."""
        args, run = self.args, self.run
        weights_file = args.sample_weights or (run.images.root.parent / "sample_weights.csv")
        if not args.no_sample_weights and (args.sample_weights or Path(weights_file).is_file()):
            run.weights = load_sample_weights(weights_file, run.images)
            log.info("per-image weights from %s (min %.3f, max %.3f)", weights_file, float(run.weights.min()),
                     float(run.weights.max()))

    def _mixed_weights(self, lam: torch.Tensor | float, own: torch.Tensor, other: torch.Tensor) -> torch.Tensor | None:
        weights = self.run.weights
        if weights is None:
            return None
        return (lam * weights[own] + (1 - lam) * weights[other]).to(self.run.ctx.device)


class PlannedViews(LabelSource):
    """FKD's views of the distilled images (recorded by relabel, or drawn now with the same plan):
    ``batch = {"views" [n, 3, S, S] float32, "own"/"other" [n] int64 (CutMix/MixUp partners),
    "lam" (own share), "batch_len", and "targets" (stored logits) for ``soft``}``."""

    def setup(self) -> None:
        args, run = self.args, self.run
        run.images = load_image_set(args.images)
        refuse_tiled(run.images.root, "train --protocol fkd")
        run.classes = run.images.classes
        self._settings()
        if run.teacher is not None and run.teacher.classes != run.classes:
            raise UserError(f"{args.images}: class folders differ from the teacher's ({run.teacher.path})")
        run.input_size = run.settings.input_size
        self._load_weights()

    def _settings(self) -> None:
        """Views drawn now: the dataset's (or teacher's) normalisation, ``--input-size`` and view options."""
        args, run = self.args, self.run
        run.spec = self._spec_from_args()
        size = args.input_size or (run.teacher.input_size if run.teacher else run.spec.image_size)
        given = {name: getattr(args, option) for name, option in
                 (("min_scale", "min_scale_crops"), ("max_scale", "max_scale_crops"), ("mix_type", "mix_type"),
                  ("mix_alpha", "mix_alpha")) if getattr(args, option) is not None}
        run.settings = dataclasses.replace(ViewSettings(batch_size=args.batch_size, input_size=size), **given)
        run.settings.check()
        self.sizes = image_sizes(run.images.paths)

    def _plans(self):
        return DrawnEpochs(self.sizes, self.run.settings, self.args.seed)

    def epochs(self, start: int) -> Iterator:
        """``(epoch, batches)`` from ``start`` on: the views cut from the files by DataLoader workers, or,
        with ``--input-pipeline device`` (``auto`` on CUDA when the images fit), from the images decoded
        once and held on the device, in this process (the same views: the same crops of the same pixels)."""
        run, ctx, args = self.run, self.run.ctx, self.args
        images = None
        choice = args.input_pipeline
        if choice == "device" or (choice == "auto" and ctx.device.type == "cuda"):
            decoded = [read_image(p) for p in run.images.paths]
            if choice == "device" or fits_on_device(decoded, ctx.device):
                images = [image.to(ctx.device) for image in decoded]
        dataset = PlannedBatches(run.images.paths, self._plans(), run.spec, run.settings, ctx.rank, ctx.world_size,
                                 images=images)
        epochs = range(start, args.epochs)
        if images is not None:
            yield from planned_in_process(dataset, epochs)
        else:
            yield from planned_loader(dataset, epochs, args.workers, ctx.device.type == "cuda")

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor | None, int]:
        if int(batch["batch_len"]) < self.run.ctx.world_size:
            return None, 0
        views = batch["views"].to(self.run.ctx.device, non_blocking=True)
        own, other = batch["own"], batch["other"]
        lam = batch["lam"].expand(len(own))
        return self._batch_loss(self.run.forward(model, views), views, batch, own, other, lam), len(own)

    def _batch_loss(self, out, views, batch, own, other, lam) -> torch.Tensor:
        raise NotImplementedError


@register_source
class SoftLabelViews(PlannedViews):
    """``soft``: relabel's recorded views with the teacher's stored top-k logits (FKD; WMDD/SRe2L
    relabel), KL at temperature T (:func:`wmdd.train.losses.kd_loss`)."""

    name = "soft"

    def _settings(self) -> None:
        args, run = self.args, self.run
        run.soft = SoftLabels(args.soft_labels)
        given = [k for k in VIEW_OPTIONS if getattr(args, k) is not None]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')}: views are fixed by the recorded soft labels "
                            f"({run.soft.dir}); drop the option or re-run relabel")
        teacher_sha = teacher_sha256(args.teacher) if args.teacher else None
        run.soft.check(batch_size=args.batch_size, epochs=args.epochs, images_dir=run.images.root,
                       files=run.images.files, images_sha256=run.images.sha256(), input_size=args.input_size,
                       teacher_sha256=teacher_sha)
        if run.soft.meta["classes"] != run.classes:
            raise UserError(f"{args.images}: class folders differ from the soft labels' classes")
        run.spec = DatasetSpec.from_dict(run.soft.meta["dataset"])
        run.settings = run.soft.settings

    def _plans(self):
        return self.run.soft

    def _batch_loss(self, out, views, batch, own, other, lam) -> torch.Tensor:
        return kd_loss(out, batch["targets"].to(self.run.ctx.device), self.args.temperature,
                       self._mixed_weights(lam, own, other))


@register_source
class OnlineTeacherViews(PlannedViews):
    """``online``: views drawn now, labelled by ``--online-teacher`` run on them (KL at temperature T)."""

    name = "online"

    def _batch_loss(self, out, views, batch, own, other, lam) -> torch.Tensor:
        return kd_loss(out, self.run.teach(views), self.args.temperature, self._mixed_weights(lam, own, other))


@register_source
class HardLabelViews(PlannedViews):
    """``hard``: views drawn now with folder labels, mixed like the views
    (:func:`wmdd.train.losses.mixed_cross_entropy`)."""

    name = "hard"

    def _batch_loss(self, out, views, batch, own, other, lam) -> torch.Tensor:
        dev, labels = self.run.ctx.device, self.run.images.labels
        return mixed_cross_entropy(out, labels[own].to(dev), labels[other].to(dev), lam.to(dev),
                                   self._mixed_weights(lam, own, other))


@register_source
class DSAImages(LabelSource):
    """``dsa`` (``--protocol dsa``/``dance``): the distilled images in memory, decoded when ``--factor``
    > 1 (:func:`wmdd.recover.multiformation.decode`: normalised ``[N * factor**2, 3, S, S]`` float32;
    S = ``--input-size``, else the size the recover run recorded, else the dataset's), on the device
    when they fit in a quarter of its free memory and ``--input-pipeline`` is not ``loader`` (batches
    are then gathered, augmented and mixed there), each stored image's folder label and weight
    repeated for its decoded images; DSA (Zhao & Bilen 2021) per image."""

    name = "dsa"

    def setup(self) -> None:
        args, run = self.args, self.run
        run.images = load_image_set(args.images)
        run.classes = run.images.classes
        run.spec = self._spec_from_args()
        run.input_size = args.input_size or recorded_input_size(args.images) or run.spec.image_size
        check_factor(run.images.root, args.factor)
        tiles = args.factor ** 2
        self.pixels = load_decoded(run.images.paths, run.spec, run.input_size, args.factor)
        if args.input_pipeline != "loader" and fits_on_device(self.pixels, run.ctx.device):
            self.pixels = self.pixels.to(run.ctx.device)  # batches gathered and augmented on the device
        self.labels = run.images.labels.repeat_interleave(tiles)
        self.dsa = DSAParams(strategy=args.dsa_strategy)
        self._load_weights()
        if run.weights is not None:
            run.weights = run.weights.repeat_interleave(tiles)

    def training_images(self) -> int:
        """The decoded images: ``num_images() * factor**2``."""
        return len(self.pixels)

    def epoch_batches(self, epoch: int) -> Iterator[dict]:
        """The batches of one epoch: a seeded permutation of the (decoded) images cut into
        ``--batch-size`` batches, each augmented by one per-image DSA draw
        (:func:`wmdd.recover.dsa.augment`), then mixed by CutMix with probability ``--cutmix-prob``
        (:func:`wmdd.relabel.views.cutmix_batch`; 0 draws nothing), and split over the ranks (rank r
        takes positions r, r+W, ...). Yields ``{"views" [n_r, 3, S, S], "index" [n_r] int64, "other"
        [n_r] int64 (the CutMix partner's image), "lam" (own-label share), "batch_len"}``."""
        args, ctx = self.args, self.run.ctx
        generator = torch.Generator().manual_seed(derive_seed(args.seed, "dsa-epoch", epoch))
        order = torch.randperm(len(self.pixels), generator=generator)
        for index in order.split(args.batch_size):
            views = augment(self.pixels[index.to(self.pixels.device)], self.dsa, generator)
            views, partner, lam = cutmix_batch(views, args.cutmix_prob, generator)
            yield {"views": views[ctx.rank::ctx.world_size], "index": index[ctx.rank::ctx.world_size],
                   "other": index[partner][ctx.rank::ctx.world_size], "lam": lam, "batch_len": len(index)}

    def epochs(self, start: int) -> Iterator:
        for epoch in range(start, self.args.epochs):
            yield epoch, self.epoch_batches(epoch)

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor | None, int]:
        if int(batch["batch_len"]) < self.run.ctx.world_size:
            return None, 0
        dev = self.run.ctx.device
        index, other, lam = batch["index"], batch["other"], batch["lam"]
        out = self.run.forward(model, batch["views"].to(dev))
        loss = mixed_cross_entropy(out, self.labels[index].to(dev), self.labels[other].to(dev),
                                   torch.full((len(index),), lam, device=dev), self._mixed_weights(lam, index, other))
        return loss, len(index)


@register_source
class RealImages(LabelSource):
    """``real``: a full real train split (``--train-dir``) with labels from ``--pseudo-label-csv`` or
    the folders (``--hard-labels``); cross-entropy plus ``--kd-weight`` x KL to ``--online-teacher``."""

    name = "real"

    def setup(self) -> None:
        args, run = self.args, self.run
        run.spec = self._spec_from_args()
        run.input_size = args.input_size or (run.teacher.input_size if run.teacher else run.spec.image_size)
        folder = image_folder(args.train_dir, subset=run.subset)
        run.classes = folder.classes
        if run.teacher is not None and run.teacher.classes != run.classes:
            raise UserError(f"{args.train_dir}: class folders differ from the teacher's ({run.teacher.path})")
        transform = train_transform(run.spec, run.input_size)
        if args.pseudo_label_csv:
            parsed = parse_pseudo_label_csv(args.pseudo_label_csv, dataset_root=args.data_path,
                                            train_dir=args.train_dir, train_images=[p for p, _ in folder.samples],
                                            num_classes=len(run.classes), allow_unmatched=args.allow_unmatched)
            true = {os.path.realpath(p): t for p, t in folder.samples}
            log.info("pseudo labels %s: %s", args.pseudo_label_csv, summarize(parsed, true, len(run.classes)))
            self.real = relabelled(folder, parsed.labels, transform)
        else:
            self.real = with_transform(folder, transform)

    def num_images(self) -> int:
        """The real train split's images."""
        return len(self.real)

    def epochs(self, start: int) -> Iterator:
        args, ctx = self.args, self.run.ctx
        loader = train_loader(self.real, batch_size=args.batch_size, workers=args.workers, seed=args.seed, ctx=ctx)
        for epoch in range(start, args.epochs):
            seed_epoch(loader, args.seed, epoch, ctx)
            yield epoch, loader

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor | None, int]:
        dev = self.run.ctx.device
        images, labels = batch[0].to(dev, non_blocking=True), batch[1].to(dev, non_blocking=True)
        out = self.run.forward(model, images)
        loss = nn.functional.cross_entropy(out.float(), labels)
        if self.run.teacher is not None:
            loss = loss + self.args.kd_weight * kd_loss(out, self.run.teach(images), self.args.temperature)
        return loss, len(labels)


def check_factor(images: Path, factor: int) -> None:
    """Refuse a ``--factor`` other than the one recorded by the recover run that wrote ``images``
    (:func:`wmdd.recover.multiformation.recorded_factor`).

    Raises:
        UserError: the factors differ (names both and the fix).
    """
    recorded = recorded_factor(images)
    if recorded != factor:
        raise UserError(f"{images}: stored with multi-formation factor {recorded} ({images.parent / MANIFEST}), "
                        f"trained with --factor {factor}; pass --factor {recorded}")
