"""Architecture registry: ``create_model(name, num_classes=, dataset=)``."""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from wmdd.data.datasets import DatasetSpec, get_spec, stem_for_size
from wmdd.errors import UserError
from wmdd.models.convnet import ConvNet
from wmdd.models.resnet import build_resnet
from wmdd.models.vit import build_vit_tiny

# name -> builder(num_classes, image_size, **options)
_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": lambda num_classes, image_size: build_resnet(18, num_classes=num_classes,
                                                             stem=stem_for_size(image_size)),
    "resnet50": lambda num_classes, image_size: build_resnet(50, num_classes=num_classes,
                                                             stem=stem_for_size(image_size)),
    "resnet101": lambda num_classes, image_size: build_resnet(101, num_classes=num_classes,
                                                              stem=stem_for_size(image_size)),
    "convnet": lambda num_classes, image_size, **kw: ConvNet(num_classes=num_classes,
                                                             image_size=image_size, **kw),
    # DM's network (Zhao & Bilen, WACV 2023): instance norm, width 128, DM's depth for the input side
    "convnet_in": lambda num_classes, image_size, **kw: ConvNet(num_classes=num_classes, image_size=image_size,
                                                                norm="instance", **kw),
    "vit_tiny": lambda num_classes, image_size: build_vit_tiny(num_classes=num_classes,
                                                               image_size=image_size),
}

#: Options each architecture accepts through ``--model-kwargs key=value``.
MODEL_OPTIONS: dict[str, dict[str, type]] = {
    "convnet": {"depth": int, "width": int, "norm": str},
    "convnet_in": {"depth": int, "width": int},
}


def model_names() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_BUILDERS)


def parse_model_kwargs(name: str, items: list[str] | None) -> dict[str, Any]:
    """``["depth=4", "norm=instance"]`` -> ``{"depth": 4, "norm": "instance"}``.

    Raises:
        UserError: malformed item, or an option the architecture does not take.
    """
    allowed = MODEL_OPTIONS.get(name, {})
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            raise UserError(f"--model-kwargs {item!r}: {name} takes "
                            f"{', '.join(f'{k}=<{t.__name__}>' for k, t in allowed.items()) or 'no options'}")
        try:
            out[key] = allowed[key](value)
        except ValueError:
            raise UserError(f"--model-kwargs {item!r}: {key} must be {allowed[key].__name__}") from None
    return out


def create_model(name: str, *, num_classes: int, dataset: DatasetSpec | str,
                 input_size: int | None = None, **options: Any) -> nn.Module:
    """A freshly initialised ``name`` for ``dataset``.

    Args:
        name: one of :func:`model_names` (``resnet18``, ``resnet50``,
            ``resnet101``, ``convnet``, ``convnet_in``, ``vit_tiny``).
            ``convnet_in`` is DM's ConvNet: ``convnet`` with instance norm
            (depth and width options only).
        num_classes: classifier outputs.
        dataset: spec (or registered name) whose image size picks the stem.
        input_size: input side in pixels when it differs from the dataset's
            native size; the stem follows the actual input size
            (:func:`wmdd.data.datasets.stem_for_size`).
        **options: architecture options (see ``MODEL_OPTIONS``).

    Returns:
        A module mapping ``[B, 3, S, S]`` float32 to logits ``[B, num_classes]``.

    Raises:
        UserError: unknown name or option, or timm missing for ``vit_tiny``.
    """
    spec = get_spec(dataset) if isinstance(dataset, str) else dataset
    if name not in _BUILDERS:
        raise UserError(f"unknown model {name!r}: registered models are {', '.join(model_names())}")
    unknown = set(options) - set(MODEL_OPTIONS.get(name, {}))
    if unknown:
        raise UserError(f"model {name!r} takes no option {sorted(unknown)[0]!r}")
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    return _BUILDERS[name](num_classes, input_size or spec.image_size, **options)
