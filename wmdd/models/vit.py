"""ViT-Tiny through timm (optional dependency)."""

from __future__ import annotations

import torch.nn as nn

from wmdd.errors import UserError


def patch_size_for(image_size: int) -> int:
    """Patch side giving an 8x8 token grid up to 64 px and 16 px patches above
    (4 px at 32, 8 px at 64, 16 px at 224)."""
    return max(1, image_size // 8) if image_size <= 64 else 16


def build_vit_tiny(*, num_classes: int, image_size: int) -> nn.Module:
    """timm ``vit_tiny_patch16_224`` (random init) at ``image_size`` px.

    Raises:
        UserError: timm is not installed, or the size is not divisible by the patch.
    """
    try:
        import timm
    except ImportError:
        raise UserError("model 'vit_tiny' needs timm: `pip install timm` (it is in requirements.txt)") from None
    patch = patch_size_for(image_size)
    if image_size % patch:
        raise UserError(f"vit_tiny: input size {image_size} px is not divisible by the patch size {patch}")
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes,
                             img_size=image_size, patch_size=patch)
