"""The train stage's parts: its options, its training mode, the resolved run
(:class:`StudentRun`: images, labels, views, loss) and one epoch of training.
``python -m wmdd.train`` (:mod:`wmdd.train.__main__`) drives them; benchmarks use them directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from pathlib import Path

import torch
import torch.nn as nn

from wmdd.options.bounds import COUNT, FRACTION, MOMENTUM, NON_NEGATIVE, POSITIVE, PROBABILITY
from wmdd.options.config import add_classes_option, stage_parser
from wmdd.data.folders import image_folder, resolve_classes, split_dir, with_transform
from wmdd.data.datasets import DatasetSpec, dataset_names, get_spec
from wmdd.runtime.distributed import DistContext
from wmdd.recover.dsa import DEFAULT_STRATEGY, DSAParams, augment
from wmdd.errors import UserError
from wmdd.data.loaders import seed_epoch, train_loader
from wmdd.io.manifest import MANIFEST
from wmdd.recover.multiformation import recorded_factor, refuse_tiled
from wmdd.relabel.soft_labels import SoftLabels
from wmdd.runtime.training import derive_seed
from wmdd.data.transforms import eval_transform, train_transform
from wmdd.relabel.views import (MIX_TYPES, DrawnEpochs, PlannedBatches, ViewSettings, cutmix_batch, image_sizes,
                          planned_loader)
from wmdd.models import model_names
from wmdd.models.teacher import Teacher, load_teacher, teacher_sha256
from wmdd.train.data import (ImageSet, load_decoded, load_image_set, load_sample_weights, recorded_input_size,
                        relabelled)
from wmdd.train.losses import kd_loss, mixed_cross_entropy
from wmdd.train.pseudo_labels import parse_pseudo_label_csv, summarize

log = logging.getLogger("wmdd.train")

#: Option values each protocol sets unless the command line or the YAML gives them.
#: dsa: DM (Zhao & Bilen 2023): distilled sets on the ConvNet, hard labels, DSA.
#: dance: DANCE (Zhang et al. 2024; IDC's evaluation): the dsa protocol with CutMix
#: (p 0.5), batch 64, 1,500 epochs, lr x0.2 at 2/3 and 5/6, and no cutout in DSA (the
#: authors drop it when CutMix is on). Both decode multi-formation sets with the
#: factor their recover run recorded (:func:`resolve_factor`).
PROTOCOLS: dict[str, dict] = {
    "fkd": {},
    "dsa": {"model": "convnet_in", "opt": "sgd", "lr": 0.01, "momentum": 0.9, "wd": 5e-4, "lr_scheduler": "half",
            "batch_size": 256, "epochs": 1000},
}
PROTOCOLS["dance"] = {**PROTOCOLS["dsa"], "epochs": 1500, "batch_size": 64, "lr_scheduler": "multistep",
                      "cutmix_prob": 0.5, "dsa_strategy": "color_crop_flip_scale_rotate"}

#: Protocols trained by the DSA path (:meth:`StudentRun.dsa_epoch`).
DSA_PROTOCOLS = ("dsa", "dance")


def build_parser() -> argparse.ArgumentParser:
    """The train stage's options (``python -m wmdd.train --help``); YAML presets are applied
    by :func:`wmdd.options.config.parse_with_config`."""
    p = stage_parser("train", "``python -m wmdd.train``: train a student from scratch and evaluate it on the real "
                     "validation split.", workers_help="DataLoader worker processes")
    p.add_argument("--protocol", default="fkd", choices=sorted(PROTOCOLS),
                   help="evaluation protocol: fkd = the decoupled (SRe2L/WMDD) protocol, soft labels or "
                        "--hard-labels on recorded views; dsa = the DM family's: hard labels, DSA on every batch, "
                        "convnet_in, SGD lr 0.01 momentum 0.9 wd 5e-4, lr x0.1 at half the epochs, batch 256, "
                        "1,000 epochs; dance = dsa + CutMix 0.5, batch 64, 1,500 epochs, lr x0.2 at 2/3 "
                        "and 5/6, DSA without cutout (each explicitly given option still wins)")
    p.add_argument("--dsa-strategy", default=DEFAULT_STRATEGY, help="DSA transform families (--protocol dsa, dance)")
    p.add_argument("--cutmix-prob", type=PROBABILITY, default=0.0,
                   help="--protocol dsa/dance: probability of CutMix per batch, after DSA (dance: 0.5)")
    p.add_argument("--factor", type=COUNT,
                   help="--protocol dsa/dance: multi-formation factor of the stored images; each decodes into "
                        "factor^2 training images (default: the factor the recover run recorded, 1 without one; "
                        "another value is refused)")
    p.add_argument("--images", help="ImageFolder of distilled images (recover's OUT/images)")
    p.add_argument("--soft-labels", help="relabel output directory")
    p.add_argument("--online-teacher", help="teacher directory: label views on the fly")
    p.add_argument("--hard-labels", action="store_true", help="cross-entropy on folder labels")
    p.add_argument("--teacher", help="with --soft-labels: check they were recorded with this teacher")
    p.add_argument("--train-dir", help="full real train split to train on (with --pseudo-label-csv or --hard-labels)")
    p.add_argument("--pseudo-label-csv", help="CSV with image_path, pseudo_label_class_index")
    p.add_argument("--allow-unmatched", action="store_true", help="train images without a CSV row are dropped")
    p.add_argument("--data-path", help="real dataset root; its val/ (or test/) split is the evaluation set")
    p.add_argument("--dataset", help=f"dataset spec for --hard-labels/--train-dir runs ({', '.join(dataset_names())})")
    p.add_argument("--model", default="resnet18", help=f"student: {', '.join(model_names())}")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--epochs", type=COUNT, default=300)
    p.add_argument("--batch-size", type=COUNT, default=100)
    p.add_argument("-T", "--temperature", type=POSITIVE, default=20.0)
    p.add_argument("--kd-weight", type=NON_NEGATIVE, default=1.0,
                   help="weight of distillation added to pseudo-label CE")
    p.add_argument("--opt", default="adamw", choices=["adamw", "sgd"])
    p.add_argument("--lr", type=POSITIVE, default=0.001)
    p.add_argument("--wd", type=NON_NEGATIVE, default=0.01, help="weight decay")
    p.add_argument("--momentum", type=MOMENTUM, default=0.9)
    p.add_argument("--lr-scheduler", default="cosine", choices=["cosine", "step", "half", "multistep", "none"])
    p.add_argument("--cos", dest="lr_scheduler", action="store_const", const="cosine",
                   help="cosine schedule (WMDD's spelling)")
    p.add_argument("--input-size", type=COUNT, help="view side in pixels (default: recorded / teacher / dataset)")
    add_classes_option(p)
    p.add_argument("--min-scale-crops", type=FRACTION, help="views without stored soft labels (default 0.08)")
    p.add_argument("--max-scale-crops", type=FRACTION, help="views without stored soft labels (default 1.0)")
    p.add_argument("--mix-type", choices=MIX_TYPES, help="views without stored soft labels (default cutmix)")
    p.add_argument("--mix-alpha", type=POSITIVE, help="views without stored soft labels (default 1.0)")
    p.add_argument("--sample-weights", help="per-image weights CSV (default: recover's sample_weights.csv)")
    p.add_argument("--no-sample-weights", action="store_true", help="ignore sample weights")
    p.add_argument("--val-every", type=COUNT, default=10, help="evaluate every N epochs (and at the end)")
    p.add_argument("--val-per-class", type=COUNT, help="evaluate on a seeded choice of N images per class")
    p.add_argument("--eval-batch-size", type=COUNT, default=256)
    return p


def training_mode(args) -> str:
    """``soft``, ``online``, ``hard`` (planned views of --images), ``dsa`` (``--protocol
    dsa``: DSA views of --images with folder labels) or ``real`` (--train-dir).

    Raises:
        UserError: missing or conflicting options.
    """
    for name in ("data_path", "output_dir"):
        if not getattr(args, name):
            raise UserError(f"--{name.replace('_', '-')} is required")
    if args.protocol not in DSA_PROTOCOLS and (args.cutmix_prob or args.factor not in (None, 1)):
        raise UserError("--cutmix-prob and --factor are options of --protocol dsa or dance; drop them or pick "
                        "one of those protocols")
    if args.train_dir:
        if args.images or args.soft_labels:
            raise UserError("--train-dir trains on real images: drop --images/--soft-labels")
        if not (args.pseudo_label_csv or args.hard_labels):
            raise UserError("--train-dir needs labels: --pseudo-label-csv FILE or --hard-labels (folder labels)")
        if args.pseudo_label_csv and args.hard_labels:
            raise UserError("--pseudo-label-csv and --hard-labels are alternatives; pass one")
        return "real"
    if args.pseudo_label_csv:
        raise UserError("--pseudo-label-csv needs --train-dir REAL_ROOT/train")
    if not args.images:
        raise UserError("pass --images DIR (distilled images) or --train-dir DIR (a real train split)")
    if args.protocol in DSA_PROTOCOLS:
        if args.soft_labels or args.online_teacher:
            raise UserError(f"--protocol {args.protocol} trains on hard (folder) labels; drop "
                            "--soft-labels/--online-teacher or use --protocol fkd")
        DSAParams(strategy=args.dsa_strategy)
        return "dsa"
    chosen = [m for m, on in (("soft", bool(args.soft_labels)), ("online", bool(args.online_teacher)),
                              ("hard", args.hard_labels)) if on]
    if len(chosen) != 1:
        raise UserError("pass exactly one of --soft-labels DIR, --online-teacher DIR, --hard-labels")
    return chosen[0]


def resolve_factor(args) -> None:
    """Set an unset ``--factor`` to the multi-formation factor recorded by the recover
    run of ``--images`` (:func:`wmdd.recover.multiformation.recorded_factor`) under the DSA
    protocols, and to 1 otherwise (real-image training; the FKD protocol refuses
    tiled sets, :func:`wmdd.recover.multiformation.refuse_tiled`)."""
    if args.factor is None:
        args.factor = recorded_factor(args.images) if args.images and args.protocol in DSA_PROTOCOLS else 1


def _check_factor(images: Path, factor: int) -> None:
    """Refuse a ``--factor`` other than the one recorded by the recover run that wrote
    ``images`` (:func:`wmdd.recover.multiformation.recorded_factor`).

    Raises:
        UserError: the factors differ (names both and the fix).
    """
    recorded = recorded_factor(images)
    if recorded != factor:
        raise UserError(f"{images}: stored with multi-formation factor {recorded} ({images.parent / MANIFEST}), "
                        f"trained with --factor {factor}; pass --factor {recorded}")


class StudentRun:
    """Everything one training run needs, resolved from the arguments."""

    def __init__(self, args, ctx: DistContext):
        self.args, self.ctx = args, ctx
        self.mode = training_mode(args)
        self.teacher: Teacher | None = None
        self.soft: SoftLabels | None = None
        self.images: ImageSet | None = None
        self.weights: torch.Tensor | None = None
        self.subset = resolve_classes(args.classes, split_dir(args.data_path, "train")) if args.classes else None
        if args.online_teacher:
            self.teacher = load_teacher(args.online_teacher, ctx.device)
        if self.mode == "real":
            self._setup_real()
        elif self.mode == "dsa":
            self._setup_dsa()
        else:
            self._setup_planned()
        val_dir = split_dir(args.data_path, "val")
        self.val = image_folder(val_dir, eval_transform(self.spec, self.input_size), classes=self.classes,
                                per_class=args.val_per_class, seed=args.seed, subset=self.subset)

    def _spec_from_args(self) -> DatasetSpec:
        if self.teacher is not None:
            return self.teacher.spec
        if not self.args.dataset:
            raise UserError("--dataset is required with --hard-labels or --train-dir (it sets the normalisation "
                            "and the model stem); e.g. --dataset cifar10")
        return get_spec(self.args.dataset)

    def _setup_planned(self) -> None:
        args = self.args
        self.images = load_image_set(args.images)
        refuse_tiled(self.images.root, "train --protocol fkd")
        self.classes = self.images.classes
        view_args = {"min_scale_crops": args.min_scale_crops, "max_scale_crops": args.max_scale_crops,
                     "mix_type": args.mix_type, "mix_alpha": args.mix_alpha}
        if self.mode == "soft":
            self.soft = SoftLabels(args.soft_labels)
            given = [k for k, v in view_args.items() if v is not None]
            if given:
                raise UserError(f"--{given[0].replace('_', '-')}: views are fixed by the recorded soft labels "
                                f"({self.soft.dir}); drop the option or re-run relabel")
            teacher_sha = teacher_sha256(args.teacher) if args.teacher else None
            self.soft.check(batch_size=args.batch_size, epochs=args.epochs, images_dir=self.images.root,
                            files=self.images.files, images_sha256=self.images.sha256(),
                            input_size=args.input_size, teacher_sha256=teacher_sha)
            if self.soft.meta["classes"] != self.classes:
                raise UserError(f"{args.images}: class folders differ from the soft labels' classes")
            self.spec = DatasetSpec.from_dict(self.soft.meta["dataset"])
            self.settings = self.soft.settings
        else:
            self.spec = self._spec_from_args()
            size = args.input_size or (self.teacher.input_size if self.teacher else self.spec.image_size)
            defaults = ViewSettings(batch_size=args.batch_size, input_size=size)
            given = {name: value for name, value in (("min_scale", args.min_scale_crops),
                                                     ("max_scale", args.max_scale_crops),
                                                     ("mix_type", args.mix_type), ("mix_alpha", args.mix_alpha))
                     if value is not None}
            self.settings = dataclasses.replace(defaults, **given)
            self.settings.check()
            self.sizes = image_sizes(self.images.paths)
        if self.teacher is not None and self.teacher.classes != self.classes:
            raise UserError(f"{args.images}: class folders differ from the teacher's ({self.teacher.path})")
        self.input_size = self.settings.input_size
        self._load_weights()

    def _setup_dsa(self) -> None:
        """``--protocol dsa``/``dance``: the distilled images in memory, decoded when
        ``--factor`` > 1 (:func:`wmdd.recover.multiformation.decode`: normalised
        ``[N * factor**2, 3, S, S]`` float32; S = ``--input-size``, else the size the
        recover run recorded, else the dataset's), with each stored image's folder label and
        weight repeated for its decoded images."""
        args = self.args
        given = [k for k in ("min_scale_crops", "max_scale_crops", "mix_type", "mix_alpha")
                 if getattr(args, k) is not None]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} sets recorded (FKD) views; --protocol dsa augments "
                            "with DSA (--dsa-strategy): drop the option")
        self.images = load_image_set(args.images)
        self.classes = self.images.classes
        self.spec = self._spec_from_args()
        self.input_size = args.input_size or recorded_input_size(args.images) or self.spec.image_size
        _check_factor(self.images.root, args.factor)
        tiles = args.factor ** 2
        self.pixels = load_decoded(self.images.paths, self.spec, self.input_size, args.factor)
        self.labels = self.images.labels.repeat_interleave(tiles)
        self.dsa = DSAParams(strategy=args.dsa_strategy)
        self._load_weights()
        if self.weights is not None:
            self.weights = self.weights.repeat_interleave(tiles)

    def _load_weights(self) -> None:
        args = self.args
        weights_file = args.sample_weights or (self.images.root.parent / "sample_weights.csv")
        if not args.no_sample_weights and (args.sample_weights or Path(weights_file).is_file()):
            self.weights = load_sample_weights(weights_file, self.images)
            log.info("per-image weights from %s (min %.3f, max %.3f)", weights_file, float(self.weights.min()),
                     float(self.weights.max()))

    def dsa_epoch(self, epoch: int):
        """The batches of one ``--protocol dsa``/``dance`` epoch: a seeded permutation of the
        (decoded) images cut into ``--batch-size`` batches, each augmented by one
        per-image DSA draw (:func:`wmdd.recover.dsa.augment`), then mixed by CutMix with
        probability ``--cutmix-prob`` (:func:`wmdd.relabel.views.cutmix_batch`; 0 draws
        nothing), and split over the ranks (rank r takes positions r, r+W, ...).
        Yields ``{"views" [n_r, 3, S, S], "index" [n_r] int64, "other" [n_r] int64
        (the CutMix partner's image), "lam" (own-label share), "batch_len"}``."""
        args, ctx = self.args, self.ctx
        generator = torch.Generator().manual_seed(derive_seed(args.seed, "dsa-epoch", epoch))
        order = torch.randperm(len(self.pixels), generator=generator)
        for index in order.split(args.batch_size):
            views = augment(self.pixels[index], self.dsa, generator)
            views, partner, lam = cutmix_batch(views, args.cutmix_prob, generator)
            yield {"views": views[ctx.rank::ctx.world_size], "index": index[ctx.rank::ctx.world_size],
                   "other": index[partner][ctx.rank::ctx.world_size], "lam": lam, "batch_len": len(index)}

    def _setup_real(self) -> None:
        args = self.args
        self.spec = self._spec_from_args()
        self.input_size = args.input_size or (self.teacher.input_size if self.teacher else self.spec.image_size)
        folder = image_folder(args.train_dir, subset=self.subset)
        self.classes = folder.classes
        if self.teacher is not None and self.teacher.classes != self.classes:
            raise UserError(f"{args.train_dir}: class folders differ from the teacher's ({self.teacher.path})")
        transform = train_transform(self.spec, self.input_size)
        if args.pseudo_label_csv:
            parsed = parse_pseudo_label_csv(args.pseudo_label_csv, dataset_root=args.data_path,
                                            train_dir=args.train_dir, train_images=[p for p, _ in folder.samples],
                                            num_classes=len(self.classes), allow_unmatched=args.allow_unmatched)
            true = {os.path.realpath(p): t for p, t in folder.samples}
            log.info("pseudo labels %s: %s", args.pseudo_label_csv, summarize(parsed, true, len(self.classes)))
            self.real = relabelled(folder, parsed.labels, transform)
        else:
            self.real = with_transform(folder, transform)

    def num_images(self) -> int:
        """Stored images (the real train split's under ``--real``)."""
        return len(self.real) if self.mode == "real" else len(self.images.files)

    def training_images(self) -> int:
        """Images one epoch trains on: under ``--protocol dsa``/``dance`` the decoded
        images (``num_images() * factor**2``), otherwise :meth:`num_images`."""
        return len(self.pixels) if self.mode == "dsa" else self.num_images()

    def epochs(self, start: int):
        """``(epoch, batches)`` for epochs ``start .. --epochs - 1``."""
        args, ctx = self.args, self.ctx
        if self.mode == "real":
            loader = train_loader(self.real, batch_size=args.batch_size, workers=args.workers, seed=args.seed, ctx=ctx)
            for epoch in range(start, args.epochs):
                seed_epoch(loader, args.seed, epoch, ctx)
                yield epoch, loader
            return
        if self.mode == "dsa":
            for epoch in range(start, args.epochs):
                yield epoch, self.dsa_epoch(epoch)
            return
        source = self.soft if self.mode == "soft" else DrawnEpochs(self.sizes, self.settings, args.seed)
        dataset = PlannedBatches(self.images.paths, source, self.spec, self.settings, ctx.rank, ctx.world_size)
        yield from planned_loader(dataset, range(start, args.epochs), args.workers, ctx.device.type == "cuda")

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor | None, int]:
        """Loss of one batch, or ``(None, 0)`` for a batch with fewer positions than ranks (skipped by all)."""
        args, dev = self.args, self.ctx.device
        if self.mode == "real":
            images, labels = batch[0].to(dev, non_blocking=True), batch[1].to(dev, non_blocking=True)
            out = self._forward(model, images)
            loss = nn.functional.cross_entropy(out.float(), labels)
            if self.teacher is not None:
                loss = loss + args.kd_weight * kd_loss(out, self._teach(images), args.temperature)
            return loss, len(labels)
        if int(batch["batch_len"]) < self.ctx.world_size:
            return None, 0
        if self.mode == "dsa":
            index, other, lam = batch["index"], batch["other"], batch["lam"]
            out = self._forward(model, batch["views"].to(dev))
            weights = None
            if self.weights is not None:
                weights = (lam * self.weights[index] + (1 - lam) * self.weights[other]).to(dev)
            loss = mixed_cross_entropy(out, self.labels[index].to(dev), self.labels[other].to(dev),
                                       torch.full((len(index),), lam, device=dev), weights)
            return loss, len(index)
        views = batch["views"].to(dev, non_blocking=True)
        own, other = batch["own"], batch["other"]
        lam = batch["lam"].expand(len(own))
        weights = None
        if self.weights is not None:
            weights = (lam * self.weights[own] + (1 - lam) * self.weights[other]).to(dev)
        out = self._forward(model, views)
        if self.mode == "hard":
            loss = mixed_cross_entropy(out, self.images.labels[own].to(dev), self.images.labels[other].to(dev),
                                       lam.to(dev), weights)
        else:
            target = batch["targets"].to(dev) if self.mode == "soft" else self._teach(views)
            loss = kd_loss(out, target, args.temperature, weights)
        return loss, len(own)

    def _forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.args.amp):
            return model(x)

    @torch.no_grad()
    def _teach(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(self.teacher.model, x).float()


def train_epoch(run: StudentRun, model: nn.Module, batches, optimizer) -> dict:
    """One epoch of student training; returns loss and throughput for this rank."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.ctx.device)
    count = 0
    start = time.perf_counter()
    for batch in batches:
        loss, n = run.loss(model, batch)
        if loss is None:
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * n
        count += n
    seconds = time.perf_counter() - start
    return {"train_loss": float(loss_sum) / max(1, count), "images": count, "seconds": seconds,
            "images_per_s": count / max(seconds, 1e-9)}
