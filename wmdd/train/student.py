"""The train stage's parts: its options, its training mode (the label source), the resolved run
(:class:`StudentRun`, delegating to a :mod:`wmdd.train.sources` label source) and one epoch of
training. ``wmdd train`` (:mod:`wmdd.train.__main__`) drives them; benchmarks use them directly.
Protocols (:mod:`wmdd.train.protocols`) and label sources are registered variants.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
import torch.nn as nn

from wmdd.data.datasets import DatasetSpec, dataset_names
from wmdd.data.device_split import INPUT_PIPELINES
from wmdd.data.folders import image_folder, resolve_classes, split_dir
from wmdd.data.transforms import eval_transform
from wmdd.errors import UserError
from wmdd.models import model_names
from wmdd.models.teacher import Teacher, load_teacher
from wmdd.options.bounds import COUNT, FRACTION, MOMENTUM, NON_NEGATIVE, POSITIVE, PROBABILITY, TEMPERATURE
from wmdd.options.config import add_classes_option, parse_with_config, stage_parser
from wmdd.recover.dsa import DSAParams
from wmdd.recover.multiformation import recorded_factor
from wmdd.relabel.soft_labels import SoftLabels
from wmdd.relabel.views import MIX_TYPES, ViewSettings
from wmdd.train.data import ImageSet
from wmdd.train.protocols import DSA_PROTOCOLS, PROTOCOLS
from wmdd.train.sources import SOURCES, LabelSource

log = logging.getLogger("wmdd.train")


def build_parser() -> argparse.ArgumentParser:
    """The train stage's options (``python -m wmdd.train --help``); YAML presets are applied
    by :func:`wmdd.options.config.parse_with_config`."""
    p = stage_parser("train", "``python -m wmdd.train``: train a student from scratch and evaluate it on the real "
                     "validation split.", workers_help="DataLoader worker processes")
    p.add_argument("--protocol", default="fkd", choices=PROTOCOLS.names(),
                   help="evaluation protocol: " + "; ".join(f"{v} = {PROTOCOLS[v].help}" for v in PROTOCOLS.names())
                        + " (each explicitly given option still wins; an option of another protocol is refused)")
    p.add_argument("--dsa-strategy", help="DSA transform families (--protocol dsa, dance)")
    p.add_argument("--cutmix-prob", type=PROBABILITY,
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
    p.add_argument("-T", "--temperature", type=TEMPERATURE, help="KD temperature (--protocol fkd) [20]")
    p.add_argument("--kd-weight", type=NON_NEGATIVE,
                   help="weight of distillation added to pseudo-label CE (--protocol fkd) [1]")
    p.add_argument("--opt", default="adamw", choices=["adamw", "sgd"])
    p.add_argument("--lr", type=POSITIVE, default=0.001)
    p.add_argument("--wd", type=NON_NEGATIVE, default=0.01, help="weight decay")
    p.add_argument("--momentum", type=MOMENTUM, default=0.9)
    p.add_argument("--lr-scheduler", default="cosine", choices=["cosine", "step", "half", "multistep", "none"])
    p.add_argument("--cos", dest="lr_scheduler", action="store_const", const="cosine",
                   help="cosine schedule (WMDD's spelling)")
    p.add_argument("--input-size", type=COUNT, help="view side in pixels (default: recorded / teacher / dataset)")
    p.add_argument("--input-pipeline", default="auto", choices=INPUT_PIPELINES,
                   help="the distilled images: device = decoded once and held on the device, views cut and "
                        "mixed there in this process; loader = read from the files by DataLoader workers (FKD "
                        "views) or held in host memory (--protocol dsa/dance); auto = device when they fit in a "
                        "quarter of its free memory, on CUDA for the FKD views and anywhere for dsa/dance")
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The stage's arguments, parsed with the chosen protocol's defaults
    (:data:`wmdd.train.protocols.PROTOCOLS`) and checked by :func:`training_mode` (``wmdd run``
    checks them the same way before it starts anything).

    Raises:
        UserError: as :func:`wmdd.options.config.parse_with_config` and :func:`training_mode`.
    """
    args = parse_with_config(build_parser(), argv, "train", variant="protocol", variant_defaults=PROTOCOLS.defaults(),
                             owners=PROTOCOLS.owner_map())
    training_mode(args)
    return args


def training_mode(args) -> str:
    """The label source (:data:`wmdd.train.sources.SOURCES`): ``soft``, ``online``, ``hard`` (planned
    views of --images), ``dsa`` (``--protocol dsa``/``dance``: DSA views of --images with folder
    labels) or ``real`` (--train-dir).

    Raises:
        UserError: missing or conflicting options, or an option of another protocol.
    """
    for name in ("data_path", "output_dir"):
        if not getattr(args, name):
            raise UserError(f"--{name.replace('_', '-')} is required")
    PROTOCOLS.refuse_foreign(args, args.protocol, fix=" or pick a protocol that takes it")
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
        DSAParams(strategy=args.dsa_strategy)
        return "dsa"
    chosen = [m for m, on in (("soft", bool(args.soft_labels)), ("online", bool(args.online_teacher)),
                              ("hard", args.hard_labels)) if on]
    if len(chosen) != 1:
        raise UserError("pass exactly one of --soft-labels DIR, --online-teacher DIR, --hard-labels")
    return chosen[0]


def resolve_factor(args) -> None:
    """Under the DSA protocols, set an unset ``--factor`` to the multi-formation factor recorded by
    the recover run of ``--images`` (:func:`wmdd.recover.multiformation.recorded_factor`; 1 for real
    images). Other protocols have no ``--factor`` (the FKD protocol refuses tiled sets,
    :func:`wmdd.recover.multiformation.refuse_tiled`)."""
    if args.factor is None and args.protocol in DSA_PROTOCOLS:
        args.factor = recorded_factor(args.images) if args.images else 1


class StudentRun:
    """Everything one training run needs, resolved from the arguments: the label source
    (``mode``, :data:`wmdd.train.sources.SOURCES`), its images, classes, dataset spec, input size
    (pixels), optional per-image weights ``[N]`` float32, the teacher and the validation set."""

    def __init__(self, args, ctx):
        self.args, self.ctx = args, ctx
        self.mode = training_mode(args)
        self.teacher: Teacher | None = load_teacher(args.online_teacher, ctx.device) if args.online_teacher else None
        self.soft: SoftLabels | None = None
        self.images: ImageSet | None = None
        self.weights: torch.Tensor | None = None
        self.settings: ViewSettings | None = None
        self.classes: list[str] = []
        self.spec: DatasetSpec | None = None
        self.input_size = 0
        self.subset = resolve_classes(args.classes, split_dir(args.data_path, "train")) if args.classes else None
        self.source: LabelSource = SOURCES[self.mode](self)
        self.source.setup()
        val_dir = split_dir(args.data_path, "val")
        self.val = image_folder(val_dir, eval_transform(self.spec, self.input_size), classes=self.classes,
                                per_class=args.val_per_class, seed=args.seed, subset=self.subset)

    def num_images(self) -> int:
        """Stored images (the real train split's under ``--train-dir``)."""
        return self.source.num_images()

    def training_images(self) -> int:
        """Images one epoch trains on: under ``--protocol dsa``/``dance`` the decoded images
        (``num_images() * factor**2``), otherwise :meth:`num_images`."""
        return self.source.training_images()

    def epochs(self, start: int):
        """``(epoch, batches)`` for epochs ``start .. --epochs - 1``."""
        return self.source.epochs(start)

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor | None, int]:
        """Loss of one batch, or ``(None, 0)`` for a batch with fewer positions than ranks (skipped by all)."""
        return self.source.loss(model, batch)

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``model(x)`` with ``--channels-last`` and ``--amp`` (bf16 autocast) applied."""
        if self.args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.args.amp):
            return model(x)

    @torch.no_grad()
    def teach(self, x: torch.Tensor) -> torch.Tensor:
        """The online teacher's logits ``[N, classes]`` float32 for views ``x``."""
        return self.forward(self.teacher.model, x).float()


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
