"""DANCE: Dual-View Distribution Alignment for Dataset Condensation (Zhang et al.,
IJCAI 2024).

Needs experts from ``python -m wmdd.pretrain --experts N`` (``--experts DIR``). Every
iteration draws an expert ``m`` (one of the first ``--num-experts``) and
``lambda ~ U(0, 1)`` from the class batch's seeded generator and loads the middle
encoder ``theta = lambda theta_init + (1 - lambda) theta_final`` (Eq. 3) into one
network shared by all classes of the iteration. Per class c of the batch::

    L_c = || mean phi_mid(A(x_real)) - mean phi_mid(A(x_syn)) ||^2      (inner-class view, Eq. 4)
        + --calib-weight * CE(f_final(A(x_syn)), c)                     (inter-class view, Eq. 6)

with ``phi`` the flattened last block (the classifier's input), one DSA draw
(``color_crop_cutout``: every family in turn, IDC's ``DiffAug``) shared by the
class's real batch (``--batch-real`` 128) and its synthetic images, and
``f_final`` the trained expert ``m``. The synthetic images are the decoded
multi-formation images (``--factor`` 2: each stored image holds 2x2 tiles at
half resolution, decoded by bilinear upsampling, :mod:`wmdd.recover.multiformation`),
so IPC stored images give 4 IPC training images; the initialisation places 4
seeded real images of the class in the tiles. SGD on the pixels, momentum 0.5,
lr 0.01 x IPC, 10,000 iterations.

Deviations from the authors' code (Hansong-Zhang/DANCE, ``DANCE.py``):

* they take one optimiser step per class for the inner view and then one per
  class for the calibration (``iter_calib`` 1, i.e. weight 1, alternating);
  here the two views are summed with ``--calib-weight`` and one SGD step is
  taken per iteration on the class batch. The classes' images are disjoint, so
  the per-class gradients are the same; with momentum 0.5 their 2 x classes
  steps per iteration carry each gradient about twice, as one momentum step
  does over iterations.
* their calibration draws a second augmentation of the synthetic images; here
  the inner view's augmented synthetic images are reused.
* they optimise pixels in [0, 1]; this toolkit stores normalised pixels, so the
  gradient is multiplied per channel by ``1 / std**2`` (:func:`pixel_space_gradient`)
  and an SGD step at lr 0.01 x IPC moves the [0, 1] pixels as theirs does.
* classes are optimised in class batches with pixels clipped after every step,
  and the real batches and DSA draws of a batch's classes drawn together, as for
  DM (see :mod:`wmdd.recover.methods.dm`).
* the set of the last iteration is kept (the authors select by test accuracy).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn

from wmdd.errors import UserError
from wmdd.models import penultimate_features
from wmdd.models.experts import Experts, interpolate_state
from wmdd.options.bounds import COUNT, NON_NEGATIVE
from wmdd.recover.dsa import DSAParams, apply_sequence, draw_sequence
from wmdd.recover.grouping import class_index, class_mean
from wmdd.recover.matching import mean_embedding_loss
from wmdd.recover.methods.dm import MatchingMethod
from wmdd.recover.methods.multiformation import MultiFormation
from wmdd.recover.methods.registry import Objective, Resources, register_method
from wmdd.recover.multiformation import decode
from wmdd.recover.real_pool import RealPool
from wmdd.runtime.training import derive_seed


def load_middle_encoder(net: nn.Module, experts: Experts, m: int, lam: float) -> nn.Module:
    """Load expert ``m``'s middle encoder at ``lam`` (DANCE, Zhang et al., IJCAI 2024, Eq. 3)
    into ``net`` in place:
    ``lam * init + (1 - lam) * final``; ``lam = 1`` is the initial, ``lam = 0`` the
    trained expert. Returns ``net``."""
    net.load_state_dict(interpolate_state(experts.init[m], experts.final[m], lam))
    return net


def pixel_space_gradient(x: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``x`` (normalised pixels ``[N, 3, S, S]``) unchanged, with the gradient that flows
    back through it multiplied by ``1 / std**2`` per channel (``std`` ``[1, 3, 1, 1]``).

    For ``x = (p - mean) / std``, ``dL/dx = std dL/dp``; an SGD step of lr on the
    scaled gradient moves ``p = std x + mean`` by ``lr dL/dp``, the step of an
    optimiser on [0, 1] pixels (the authors') at the same lr.
    """
    view = x.view_as(x)
    if view.requires_grad:
        view.register_hook(lambda grad: grad / std.square())
    return view


@register_method
class DANCE(MultiFormation, MatchingMethod):
    """``--method dance``: DANCE (Zhang et al., IJCAI 2024), the middle encoder (DANCE Eq. 3),
    the inner-class DM loss (Eq. 4) and the expert calibration (Eq. 6) on IDC multi-formation
    images (see the module docstring)."""

    name = "dance"
    summary = "DANCE: middle encoders of pretrained experts + expert calibration + multi-formation " \
              "(Zhang et al. 2024; needs --experts)"
    defaults = {"iterations": 10000, "init": "real", "batch_real": 128, "dsa_strategy": "color_crop_cutout",
                "momentum": 0.5, "calib_weight": 1.0, "factor": 2, "num_experts": 5}

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--experts", help="pretrain output directory holding experts.pt "
                                             "(python -m wmdd.pretrain --experts N)")
        group.add_argument("--num-experts", type=COUNT, help="draw from the first K experts of the file [5]")
        group.add_argument("--calib-weight", type=NON_NEGATIVE, help="weight of the expert-calibration "
                                                              "cross-entropy (inter-class view) [1]")

    @classmethod
    def check(cls, args: argparse.Namespace) -> None:
        """Also sets ``--lr`` to the paper's 0.01 x IPC when it is unset.

        Raises:
            UserError: no ``--experts`` (the ranges are checked by the parser, :mod:`wmdd.options.bounds`).
        """
        super().check(args)
        if not args.experts:
            raise UserError("--method dance needs --experts DIR (the output of python -m wmdd.pretrain --experts N)")
        if args.lr is None:
            args.lr = 0.01 * args.ipc

    @classmethod
    def needs(cls, args: argparse.Namespace) -> frozenset[str]:
        return frozenset({"real_batches", "experts"})

    @classmethod
    def check_resources(cls, res: Resources) -> None:
        """Raises:
            UserError: ``--num-experts`` above the experts the file holds, or as
                :meth:`MultiFormation.check_resources`.
        """
        super().check_resources(res)
        if res.args.num_experts > len(res.experts):
            raise UserError(f"--num-experts {res.args.num_experts}: {res.experts.path} holds {len(res.experts)} "
                            f"experts; pass --num-experts {len(res.experts)} or pretrain more")

    def __init__(self, resources: Resources):
        super().__init__(resources)
        args, experts = resources.args, resources.experts
        self.experts = experts
        self.dsa = DSAParams(strategy=args.dsa_strategy)
        self.middle = experts.network(resources.device)
        self.final = experts.network(resources.device)
        self.std = torch.tensor(resources.spec.std, device=resources.device).view(1, -1, 1, 1)

    def batch_objective(self, classes: list[int], batch: int) -> Objective:
        """DANCE's iteration (Zhang et al., IJCAI 2024) per call: expert ``m`` and ``lambda ~
        U(0, 1)`` from the class batch's seeded generator, the middle encoder (Eq. 3), then
        per class the inner-class loss (Eq. 4: DM's mean-embedding distance on the middle
        encoder) plus ``--calib-weight`` x the calibration (Eq. 6: the final expert's
        cross-entropy, mean over the class's decoded images), summed over ``classes``. The
        objective takes the stored images ``[G * ipc, 3, S, S]`` and returns ``(loss,
        parts)`` with ``"inner"``, ``"calib"``, ``"expert"`` and ``"lambda"``. Unlike the
        authors' code, the two views are summed into one SGD step per class batch and the
        calibration reuses the inner view's augmented images."""
        args, device = self.res.args, self.res.device
        pool = RealPool(self.res.dataset, classes, self.res.spec, self.res.input_size, args.workers, device)
        generator = torch.Generator().manual_seed(derive_seed(args.seed, "dance", batch))
        per_class = args.ipc * args.factor ** 2
        labels = torch.tensor(classes, device=device).repeat_interleave(per_class)

        def objective(x: torch.Tensor, iteration: int):
            m = int(torch.randint(args.num_experts, (1,), generator=generator))
            lam = float(torch.rand(1, generator=generator))
            load_middle_encoder(self.middle, self.experts, m, lam)
            self.final.load_state_dict(self.experts.final[m])
            syn = decode(pixel_space_gradient(x, self.std), args.factor)
            real, sizes = pool.sample_classes(args.batch_real, generator)
            syn_sizes = [per_class] * len(sizes)
            draws = draw_sequence(self.dsa, len(sizes), real.shape[-1], generator)
            with torch.no_grad():
                real_aug = apply_sequence(real, [d.take(class_index(sizes)) for d in draws])
                real_mean = class_mean(penultimate_features(self.middle, real_aug), sizes)
            syn_aug = apply_sequence(syn, [d.take(class_index(syn_sizes)) for d in draws])
            syn_mean = class_mean(penultimate_features(self.middle, syn_aug), syn_sizes)
            inner = mean_embedding_loss(real_mean, syn_mean)
            calib = nn.functional.cross_entropy(self.final(syn_aug).float(), labels,
                                                reduction="sum") / per_class
            loss = inner + args.calib_weight * calib
            return loss, {"inner": inner.detach(), "calib": calib.detach(), "expert": torch.tensor(m),
                          "lambda": torch.tensor(lam)}

        return objective

    def manifest_fields(self) -> dict:
        args = self.res.args
        return {**super().manifest_fields(),
                "experts": {"path": str(self.experts.path), "sha256": self.experts.sha256,
                            "used": args.num_experts}}
