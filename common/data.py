"""Loading ImageFolder trees ``ROOT/<split>/<class>/<image>``.

Class index = position of the class folder in the sorted list of folder names
(torchvision's ImageFolder convention). The evaluation split may be called
``val`` or ``test``. Scanning is done by :class:`torchvision.datasets.ImageFolder`;
this module adds clear errors, seeded per-class subsets and the check that
train and evaluation splits have the same classes.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from common.errors import UserError

EVAL_SPLIT_NAMES = ("val", "test")


def split_dir(root: str | Path, split: str) -> Path:
    """Directory of ``split`` (``"train"`` or ``"val"``) under ``root``.

    ``"val"`` resolves to ``ROOT/val`` or, when that does not exist, ``ROOT/test``.

    Raises:
        UserError: the directory does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: dataset root does not exist; pass the folder that holds train/ and val/ "
                        "(prepare one with `python -m common.prepare`)")
    names = ("train",) if split == "train" else EVAL_SPLIT_NAMES
    for name in names:
        if (root / name).is_dir():
            return root / name
    wanted = " or ".join(f"{root / n}" for n in names)
    raise UserError(f"{wanted}: missing split directory; the dataset root must hold "
                    f"train/<class>/* and val/<class>/* (or test/<class>/*)")


def list_classes(directory: str | Path) -> list[str]:
    """Sorted class folder names in ``directory``.

    Raises:
        UserError: no class folders, or a class folder holds no image.
    """
    directory = Path(directory)
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(f"{directory}: no class folders; images must be in {directory}/<class_name>/")
    for c in classes:
        if not any(_is_image(p) for p in (directory / c).rglob("*")):
            raise UserError(f"{directory / c}: empty class folder (no {'/'.join(IMG_EXTENSIONS)} file); "
                            "add images or remove the folder from every split")
    return classes


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS and path.is_file()


def load_image(path: str) -> Image.Image:
    """Read ``path`` as an RGB PIL image.

    Raises:
        UserError: the file cannot be read or decoded (names the file).
    """
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"{path}: cannot read image ({exc}); replace or delete the file") from None


def select_per_class(samples: list[tuple[str, int]], per_class: int | None, seed: int,
                     where: str = "") -> list[tuple[str, int]]:
    """A seeded choice of ``per_class`` samples of every class.

    Args:
        samples: ``(path, class_index)`` pairs.
        per_class: images to keep per class; ``None`` keeps everything.
        seed: seed of the choice (numpy ``default_rng``).
        where: split directory, for error messages.

    Returns:
        The chosen samples, ordered by class and then by path.

    Raises:
        UserError: a class has fewer than ``per_class`` images, or ``per_class < 1``.
    """
    if per_class is None:
        return list(samples)
    if per_class < 1:
        raise UserError(f"images per class must be >= 1, got {per_class}")
    by_class: dict[int, list[tuple[str, int]]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in sorted(by_class):
        items = sorted(by_class[c])
        if len(items) < per_class:
            raise UserError(f"{where}: class index {c} has {len(items)} images, fewer than the "
                            f"{per_class} per class asked for; lower the per-class count")
        idx = np.sort(rng.choice(len(items), size=per_class, replace=False))
        chosen.extend(items[i] for i in idx)
    return chosen


def image_folder(directory: str | Path, transform=None, classes: list[str] | None = None,
                 per_class: int | None = None, seed: int = 0) -> ImageFolder:
    """A torchvision :class:`ImageFolder` over ``directory`` with clear errors.

    Args:
        directory: split directory with one sub-folder per class.
        transform: applied to each PIL image.
        classes: expected class folder names (e.g. the train split's); ``None``
            accepts whatever is found.
        per_class: keep a seeded choice of this many images per class.
        seed: seed of that choice.

    Returns:
        The dataset; ``dataset.classes`` is the sorted class list and unreadable
        images raise :class:`UserError` naming the file when loaded.

    Raises:
        UserError: empty class folder, class folders different from
            ``classes``, or too few images for ``per_class``.
    """
    directory = Path(directory)
    found = list_classes(directory)
    if classes is not None and found != list(classes):
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise UserError(f"{directory}: class folders differ from the training classes "
                        f"(missing: {missing or 'none'}; unexpected: {extra or 'none'}); "
                        "every split must have the same class folders")
    ds = ImageFolder(str(directory), transform=transform, loader=load_image)
    ds.samples = select_per_class(ds.samples, per_class, seed, where=str(directory))
    ds.imgs = ds.samples
    ds.targets = [t for _, t in ds.samples]
    return ds


def load_splits(root: str | Path, train_transform=None, val_transform=None,
                train_per_class: int | None = None, val_per_class: int | None = None,
                seed: int = 0) -> tuple[ImageFolder, ImageFolder]:
    """Train and evaluation splits of the ImageFolder tree at ``root``.

    Raises:
        UserError: a split is missing, a class folder is empty, or the two
            splits have different class folders.
    """
    train = image_folder(split_dir(root, "train"), train_transform, per_class=train_per_class, seed=seed)
    val = image_folder(split_dir(root, "val"), val_transform, classes=train.classes,
                       per_class=val_per_class, seed=seed)
    return train, val


def with_transform(dataset: ImageFolder, transform) -> ImageFolder:
    """A shallow copy of ``dataset`` (same samples) applying ``transform``."""
    clone = copy.copy(dataset)
    clone.transform = transform
    return clone
