"""The recover stage's command line: shared options, every registered method's
options, and their resolution (command line > YAML method sub-section > YAML
section > the method's defaults)."""

from __future__ import annotations

import argparse
from pathlib import Path

from wmdd.data.datasets import dataset_names
from wmdd.data.folders import class_folders, images_per_class, resolve_classes, split_dir
from wmdd.errors import UserError
from wmdd.options.bounds import COUNT, POSITIVE
from wmdd.options.config import add_classes_option, parse_with_config, stage_parser
from wmdd.recover.methods import add_method_arguments, get_method, method_names, resolve_method_args
from wmdd.recover.methods.registry import INITS, RecoverMethod, own_options

DESCRIPTION = "wmdd recover: synthesise IPC images per class with a registered method."


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m wmdd.recover`` parser. Options that depend on the method default to
    ``None`` here; :func:`resolve_args` fills the method's value."""
    p = stage_parser("recover", DESCRIPTION, workers_help="DataLoader workers for the feature pass / real images")
    p.epilog = "methods: " + "; ".join(f"{n}: {get_method(n).summary}" for n in method_names())
    p.add_argument("--method", default="wmdd", choices=method_names(), help="synthesis method")
    p.add_argument("--teacher", help="pretrain output directory (or its teacher.pt); required by wmdd, wmdd-paper, "
                                     "sre2l and medoids, optional for the others (then only its classes and "
                                     "input size are used)")
    p.add_argument("--data-path", help="real dataset root (train/ is used for features and real images)")
    p.add_argument("--dataset", help=f"dataset spec when there is no --teacher ({', '.join(dataset_names())})")
    p.add_argument("--input-size", type=COUNT, help="image side in pixels when there is no --teacher "
                                                  "(default: the dataset's)")
    add_classes_option(p)
    p.add_argument("--ipc", type=COUNT, default=10, help="images per class")
    p.add_argument("--batch-size", type=COUNT, default=100,
                   help="images per optimisation batch (batch-size // ipc classes per batch)")
    p.add_argument("--iterations", "--iteration", dest="iterations", type=COUNT,
                   help="optimiser steps per class batch [wmdd 200; wmdd-paper, sre2l 2000; dm, ddm 20000; "
                        "dance 10000]")
    p.add_argument("--lr", type=POSITIVE, help="learning rate on the pixels [wmdd 0.05, wmdd-paper, sre2l 0.25 "
                                            "(Adam); dm, ddm 1.0 (SGD); dance 0.01 x IPC (SGD, [0, 1] pixel "
                                            "units)]")
    p.add_argument("--init", choices=list(INITS),
                   help="N(0,1) noise in normalised space, seeded real images of the class, or the real "
                        "images nearest one-to-one to the class's feature barycenter (medoid; wmdd, sre2l) "
                        "[wmdd medoid; wmdd-paper, sre2l noise; dm, ddm, dance, random-real real; medoids medoid]")
    p.add_argument("--train-per-class", type=COUNT, help="use a seeded choice of N real images per class")
    p.add_argument("--log-every", type=COUNT, default=50, help="iterations between loss records")
    add_method_arguments(p)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The stage's arguments, parsed with ``--config``'s method sub-section and resolved by
    :func:`resolve_args` (``wmdd run`` checks them the same way before it starts anything).

    Raises:
        UserError: as :func:`wmdd.options.config.parse_with_config` and :func:`resolve_args`.
    """
    args = parse_with_config(build_parser(), argv, "recover", variant="method", refuse_unmatched=True,
                             owners=own_options())
    resolve_args(args)
    return args


def resolve_args(args: argparse.Namespace) -> type[RecoverMethod]:
    """Fill the method's settings into the options left unset and check values.

    Returns:
        The method class.

    Raises:
        UserError: a required option is missing, a value is out of range, or an
            option of another method was given.
    """
    for name in ("data_path", "output_dir"):
        if not getattr(args, name):
            raise UserError(f"--{name.replace('_', '-')} is required")
    cls = resolve_method_args(args)
    if "teacher" in cls.needs(args) and not args.teacher:
        raise UserError(f"--method {cls.name} needs --teacher (a pretrain output directory)")
    if not args.teacher and not args.dataset:
        raise UserError(f"--method {cls.name} without --teacher needs --dataset ({', '.join(dataset_names())})")
    check_real_images(args, cls)
    return cls


def check_real_images(args: argparse.Namespace, cls: type[RecoverMethod]) -> None:
    """Refuse, before anything runs, a run that needs more real images per class than the
    train split (or ``--train-per-class``) has: ``--init real`` and ``medoid`` start each class
    from IPC x :meth:`RecoverMethod.real_per_image` distinct real images, and a barycenter
    has that many support points.

    Raises:
        UserError: naming the class, its image count and the largest IPC that fits.
    """
    if not (INITS[args.init] or "barycenters" in cls.needs(args)) or not Path(args.data_path).is_dir():
        return
    train = split_dir(args.data_path, "train")
    classes = resolve_classes(args.classes, train) or class_folders(train)
    per_image = cls.real_per_image(args)
    need = args.ipc * per_image
    counts = images_per_class(train, classes, cap=need)
    name = min(counts, key=counts.get)
    have = min(counts[name], args.train_per_class or counts[name])
    if have < need:
        source = (f"--train-per-class {args.train_per_class}" if have == args.train_per_class
                  else f"class {name!r} has {have} train images")
        tiles = f" ({per_image} per stored image: multi-formation tiles)" if per_image > 1 else ""
        uses = (f"starts each class from {need} real images{tiles}" if INITS[args.init]
                else f"fits a barycenter of {need} support points{tiles} to each class")
        raise UserError(f"--ipc {args.ipc}: --method {cls.name} --init {args.init} {uses}, but {source}; pass --ipc "
                        f"{max(1, have // per_image)} or fewer")
