"""The ConvNet of dataset-distillation papers (DC/DM; Zhao & Bilen)."""

from __future__ import annotations

import torch
import torch.nn as nn

from wmdd.errors import UserError

#: Where :func:`block_outputs` reads a block's feature map.
BLOCK_POINTS = ("post_norm", "pre_norm")


def default_depth(image_size: int) -> int:
    """DM's depth for an input side: 3 at 32 px, 4 at 64 px, 5 at 128 and 224 px
    (stops when the feature map would fall below 4x4 pixels)."""
    depth, side = 0, image_size
    while side >= 8 and depth < 6:
        side //= 2
        depth += 1
    return max(1, depth)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise UserError(f"convnet norm {kind!r}: expected batch, instance or none")


class ConvNet(nn.Module):
    """The ConvNet of DC/DM (Zhao & Bilen; DM, WACV 2023, uses depth 3 at 32 px, width 128,
    instance norm, ReLU, average pooling): ``depth`` blocks of [3x3 conv (``width``
    channels) -> norm -> ReLU -> 2x2 avg-pool], then a linear classifier on the flattened
    feature map.

    Input ``[B, 3, S, S]`` float32 with S divisible by ``2**depth``; output logits
    ``[B, num_classes]``. The penultimate features are the flattened map
    (``width * (S / 2**depth)**2`` values), the input of ``classifier``.

    ``norm="instance"`` is DM's instance norm (GroupNorm with one group per
    channel; registered as ``convnet_in``); ``"batch"`` gives the BatchNorm
    layers WMDD's statistics need. :func:`block_outputs` reads every block's
    feature map.

    Raises:
        UserError: ``image_size`` not divisible by ``2**depth``, or an unknown ``norm``.
    """

    def __init__(self, *, num_classes: int, image_size: int, depth: int | None = None,
                 width: int = 128, norm: str = "batch"):
        super().__init__()
        depth = depth or default_depth(image_size)
        if image_size % (2 ** depth):
            raise UserError(f"convnet depth {depth} needs an input side divisible by {2 ** depth}, "
                            f"got {image_size} px; change --input-size or the depth")
        layers, channels = [], 3
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1), _norm(norm, width),
                       nn.ReLU(inplace=True), nn.AvgPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        side = image_size // (2 ** depth)
        self.classifier = nn.Linear(width * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def block_outputs(model: ConvNet, x: torch.Tensor,
                  where: str = "post_norm") -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every block's feature map and the final embedding, in one forward pass.

    Walks ``model.features`` block by block ([conv, norm, ReLU, pool]); the
    ReLU is applied out of place so that the recorded maps are not overwritten
    by the model's in-place ReLU. Used by style matching on DM's network
    (Decomposed DM, Malakshan et al., WACV 2025).

    Args:
        model: a :class:`ConvNet` (e.g. ``create_model("convnet_in", ...)``).
        x: ``[B, 3, S, S]`` float32.
        where: ``"post_norm"``: each block's norm output, before the ReLU
            (with instance norm, per-image channel means ~0 and variances ~1
            at initialisation); ``"pre_norm"``: the convolution output.

    Returns:
        ``(maps, embedding)``: ``maps[k]`` is ``[B, width, S / 2**k, S / 2**k]``
        for block k (``[B, 128, 32, 32]``, ``[B, 128, 16, 16]``,
        ``[B, 128, 8, 8]`` for DM's ConvNet at 32 px); ``embedding`` is
        ``[B, width * (S / 2**depth)**2]``, the flattened last block output that
        the classifier reads (:func:`wmdd.models.features.penultimate_features`).
        Differentiable w.r.t. ``x`` and the weights.

    Raises:
        UserError: ``model`` is not a ConvNet, or ``where`` is not one of
            :data:`BLOCK_POINTS`.
    """
    if not isinstance(model, ConvNet):
        raise UserError(f"block_outputs needs a ConvNet (convnet, convnet_in), got {type(model).__name__}")
    if where not in BLOCK_POINTS:
        raise UserError(f"block feature maps are read at {' or '.join(BLOCK_POINTS)}, got {where!r}")
    maps, h = [], x
    layers = iter(model.features)
    for conv, norm, _, pool in zip(layers, layers, layers, layers):
        pre = conv(h)
        post = norm(pre)
        maps.append(post if where == "post_norm" else pre)
        h = pool(torch.relu(post))
    return maps, torch.flatten(h, 1)
