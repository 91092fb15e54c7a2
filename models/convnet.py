"""The ConvNet of dataset-distillation papers (DC/DM; Zhao & Bilen)."""

from __future__ import annotations

import torch
import torch.nn as nn

from common.errors import UserError


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
    """``depth`` blocks of [3x3 conv (``width`` channels) -> norm -> ReLU -> 2x2 avg-pool],
    then a linear classifier on the flattened feature map.

    Input ``[B, 3, S, S]`` float32 with S divisible by ``2**depth``; output logits
    ``[B, num_classes]``. The penultimate features are the flattened map
    (``width * (S / 2**depth)**2`` values), the input of ``classifier``.

    ``norm="instance"`` is DM's instance norm (GroupNorm with one group per
    channel); ``"batch"`` gives the BatchNorm layers WMDD's statistics need.
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
