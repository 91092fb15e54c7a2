"""Inputs of the train stage: the distilled image set, its sample weights and
the real train split relabelled from a pseudo-label CSV."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torchvision.datasets import ImageFolder

from wmdd.data.datasets import DatasetSpec
from wmdd.data.folders import distilled_images_dir, image_folder, load_image, with_transform
from wmdd.data.transforms import distilled_transform
from wmdd.errors import UserError
from wmdd.io.files import sha256_files
from wmdd.io.manifest import recover_record
from wmdd.recover.multiformation import decode

log = logging.getLogger("wmdd.train")


@dataclass
class ImageSet:
    """An ImageFolder of (distilled) images.

    Attributes:
        root: the folder.
        files: image paths relative to ``root``, sorted (image index order).
        labels: int64 ``[N]`` folder labels.
        classes: class folder names.
    """

    root: Path
    files: list[str]
    labels: torch.Tensor
    classes: list[str]

    @property
    def paths(self) -> list[Path]:
        return [self.root / f for f in self.files]

    def sha256(self) -> str:
        """Hash of the file names and contents (see :func:`wmdd.io.files.sha256_files`)."""
        return sha256_files(self.root, self.files)


def load_image_set(images_dir: str | Path) -> ImageSet:
    """The images of ``images_dir/<class>/*``.

    Raises:
        UserError: as :func:`wmdd.data.folders.distilled_images_dir`, no class folders or an
            empty class folder.
    """
    root = distilled_images_dir(images_dir)
    ds = image_folder(root)
    return ImageSet(root, [str(Path(p).relative_to(root)) for p, _ in ds.samples],
                    torch.tensor(ds.targets, dtype=torch.int64), ds.classes)


def recorded_input_size(images_dir: str | Path) -> int | None:
    """The side in pixels at which the recover run that wrote ``images_dir`` made its
    images (``"input_size"`` of its ``manifest.json`` next to the folder: the teacher's
    input size, e.g. 32 for Imagenette distilled with a 32 px teacher); ``None`` when
    there is no such manifest or it records none (images from elsewhere).

    Raises:
        UserError: the manifest is unreadable (:func:`wmdd.io.manifest.recover_record`).
    """
    size = recover_record(images_dir).get("input_size")
    return int(size) if size else None


def load_decoded(paths: list[Path], spec: DatasetSpec, size: int, factor: int) -> torch.Tensor:
    """The training images of stored distilled images: each PNG loaded whole at ``size``
    px (:func:`wmdd.data.transforms.distilled_transform`) and decoded into its ``factor**2``
    tiles (:func:`wmdd.recover.multiformation.decode`; factor 1: the images themselves).

    Returns:
        normalised float32 ``[len(paths) * factor**2, 3, size, size]``, image-major.

    Raises:
        UserError: an unreadable image (names the file), or ``size`` not divisible by ``factor``.
    """
    transform = distilled_transform(spec, size)
    return decode(torch.stack([transform(load_image(str(p))) for p in paths]), factor)


def load_sample_weights(csv_path: str | Path, images: ImageSet) -> torch.Tensor:
    """Per-image weights ``[N]`` float32 from recover's ``sample_weights.csv``
    (columns ``image_path`` relative to the image folder, ``weight``).

    Raises:
        UserError: missing columns, a row for an unknown image, a non-positive
            or non-numeric weight, or images without a row.
    """
    csv_path = Path(csv_path)
    try:
        table = pd.read_csv(csv_path, dtype={"image_path": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{csv_path}: cannot read sample weights ({exc})") from None
    if not {"image_path", "weight"} <= set(table.columns):
        raise UserError(f"{csv_path}: needs columns image_path and weight")
    index = {f: i for i, f in enumerate(images.files)}
    weights = torch.full((len(images.files),), float("nan"))
    for row, (path, w) in enumerate(zip(table["image_path"], table["weight"]), start=1):
        if path not in index:
            raise UserError(f"{csv_path}: row {row}: {path!r} is not an image of {images.root}; "
                            "pass --no-sample-weights or the matching weights file")
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise UserError(f"{csv_path}: row {row}: weight {w!r} is not a number") from None
        if not w > 0:
            raise UserError(f"{csv_path}: row {row}: weight {w} must be positive")
        weights[index[path]] = w
    missing = [images.files[i] for i in torch.isnan(weights).nonzero().flatten().tolist()]
    if missing:
        raise UserError(f"{csv_path}: {len(missing)} images of {images.root} have no weight (first: {missing[0]}); "
                        "pass --no-sample-weights or the matching weights file")
    return weights


def relabelled(folder: ImageFolder, labels: dict[str, int], transform) -> ImageFolder:
    """A copy of the train split ``folder`` restricted to the images in ``labels``
    (real path -> label), each with its label from ``labels``, applying ``transform``."""

    ds = with_transform(folder, transform)
    ds.samples = [(p, labels[os.path.realpath(p)]) for p, _ in ds.samples if os.path.realpath(p) in labels]
    ds.imgs = ds.samples
    ds.targets = [t for _, t in ds.samples]
    return ds
