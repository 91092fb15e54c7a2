"""Dataset specifications: the one registry of class counts, image sizes,
normalisation and model stems.

No other module hard-codes a class count: code asks :func:`get_spec` and, for
the generic ``imagefolder`` dataset, :func:`resolve_spec` infers the classes from
the folder tree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from wmdd.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Largest input side (pixels) that uses the small-image model stem.
SMALL_STEM_MAX_SIZE = 64


def stem_for_size(image_size: int) -> str:
    """Model stem for square inputs of ``image_size`` pixels.

    ``"small"`` (3x3 stride-1 first convolution, no max-pool; CIFAR and, as in
    SRe2L's Tiny-ImageNet models, 64 px inputs) up to 64 px, ``"imagenet"``
    (the standard 7x7 stride-2 convolution and max-pool) above.
    """
    if image_size <= 0:
        raise UserError(f"image size must be a positive number of pixels, got {image_size}")
    return "small" if image_size <= SMALL_STEM_MAX_SIZE else "imagenet"


@dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about a dataset.

    Attributes:
        name: registry key, e.g. ``"cifar10"``.
        num_classes: number of classes; ``None`` only for the generic
            ``imagefolder`` spec before :func:`resolve_spec` fills it in.
        image_size: native (and default model input) side in pixels.
        mean, std: per-channel RGB normalisation of pixel values in [0, 1].
        description: one line for ``--help`` and the README.
    """

    name: str
    num_classes: int | None
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str

    @property
    def stem(self) -> str:
        """Model stem for the native image size (see :func:`stem_for_size`)."""
        return stem_for_size(self.image_size)

    def to_dict(self) -> dict:
        """Plain-Python form (lists, ints, strings) for JSON and ``torch.save``."""
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetSpec":
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=d["name"],
            num_classes=d["num_classes"],
            image_size=int(d["image_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            description=d.get("description", ""),
        )


_REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec("cifar10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                    "CIFAR-10 (Krizhevsky 2009), 32x32"),
        DatasetSpec("cifar100", 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                    "CIFAR-100 (Krizhevsky 2009), 32x32"),
        DatasetSpec("tiny-imagenet", 200, 64, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262),
                    "Tiny-ImageNet-200, 64x64"),
        DatasetSpec("imagenette", 10, 224, IMAGENET_MEAN, IMAGENET_STD,
                    "Imagenette (fast.ai 10-class ImageNet subset), 224x224"),
        DatasetSpec("imagewoof", 10, 224, IMAGENET_MEAN, IMAGENET_STD,
                    "Imagewoof (fast.ai 10 dog breeds of ImageNet), 224x224"),
        DatasetSpec("imagenet", 1000, 224, IMAGENET_MEAN, IMAGENET_STD,
                    "ImageNet-1k (ILSVRC 2012), 224x224"),
        DatasetSpec("digits", 10, 32, (0.3057, 0.3057, 0.3057), (0.3235, 0.3235, 0.3235),
                    "scikit-learn's 1,797 handwritten digits, 8x8 upsampled to 32x32 RGB"),
        DatasetSpec("imagefolder", None, 224, IMAGENET_MEAN, IMAGENET_STD,
                    "any ImageFolder tree; classes inferred from the folders"),
    ]
}


def dataset_names() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> DatasetSpec:
    """Registered spec for ``name``.

    Raises:
        UserError: ``name`` is not registered (the message lists the names).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(
            f"unknown dataset {name!r}: registered datasets are {', '.join(dataset_names())}; "
            "use 'imagefolder' for any other ImageFolder tree"
        ) from None


def resolve_spec(name: str, classes: list[str], root: str = "", subset: bool = False) -> DatasetSpec:
    """The spec for ``name`` checked against (or, for ``imagefolder``, completed
    from) the class folders found on disk.

    Args:
        name: registered dataset name.
        classes: class folder names found under ``root``'s train split, sorted.
        root: dataset root, only used in error messages.
        subset: ``classes`` is a ``--classes`` subset; its size is not checked.

    Raises:
        UserError: the number of class folders differs from the registered
            number of classes.
    """
    spec = get_spec(name)
    if spec.num_classes is None:
        return replace(spec, num_classes=len(classes))
    if len(classes) != spec.num_classes and not subset:
        raise UserError(
            f"{root or 'dataset root'}: found {len(classes)} class folders but dataset {name!r} "
            f"has {spec.num_classes} classes; point --data-path at the full {name} tree "
            "or use --dataset imagefolder"
        )
    return spec
