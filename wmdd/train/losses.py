"""Student losses: FKD's knowledge-distillation KL at temperature T and mixed
cross-entropy for hard labels, both with per-image weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_i w_i * KL(softmax(z_t,i / T) || softmax(z_s,i / T)) * T^2``.

    Args:
        student_logits: ``[B, K]``.
        teacher_logits: ``[B, K]``; ``-inf`` entries (classes outside the stored
            top-k, see :func:`wmdd.relabel.soft_labels.dense_logits`) get probability 0
            and contribute nothing.
        temperature: T.
        weights: ``[B]`` per-image weights, or ``None`` for 1.

    Returns:
        Scalar float32 loss (mean over the B images).
    """
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_pt = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    pt = log_pt.exp()
    kl = torch.where(pt > 0, pt * (log_pt - log_ps), torch.zeros_like(pt)).sum(dim=1)
    if weights is not None:
        kl = kl * weights
    return kl.mean() * temperature ** 2


def mixed_cross_entropy(logits: torch.Tensor, target_a: torch.Tensor, target_b: torch.Tensor, lam: torch.Tensor,
                        weights: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_i w_i * (lam_i * CE(z_i, a_i) + (1 - lam_i) * CE(z_i, b_i))`` for views mixing
    images ``a`` (fraction ``lam`` ``[B]``) and ``b``; labels ``[B]`` int64."""
    ce = lam * F.cross_entropy(logits.float(), target_a, reduction="none") + \
        (1 - lam) * F.cross_entropy(logits.float(), target_b, reduction="none")
    if weights is not None:
        ce = ce * weights
    return ce.mean()
