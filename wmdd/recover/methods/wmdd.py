"""WMDD (Liu et al., ICCV 2025): teacher features matched one-to-one to the class's
Wasserstein barycenter (Eq. 5) plus the per-class BatchNorm regulariser (Eq. 6),
optimised with Adam through random crops, flips and rolls of the batch (Eq. 7)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from wmdd.errors import UserError
from wmdd.options.bounds import COUNT, FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT
from wmdd.recover.losses import BN_REDUCTIONS, RecoverObjective
from wmdd.recover.methods.multiformation import MultiFormation, factor
from wmdd.recover.methods.registry import Objective, Resources, register_method
from wmdd.recover.multiformation import decode


@dataclass(frozen=True)
class ViewConfig:
    """The per-iteration random view of the batch (WMDD's and SRe2L's official code; no
    equation of either paper).

    Attributes:
        min_scale, max_scale: area range of the random-resized crop.
        random_crop: apply the random-resized crop (SRe2L's CIFAR recipe has only the roll).
        flip: apply the random horizontal flip.
        jitter: maximum random roll in pixels (0 to ``jitter`` on each axis, as WMDD's code).
    """

    min_scale: float = 0.08
    max_scale: float = 1.0
    random_crop: bool = True
    flip: bool = True
    jitter: int = 4


def augment(x: torch.Tensor, config: ViewConfig) -> torch.Tensor:
    """One random view of the whole batch ``x [B, 3, S, S]`` (differentiable): the same
    random-resized crop (area ``[min_scale, max_scale]``) and horizontal flip for every
    image, as in SRe2L's and WMDD's official code (each switchable; no equation of either
    paper), then a random roll by 0 to ``jitter`` pixels on each axis (wrapping around).
    Returns the same shape and dtype. Uses the global torch RNG."""
    view = x
    if config.random_crop:
        view = v2.RandomResizedCrop(x.shape[-1], scale=(config.min_scale, config.max_scale), antialias=False)(view)
    if config.flip:
        view = v2.RandomHorizontalFlip()(view)
    if config.jitter > 0:
        dy, dx = torch.randint(0, config.jitter + 1, (2,)).tolist()
        view = torch.roll(view, shifts=(dy, dx), dims=(2, 3))
    return view


def default_jitter(input_size: int) -> int:
    """WMDD's 32-pixel roll at 224 px (its official code's ``jitter``), scaled to the input
    side: ``round(S * 32 / 224)``."""
    return round(input_size * 32 / 224)


class BarycenterMethod(MultiFormation):
    """Base of the methods that use the class barycenters (WMDD Sec. III-C) of the teacher's features
    (``wmdd``, ``sre2l``, ``medoids``): their solver options, ``--init medoid`` and
    multi-formation (``--factor F``, unset = 1): each class then has ``IPC * F**2``
    barycenter support points, one per decoded image, and the teacher sees the
    decoded images (:mod:`wmdd.recover.multiformation`)."""

    defaults = {"barycenter_solver": "exact", "weight_wb": False, "feature_batch_size": 256}
    requires_teacher = True
    inits = ("noise", "real", "medoid")

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--barycenter-solver", choices=["exact", "pot"],
                           help="exact: k-means++-initialised alternation; pot: WMDD's POT path [exact]")
        group.add_argument("--weight-wb", action="store_true", default=None,
                           help="free barycenter weights (k-means masses) [off]")
        group.add_argument("--feature-batch-size", type=COUNT, help="batch of the teacher feature pass [256]")
        group.add_argument("--cache-dir", metavar="DIR",
                           help="also keep the teacher features and the barycenters in DIR, and reuse them from "
                                "there when their key (teacher, train images, IPC, solver, seed) matches: for runs "
                                "that share them, such as wmdd tune's trials [the output directory only]")

    @classmethod
    def check(cls, args: argparse.Namespace) -> None:
        """Raises:
            UserError: ``--weight-wb`` with ``--factor`` above 1 (the barycenter weights
                are per decoded image, the sample weights per stored image).
        """
        super().check(args)
        if args.weight_wb and factor(args) > 1:
            raise UserError(f"--weight-wb gives one weight per decoded image, but --factor {args.factor} stores "
                            f"{args.factor ** 2} of them in each image (--method {args.method} defaults to "
                            f"--factor {cls.defaults.get('factor') or 1}); add --factor 1 or drop --weight-wb")


#: WMDD as published (Liu et al., ICCV 2025, and its official run.sh with the per-class script
#: ``recover/data_synthesis_new.py`` it runs): noise init, Adam lr 0.25 with cosine decay, 2,000
#: iterations, one decoded image per stored image; the BN term averaged over the classes of a
#: batch, first BN layer weight 1, and cross-entropy weight 1 (run.sh's ``R_WB=1`` multiplies the
#: CE term in that script). ``r_bn`` 0.01 is run.sh's fallback, with the same meaning as there.
PAPER_DEFAULTS = {"lr": 0.25, "iterations": 2000, "init": "noise", "r_bn": 0.01, "r_ce": 1.0, "wb": True,
                  "per_class_bn": True, "first_bn_multiplier": 1.0, "bn_reduction": "mean", "random_crop": True,
                  "flip": True, "min_scale": 0.08, "max_scale": 1.0, **BarycenterMethod.defaults}


def objective_from_args(args: argparse.Namespace, model: torch.nn.Module, bn_stats: dict | None,
                        device: torch.device) -> RecoverObjective:
    """The recover objective (WMDD Eq. 7) of the resolved options of ``wmdd``, ``wmdd-paper`` or
    ``sre2l`` (``--wb``, ``--per-class-bn``, ``--r-bn``, ``--bn-reduction``, ``--r-ce``,
    ``--first-bn-multiplier``) for the teacher ``model`` and its BN statistics.

    Raises:
        UserError: ``--r-bn`` above 0 and the model has no BatchNorm2d layer (:class:`RecoverObjective`).
    """
    return RecoverObjective(model, bn_stats, per_class_bn=args.per_class_bn, use_wb=args.wb, r_bn=args.r_bn,
                            r_ce=args.r_ce, first_bn_multiplier=args.first_bn_multiplier, device=device,
                            bn_reduction=args.bn_reduction)


@register_method
class WMDD(BarycenterMethod):
    """``--method wmdd``: WMDD Eq. 7 with barycenter feature matching (Eq. 5) + per-class BN
    statistics (Eq. 6), no CE (the paper's best row, Table III), the BN term summed over the
    classes of a batch with the first BN layer weighing 10 (SRe2L's code), in the toolkit's recipe:
    multi-formation factor 2 (``IPC * 4`` barycenter support points, each stored image
    holds 4 tiles), started from the barycenter medoids (``--init medoid``), Adam lr 0.05, 200 iterations. On
    CIFAR-10 IPC 10 under FKD soft labels this recipe beats random real images and
    random real images at the same pixel budget (``benchmarks/RESULTS.md``, issue 16);
    ``--method wmdd-paper`` is the published recipe. ``--no-wb``, ``--no-per-class-bn``
    and ``--r-ce`` reproduce the ablation."""

    name = "wmdd"
    summary = ("WMDD's loss (barycenter feature matching + per-class BN, Eq. 5-7) from the barycenter medoids, "
               "multi-formation factor 2, lr 0.05, 200 iterations")
    defaults = {**PAPER_DEFAULTS, "lr": 0.05, "iterations": 200, "init": "medoid", "factor": 2, "r_ce": 0.0,
                "first_bn_multiplier": 10.0, "bn_reduction": "sum"}

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--r-bn", type=NON_NEGATIVE, help="weight of the BN term (lambda, WMDD Eq. 7) [0.01]")
        group.add_argument("--bn-reduction", choices=BN_REDUCTIONS,
                           help="the BN term over the classes of a batch: sum, or mean as in the authors' per-class "
                                "script (where the paper's lambda values apply) [wmdd sum, wmdd-paper mean]")
        group.add_argument("--r-ce", type=NON_NEGATIVE,
                           help="weight of the teacher's cross-entropy (the authors' run.sh R_WB) "
                                "[wmdd 0, wmdd-paper 1, sre2l 1]")
        group.add_argument("--wb", action=argparse.BooleanOptionalAction,
                           help="barycenter feature-matching term (WMDD Eq. 5) [wmdd on, sre2l off]")
        group.add_argument("--per-class-bn", action=argparse.BooleanOptionalAction,
                           help="per-class (WMDD Eq. 6) instead of global (SRe2L) BN statistics "
                                "[wmdd on, sre2l off]")
        group.add_argument("--first-bn-multiplier", type=NON_NEGATIVE,
                           help="extra weight of the first BN layer [wmdd 10, wmdd-paper 1, sre2l 10]")
        group.add_argument("--jitter", type=NON_NEGATIVE_INT, help="random roll in pixels [input size * 32/224]")
        group.add_argument("--random-crop", action=argparse.BooleanOptionalAction,
                           help="random-resized crop of the batch each iteration [on; SRe2L's CIFAR recipe: off]")
        group.add_argument("--flip", action=argparse.BooleanOptionalAction,
                           help="random horizontal flip of the batch each iteration [on]")
        group.add_argument("--min-scale", type=FRACTION, help="random-resized-crop minimum area [0.08]")
        group.add_argument("--max-scale", type=FRACTION, help="random-resized-crop maximum area [1.0]")

    @classmethod
    def check(cls, args: argparse.Namespace) -> None:
        if not 0 < args.min_scale <= args.max_scale <= 1:
            raise UserError(f"crop scales must satisfy 0 < min ({args.min_scale}) <= max ({args.max_scale}) <= 1")
        super().check(args)
        if not (args.wb or args.r_bn > 0 or args.r_ce > 0):
            raise UserError("every loss term is off (--no-wb, --r-bn 0, --r-ce 0): nothing to optimise")

    @classmethod
    def needs(cls, args: argparse.Namespace) -> frozenset[str]:
        needs = {"teacher"}
        if args.r_bn > 0:
            needs.add("bn_stats")
        if args.wb or args.weight_wb:
            needs.add("barycenters")
        return frozenset(needs)

    def __init__(self, resources: Resources):
        super().__init__(resources)
        args, teacher = resources.args, resources.teacher
        self.view = ViewConfig(min_scale=args.min_scale, max_scale=args.max_scale, random_crop=args.random_crop,
                               flip=args.flip, jitter=self.jitter(args, resources.input_size))
        self.objective = objective_from_args(args, teacher.model, teacher.bn_stats, resources.device)
        self.objective.__enter__()
        bary = resources.barycenters
        self.support = bary["support"] if bary is not None and args.wb else None

    @staticmethod
    def jitter(args: argparse.Namespace, input_size: int) -> int:
        """``--jitter`` or :func:`default_jitter` of the input size."""
        return args.jitter if args.jitter is not None else default_jitter(input_size)

    def batch_objective(self, classes: list[int], batch: int) -> Objective:
        """WMDD Eq. 7 (:class:`wmdd.recover.losses.RecoverObjective`) of one random view
        (:func:`augment`) of the batch's decoded images per call, matched in order to the
        classes' barycenter support points (``[G * ipc * factor**2, D]``)."""
        device, args = self.res.device, self.res.args
        labels = torch.tensor(classes, device=device)
        target = None
        if self.support is not None:
            target = self.support[classes].reshape(-1, self.support.shape[-1]).to(device)

        def objective(x: torch.Tensor, iteration: int):
            view = augment(decode(x, factor(args)), self.view)
            if args.channels_last:
                view = view.contiguous(memory_format=torch.channels_last)
            return self.objective(view, labels, target, amp=args.amp)

        return objective

    def manifest_fields(self) -> dict:
        return {**super().manifest_fields(), "jitter": self.view.jitter}

    def close(self) -> None:
        self.objective.__exit__(None, None, None)


@register_method
class WMDDPaper(WMDD):
    """``--method wmdd-paper``: the authors' published run (WMDD Eq. 5-7 as their per-class
    script computes it, :data:`PAPER_DEFAULTS`: noise init, lr 0.25, 2,000 iterations, no
    multi-formation, BN term averaged over the classes of a batch, first BN layer weight 1, CE
    weight 1); every WMDD option applies. ``r_bn`` 0.01 is the official run.sh fallback; the
    paper's lambda is 10 (Imagenette) and 500 (Tiny-ImageNet, ImageNet-1k), given with
    ``--r-bn`` (run.sh's ``-b``) with the same meaning as in the authors' code."""

    name = "wmdd-paper"
    summary = ("the authors' WMDD run (WMDD Eq. 5-7, BN term averaged over classes, CE weight 1): noise init, "
               "lr 0.25, 2,000 iterations, no multi-formation")
    defaults = PAPER_DEFAULTS
