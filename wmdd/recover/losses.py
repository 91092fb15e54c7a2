"""The recover objective (WMDD Eq. 5-7) as small pure functions plus one
object that runs the teacher and combines them.

    L = [wb]  ||f(x~) - b||_2                                    (Eq. 5, Frobenius over the batch)
      + r_bn * R_c sum_l m_l * ( ||mu_l(x~_c) - mu_{l,c}||_2 + ||var_l(x~_c) - var_{l,c}||_2 )   (Eq. 6)
      + r_ce * CE(teacher(x~), c)

with ``m_l`` = ``first_bn_multiplier`` for the first BN layer and 1 otherwise, and ``R_c`` the
sum (``bn_reduction="sum"``) or the mean (``"mean"``, the authors' per-class script) over the
classes of the batch.
Per-class BN compares the IPC images of each class in the batch with that
class's statistics; global BN compares the whole batch with the global
statistics (SRe2L's regulariser).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from wmdd.models.bn_stats import BNInputCapture
from wmdd.models.features import classifier_module


def feature_matching_loss(features: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """WMDD Eq. 5: ``||features - support||_2``, image i against barycenter point i, as one
    Frobenius norm over the whole batch (the official code's ``torch.norm(feature -
    barycenter, 2)``; the paper states it per class): ``features [B, D]`` (any float dtype,
    upcast) and ``support [B, D]`` float32 -> scalar float32."""
    return torch.linalg.vector_norm(features.float() - support)


class _GroupMoments(torch.autograd.Function):
    """Per-group channel mean and biased variance with a hand-written backward.

    The forward reduces without full-size temporaries (a sum and a vector norm per
    image and channel, then float64 combination over the group's images); the
    backward is a single ``x * a + c`` pass. Autograd's generic ``var_mean``
    allocates several input-sized tensors in each direction, which dominated the
    recover iteration of small teachers on CPU (see ``benchmarks/recover_overhead.py``).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        y = x.reshape(groups, b // groups, c, h * w)
        count = (b // groups) * h * w
        s1 = y.sum(dim=3).double().sum(dim=1)
        s2 = torch.linalg.vector_norm(y, dim=3).double().square().sum(dim=1)
        mean = s1 / count
        var = (s2 / count - mean.square()).clamp_min(0)
        ctx.save_for_backward(x, mean)
        ctx.groups, ctx.count = groups, count
        return mean.to(x.dtype), var.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_mean: torch.Tensor, grad_var: torch.Tensor):
        x, mean = ctx.saved_tensors
        b, c, h, w = x.shape
        # d mean / dx = 1/N;  d var / dx = 2 (x - mean) / N  =>  grad = x * a + (grad_mean / N - a * mean)
        a = 2.0 * grad_var.double() / ctx.count
        offset = grad_mean.double() / ctx.count - a * mean
        per_image = b // ctx.groups
        # One [B, C, 1, 1] coefficient per image, so that the gradient is a fresh [B, C, H, W]
        # tensor rather than a view: autograd then adds the BN layer's own gradient into it in
        # place instead of allocating an input-sized sum (measured: 7 ms instead of 44 ms per
        # iteration at the first BN layer of the CIFAR ConvNet, batch 100).
        a = a.to(x.dtype).repeat_interleave(per_image, dim=0).reshape(b, c, 1, 1)
        offset = offset.to(x.dtype).repeat_interleave(per_image, dim=0).reshape(b, c, 1, 1)
        return torch.addcmul(offset, x, a), None


def group_moments(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``mu_l(S_c)`` and ``sigma^2_l(S_c)`` of WMDD Eq. 6: mean and biased variance per
    channel of each of ``groups`` equal consecutive slices of the batch:
    ``x [B, C, H, W]`` -> ``(mean [G, C], var [G, C])``, float32
    (float64 for float64 input; half-precision input is upcast), differentiable with
    respect to ``x``.

    Raises:
        ValueError: ``B`` is not a multiple of ``groups``.
    """
    if x.shape[0] % groups:
        raise ValueError(f"batch of {x.shape[0]} images does not split into {groups} equal groups")
    return _GroupMoments.apply(x if x.dtype == torch.float64 else x.float(), groups)


#: How the BN term of WMDD Eq. 6 combines the classes of a batch.
BN_REDUCTIONS = ("sum", "mean")


def bn_matching_loss(inputs: dict[str, torch.Tensor], target_mean: dict[str, torch.Tensor],
                     target_var: dict[str, torch.Tensor], layers: list[str],
                     first_bn_multiplier: float = 1.0, reduction: str = "sum") -> torch.Tensor:
    """WMDD Eq. 6: sum over BN layers, and sum or mean over groups, of ``||mean - target_mean||_2
    + ||var - target_var||_2``. With one group and global statistics it is SRe2L's BN
    regulariser. ``first_bn_multiplier`` is SRe2L's code's extra weight of the first layer (10
    there; 1 in WMDD's per-class script), not part of Eq. 6. ``reduction="mean"`` averages over
    the groups as WMDD's per-class script does (its lambda values assume it); ``"sum"`` weighs
    the term G times more.

    Args:
        inputs: layer name -> BN input ``[B, C, H, W]`` of the batch (any float dtype, upcast).
        target_mean, target_var: layer name -> ``[G, C]`` float32 statistics, one row per
            group of ``B / G`` consecutive images (G = classes in the batch for
            per-class BN, 1 for global BN).
        layers: BN layer names in forward order; the first gets ``first_bn_multiplier``.
        reduction: ``"sum"`` or ``"mean"`` over the G groups.

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: ``B`` is not a multiple of ``G`` (:func:`group_moments`), or an unknown
            ``reduction``.
    """
    if reduction not in BN_REDUCTIONS:
        raise ValueError(f"reduction {reduction!r}: expected one of {', '.join(BN_REDUCTIONS)}")
    total = torch.zeros((), device=next(iter(inputs.values())).device)
    for i, name in enumerate(layers):
        mu_t, var_t = target_mean[name], target_var[name]
        mean, var = group_moments(inputs[name], mu_t.shape[0])
        term = torch.linalg.vector_norm(mean - mu_t, dim=1).sum() + torch.linalg.vector_norm(var - var_t, dim=1).sum()
        total = total + (first_bn_multiplier if i == 0 else 1.0) * term
    groups = next(iter(target_mean.values())).shape[0] if target_mean else 1
    return total / groups if reduction == "mean" else total


class RecoverObjective:
    """Runs the teacher on a batch of synthetic images and returns the recover loss of
    WMDD Eq. 7, ``[use_wb] Eq. 5 + r_bn * Eq. 6 + r_ce * CE`` (``r_bn`` is the paper's
    lambda; the CE term is the official code's ``r_wb * CE``, absent from the paper's best
    row, Table III). ``per_class_bn=False, use_wb=False, r_ce=1`` is SRe2L's recover loss,
    with exact global BN statistics instead of the BN running averages.

    Args:
        model: the teacher (eval mode; its parameters are frozen here).
        bn_stats: the teacher's statistics dict (see :mod:`wmdd.models.bn_stats`), or
            ``None`` when ``r_bn == 0``.
        per_class_bn: per-class (WMDD) or global (SRe2L) BN statistics.
        use_wb: include the barycenter feature-matching term.
        r_bn, r_ce: weights of the BN and cross-entropy terms.
        first_bn_multiplier: extra weight of the first BN layer.
        bn_reduction: ``"sum"`` or ``"mean"`` of the BN term over the classes of a batch
            (:func:`bn_matching_loss`).
        device: where the statistics are moved.

    Raises:
        UserError: ``r_bn > 0`` and the model has no BatchNorm2d layer.

    Use as a context manager (it registers BN forward hooks)::

        with RecoverObjective(...) as objective:
            loss, parts = objective(x, classes, support)
    """

    def __init__(self, model: nn.Module, bn_stats: dict | None, *, per_class_bn: bool, use_wb: bool,
                 r_bn: float, r_ce: float, first_bn_multiplier: float, device: torch.device,
                 bn_reduction: str = "sum"):
        self.model = model.eval().requires_grad_(False)
        self.per_class_bn, self.use_wb = per_class_bn, use_wb
        self.r_bn, self.r_ce, self.first, self.bn_reduction = r_bn, r_ce, first_bn_multiplier, bn_reduction
        self.inputs: dict[str, torch.Tensor] = {}
        self.capture = BNInputCapture(model, self.inputs.__setitem__) if r_bn > 0 else None
        self.layers = [n for n, _ in self.capture.layers] if self.capture else []
        kind = "per_class" if per_class_bn else "global"
        self.mean = {n: bn_stats[f"{kind}_mean"][n].to(device, torch.float32) for n in self.layers}
        self.var = {n: bn_stats[f"{kind}_var"][n].to(device, torch.float32) for n in self.layers}
        self._features: list[torch.Tensor] = []
        self._handle = None

    def __enter__(self) -> "RecoverObjective":
        if self.capture:
            self.capture.__enter__()
        self._handle = classifier_module(self.model).register_forward_pre_hook(
            lambda m, inp: self._features.append(inp[0]))
        return self

    def __exit__(self, *exc) -> None:
        if self.capture:
            self.capture.__exit__(*exc)
        self._handle.remove()

    def targets(self, classes: torch.Tensor) -> tuple[dict, dict]:
        """The targets ``mu_{l,c}``, ``sigma^2_{l,c}`` of WMDD Eq. 6 for the batch's classes
        ``[G]`` int64: ``({layer: [G, C]}, {layer: [G, C]})`` float32 (``[1, C]``, the global
        statistics, without per-class BN)."""
        if self.per_class_bn:
            return ({n: m[classes] for n, m in self.mean.items()}, {n: v[classes] for n, v in self.var.items()})
        return ({n: m.unsqueeze(0) for n, m in self.mean.items()}, {n: v.unsqueeze(0) for n, v in self.var.items()})

    def __call__(self, x: torch.Tensor, classes: torch.Tensor, support: torch.Tensor | None,
                 amp: bool = False) -> tuple[torch.Tensor, dict]:
        """WMDD Eq. 7 for the batch ``x [G * ipc, 3, S, S]`` float32 whose images are grouped
        by class (``classes [G]`` int64, ``ipc`` consecutive images each), matched one-to-one
        to ``support [G * ipc, D]`` float32 (``None`` without the barycenter term); ``amp``
        runs the teacher under bfloat16 autocast.

        Returns:
            ``(loss, parts)``: scalar float32 ``loss``; ``parts`` holds each term in use
            (``"feature"``, ``"bn"``, ``"ce"``), unweighted, as a detached 0-d tensor.
        """
        self._features.clear()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = self.model(x)
        ipc = x.shape[0] // classes.shape[0]
        loss = torch.zeros((), device=x.device)
        parts = {}
        if self.use_wb:
            feat = feature_matching_loss(self._features[-1], support)
            loss = loss + feat
            parts["feature"] = feat.detach()
        if self.r_bn > 0:
            mean_t, var_t = self.targets(classes)
            bn = bn_matching_loss(self.inputs, mean_t, var_t, self.layers, self.first, self.bn_reduction)
            loss = loss + self.r_bn * bn
            parts["bn"] = bn.detach()
        if self.r_ce > 0:
            ce = nn.functional.cross_entropy(logits.float(), classes.repeat_interleave(ipc))
            loss = loss + self.r_ce * ce
            parts["ce"] = ce.detach()
        self.inputs.clear()
        return loss, parts
