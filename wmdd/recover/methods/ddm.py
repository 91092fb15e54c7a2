"""Decomposed Distribution Matching (Malakshan et al., WACV 2025): DM plus style
matching on every block's feature maps and intra-class diversity.

Per class c (summed over the classes of the batch)::

    L = L_DM + lambda (alpha L_MM + L_CM) + beta L_ICD

with L_MM / L_CM the moments / correlation matching of :mod:`wmdd.recover.matching`
(averaged over the network's blocks) and L_ICD the intra-class diversity term;
defaults lambda = 1e4, alpha = 1, beta = 10 (the authors' README). ``--style``
and ``--icd-weight 0`` switch the terms off for the paper's ablation.

Deviations from the authors' code (DM_Style_matching, commit 6bb57f3): its
style-loss accumulator is never reset between classes, so every class's style
loss is added again for each later class; this is the paper's per-class sum.
Where the maps are read is an option (``--style-features``). After the instance
norm (the default) every map of a freshly initialised network has per-image
channel means of 0 and standard deviations of 1 by construction, so L_MM is
~0 there (measured on real CIFAR-10: 5e-7) and only L_CM acts; at lambda = 1e4
it doubles the pixel gradient of L_DM. Before the norm (the convolution output) L_MM carries
signal but is 1e4 times larger: at lambda = 1e4 its pixel gradient is ~100x
L_DM's and SGD at lr 1 diverges, so pre-norm needs ``--mm-weight`` around 1e-2
(benchmarks/RESULTS.md has the measurement).
"""

from __future__ import annotations

import argparse

import torch

from wmdd.errors import UserError
from wmdd.models.convnet import block_outputs
from wmdd.options.bounds import NON_NEGATIVE
from wmdd.recover.grouping import class_mean
from wmdd.recover.matching import (
    class_gram,
    class_moments,
    correlation_loss,
    icd_loss,
    icd_neighbours,
    mean_embedding_loss,
    moments_loss,
)
from wmdd.recover.methods.dm import DM
from wmdd.recover.methods.registry import Resources, register_method

STYLES = ("both", "mm", "cm", "none")
FEATURE_POINTS = {"pre-norm": "pre_norm", "post-norm": "post_norm"}


@register_method
class DDM(DM):
    """``--method ddm``: Decomposed DM (Malakshan et al., WACV 2025; no equation number on
    record), ``L_DM + lambda (alpha L_MM + L_CM) + beta L_ICD`` per class, summed over the
    classes as in the paper (the authors' code re-adds earlier classes' style losses; see
    the module docstring)."""

    name = "ddm"
    summary = "decomposed DM: DM + style (moments, Gram) matching + intra-class diversity (Malakshan et al. 2025)"
    defaults = {**DM.defaults, "style": "both", "style_weight": 1e4, "mm_weight": 1.0, "icd_weight": 10.0,
                "style_features": "post-norm"}

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--style", help=f"style-matching terms: {', '.join(STYLES)} [both]")
        group.add_argument("--style-weight", type=NON_NEGATIVE, help="lambda, weight of the style terms [1e4]")
        group.add_argument("--mm-weight", type=NON_NEGATIVE,
                           help="alpha, weight of moments matching inside the style term [1]")
        group.add_argument("--icd-weight", type=NON_NEGATIVE,
                           help="beta, weight of intra-class diversity (0: off) [10]")
        group.add_argument("--style-features", help="where the block feature maps are read: pre-norm (convolution "
                                                    "output) or post-norm (instance-norm output) [post-norm]")

    @classmethod
    def check(cls, args: argparse.Namespace) -> None:
        super().check(args)
        if args.style not in STYLES:
            raise UserError(f"--style {args.style!r}: expected one of {', '.join(STYLES)}")
        if args.style_features not in FEATURE_POINTS:
            raise UserError(f"--style-features {args.style_features!r}: expected pre-norm or post-norm")

    def __init__(self, resources: Resources):
        super().__init__(resources)
        args = resources.args
        self.mm = args.style in ("both", "mm") and args.style_weight * args.mm_weight > 0
        self.cm = args.style in ("both", "cm") and args.style_weight > 0
        self.k = icd_neighbours(args.ipc) if args.icd_weight > 0 else 0
        self.where = FEATURE_POINTS[args.style_features]

    def match(self, real: torch.Tensor, syn: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, dict]:
        """Decomposed DM's objective (Malakshan et al., WACV 2025; no equation number on
        record): DM Eq. 4 + ``--style-weight`` x (``--mm-weight`` L_MM + L_CM) on the block
        feature maps + ``--icd-weight`` L_ICD, per class, summed over the classes, for
        ``real [sum n_j, 3, S, S]`` and ``syn [G * ipc, 3, S, S]`` as
        :meth:`DM.augmented_batches` gives them. Returns ``(loss, parts)``: scalar float32
        and the unweighted sum over classes of each term in use (``"dm"``, ``"mm"``,
        ``"cm"``, ``"icd"``)."""
        args = self.res.args
        syn_sizes = [args.ipc] * len(sizes)
        with torch.no_grad():
            real_maps, real_emb = block_outputs(self.net, real, self.where)
            real_mean = class_mean(real_emb, sizes)
            real_moments = [class_moments(m, sizes) for m in real_maps] if self.mm else None
            real_grams = [class_gram(m, sizes) for m in real_maps] if self.cm else None
            del real_maps, real_emb
        syn_maps, syn_emb = block_outputs(self.net, syn, self.where)
        terms = {"dm": mean_embedding_loss(real_mean, class_mean(syn_emb, syn_sizes))}
        loss, style = terms["dm"], torch.zeros((), device=syn.device)
        if self.mm:
            terms["mm"] = moments_loss(real_moments, [class_moments(m, syn_sizes) for m in syn_maps])
            style = style + args.mm_weight * terms["mm"]
        if self.cm:
            terms["cm"] = correlation_loss(real_grams, [class_gram(m, syn_sizes) for m in syn_maps])
            style = style + terms["cm"]
        loss = loss + args.style_weight * style
        if self.k:
            terms["icd"] = icd_loss(syn_emb.view(len(sizes), args.ipc, -1), self.k)
            loss = loss + args.icd_weight * terms["icd"]
        return loss, {key: value.detach() for key, value in terms.items()}
