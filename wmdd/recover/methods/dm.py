"""DM: Distribution Matching (Zhao & Bilen, WACV 2023).

Every iteration draws a freshly initialised, frozen network (DM's instance-norm
ConvNet, ``convnet_in``) and, for each class of the batch, a random batch of
real images; one DSA draw is shared by the class's real and synthetic images
(siamese augmentation) and the loss is the squared distance between their mean
embeddings (DM Eq. 4), summed over classes. SGD on the pixels, lr 1.0,
momentum 0.5, initialised from random real images.

Deviations from the authors' code: the pixels are clipped to the valid range
after every step (the set is stored as 8-bit PNG, so what is optimised is what
is evaluated), and classes are optimised in class batches (``--batch-size //
IPC`` classes at a time, each batch its own seeded run) so that a killed run
resumes per batch and ``torchrun`` shards batches; with ``--batch-size`` >=
classes x IPC the whole set is one batch, as in the paper. The real batches and
the DSA draws of all classes of an iteration are drawn together (one random call
per quantity, :func:`wmdd.recover.dsa.draw_per_class`), so the random numbers
differ from a per-class draw's for the same seed while their distribution is
DM's; an iteration is a fixed number of tensor operations whatever the number
of classes (``python -m benchmarks.op_counts``).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn

from wmdd.errors import UserError
from wmdd.models import create_model, model_names, penultimate_features
from wmdd.options.bounds import COUNT, MOMENTUM
from wmdd.recover.dsa import DEFAULT_STRATEGY, DSAParams, siamese_per_class
from wmdd.recover.grouping import class_mean
from wmdd.recover.matching import mean_embedding_loss
from wmdd.recover.methods.registry import Objective, Optimisation, RecoverMethod, Resources, register_method
from wmdd.recover.real_pool import RealPool
from wmdd.runtime.training import derive_seed


def reinitialise(net: nn.Module) -> None:
    """Draw fresh weights for every layer of ``net`` in place (PyTorch's default
    initialisation, from the global RNG): the randomly initialised embedding network of
    DM (Zhao & Bilen, WACV 2023), a new one each iteration, without reallocating it."""
    for module in net.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


class MatchingMethod(RecoverMethod):
    """Options and optimiser shared by the distribution-matching family (DM, DDM,
    DANCE): ``--batch-real``, ``--dsa-strategy``, ``--momentum``; SGD with a constant
    learning rate on the pixels, as in DM (Zhao & Bilen, WACV 2023). Not registered itself."""

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--batch-real", type=COUNT, help="real images per class and iteration "
                                                          "[dm, ddm 256; dance 128]")
        group.add_argument("--dsa-strategy", help="DSA transform families, '_'-separated "
                                                  f"[dm, ddm {DEFAULT_STRATEGY}, one per draw; dance "
                                                  "color_crop_cutout, all in turn]")
        group.add_argument("--momentum", type=MOMENTUM, help="SGD momentum on the pixels [0.5]")

    @classmethod
    def check(cls, args: argparse.Namespace) -> None:
        DSAParams(strategy=args.dsa_strategy)

    @classmethod
    def optimisation(cls, args: argparse.Namespace) -> Optimisation:
        return Optimisation(optimizer="sgd", momentum=args.momentum, schedule="constant")


@register_method
class DM(MatchingMethod):
    """``--method dm``: DM (Zhao & Bilen, WACV 2023), DM Eq. 4 per class under a shared
    DSA draw with a freshly initialised ``convnet_in`` each iteration (see the module docstring)."""

    name = "dm"
    summary = "distribution matching: mean embeddings of random networks, DSA (Zhao & Bilen 2023)"
    defaults = {"lr": 1.0, "iterations": 20000, "init": "real", "batch_real": 256,
                "dsa_strategy": DEFAULT_STRATEGY, "momentum": 0.5, "net": "convnet_in"}

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--net", help=f"randomly initialised embedding network ({', '.join(model_names())}) "
                                         "[convnet_in]")

    @classmethod
    def check(cls, args: argparse.Namespace) -> None:
        super().check(args)
        if args.net not in model_names():
            raise UserError(f"--net {args.net!r}: registered models are {', '.join(model_names())}")

    @classmethod
    def needs(cls, args: argparse.Namespace) -> frozenset[str]:
        return frozenset({"real_batches", "random_networks"})

    def __init__(self, resources: Resources):
        super().__init__(resources)
        args = resources.args
        self.dsa = DSAParams(strategy=args.dsa_strategy)
        self.net = create_model(args.net, num_classes=len(resources.classes), dataset=resources.spec,
                                input_size=resources.input_size).to(resources.device).requires_grad_(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding of DM Eq. 4: ``x [B, 3, S, S]`` float32 -> ``[B, D]`` of the current
        random network (DM: the flattened last block, the classifier's input)."""
        return penultimate_features(self.net, x)

    def augmented_batches(self, x: torch.Tensor, pool: RealPool,
                          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """For every class ``j`` of the pool, a fresh real batch (``--batch-real``) and the
        class's synthetic images ``x[j * ipc:(j + 1) * ipc]`` under one shared DSA draw
        (DSA's siamese augmentation, Zhao & Bilen, ICML 2021, as DM applies it), all classes
        drawn and augmented together (:meth:`RealPool.sample_classes`,
        :func:`wmdd.recover.dsa.siamese_per_class`).

        Returns:
            ``(real [sum n_j, 3, S, S], syn [G * ipc, 3, S, S], n_j per class)``, float32
            normalised on the device, grouped by class in the pool's order.
        """
        real, sizes = pool.sample_classes(self.res.args.batch_real, generator)
        real, syn = siamese_per_class(real, sizes, x, [self.res.args.ipc] * len(sizes), self.dsa, generator)
        return real, syn, sizes

    def batch_objective(self, classes: list[int], batch: int) -> Objective:
        """DM's iteration (Zhao & Bilen, WACV 2023) per call: re-initialise the network, draw
        each class's real batch and shared DSA draw from the class batch's seeded generator,
        and return :meth:`match` (DM Eq. 4 summed over ``classes``)."""
        args = self.res.args
        pool = RealPool(self.res.dataset, classes, self.res.spec, self.res.input_size, args.workers,
                        self.res.device)
        generator = torch.Generator().manual_seed(derive_seed(args.seed, "dsa", batch))

        def objective(x: torch.Tensor, iteration: int):
            reinitialise(self.net)
            real, syn, sizes = self.augmented_batches(x, pool, generator)
            return self.match(real, syn, sizes)

        return objective

    def match(self, real: torch.Tensor, syn: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, dict]:
        """The loss of one iteration from :meth:`augmented_batches`' output: DM (Zhao &
        Bilen, WACV 2023) Eq. 4 summed over the classes, real embeddings without gradient.
        Returns ``(loss, {"dm": loss detached})``, scalar float32."""
        with torch.no_grad():
            real_mean = class_mean(self.embed(real), sizes)
        syn_mean = class_mean(self.embed(syn), [self.res.args.ipc] * len(sizes))
        loss = mean_embedding_loss(real_mean, syn_mean)
        return loss, {"dm": loss.detach()}
