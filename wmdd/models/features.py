"""Penultimate features of any registered model, without editing its code.

The features are the input of the final linear classifier (after global
pooling for ResNets and ViTs, the flattened map for ConvNet). A forward
pre-hook on the classifier captures them during an ordinary forward pass.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from wmdd.errors import UserError

_CLASSIFIER_ATTRS = ("fc", "classifier", "head")


def classifier_module(model: nn.Module) -> nn.Module:
    """The final linear layer: timm's ``get_classifier()``, else ``fc``,
    ``classifier`` or ``head``.

    Raises:
        UserError: no linear classifier is found.
    """
    model = model.module if hasattr(model, "module") else model
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, nn.Linear):
            return head
    for attr in _CLASSIFIER_ATTRS:
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            return head
    raise UserError(f"{type(model).__name__}: no final nn.Linear classifier found "
                    f"(looked at get_classifier(), {', '.join(_CLASSIFIER_ATTRS)})")


def forward_with_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass returning ``(logits [B, K], features [B, D])``, the features being
    the classifier's input (WMDD's feature space, Sec. III).

    Gradients flow through both when autograd is enabled.

    Raises:
        UserError: no final linear classifier (:func:`classifier_module`).
    """
    captured: list[torch.Tensor] = []
    handle = classifier_module(model).register_forward_pre_hook(lambda m, inp: captured.append(inp[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, captured[-1]


def penultimate_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Features ``[B, D]`` (float32 for float32 input) entering the classifier: WMDD's feature
    space (the last layer before the linear classifier, WMDD Sec. III; Eq. 5) and the
    embedding of DM Eq. 4 and DANCE Eq. 4.

    Raises:
        UserError: no final linear classifier (:func:`classifier_module`).
    """
    return forward_with_features(model, x)[1]
