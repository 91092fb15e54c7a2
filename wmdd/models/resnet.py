"""torchvision ResNets with a stem chosen by input size."""

from __future__ import annotations

import torch.nn as nn
import torchvision


def build_resnet(depth: int, *, num_classes: int, stem: str) -> nn.Module:
    """torchvision ``resnet{depth}`` (random init) with ``num_classes`` outputs.

    Args:
        depth: 18, 50 or 101.
        num_classes: size of the classifier ``fc``.
        stem: ``"imagenet"`` keeps the 7x7 stride-2 convolution and max-pool;
            ``"small"`` (inputs <= 64 px) replaces them with a 3x3 stride-1
            convolution and no max-pool, as for CIFAR in SRe2L/WMDD and for
            Tiny-ImageNet in SRe2L.

    Input ``[B, 3, H, W]`` float32, output logits ``[B, num_classes]``.
    """
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=num_classes)
    if stem == "small":
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model
