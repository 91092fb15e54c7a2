"""A validation split held out from the train split, for choosing recipes without the test split.

``wmdd tune`` scores every trial on images carved from the train split, never on the dataset's
own val/test split. :func:`holdout_split` makes the seeded choice (pure); :func:`write_holdout_root`
materialises it as a dataset root of symbolic links, ``ROOT/train/<class>/...`` (the rest of the
train split) and ``ROOT/val/<class>/...`` (the held-out images), which every stage reads like any
dataset folder, with ``ROOT/holdout.json`` recording the choice. The source's val/test split is
never opened.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np

from wmdd.data.folders import class_folders, is_image_file
from wmdd.errors import UserError
from wmdd.io.files import atomic_write_json, read_json

#: Fraction of every class held out when no ``--val-per-class`` is given.
DEFAULT_VAL_FRACTION = 0.1
HOLDOUT_FILE = "holdout.json"


def holdout_split(files: dict[str, list[str]], val_per_class: int | None, seed: int,
                  fraction: float = DEFAULT_VAL_FRACTION) -> dict[str, list[str]]:
    """The held-out images of every class: ``val_per_class`` of them, or ``ceil(fraction * n)``
    (at least 1) of a class of ``n`` images, chosen with numpy ``default_rng(seed)`` over the
    sorted file names, class by class in sorted order.

    Args:
        files: class name -> its image paths (relative to the class folder; any order).
        val_per_class: images held out per class, or ``None`` for ``fraction``.
        seed: seed of the choice.
        fraction: share of a class held out when ``val_per_class`` is ``None``, in (0, 1).

    Returns:
        Class name -> its held-out paths, sorted.

    Raises:
        UserError: a class would keep no train image (it has ``val_per_class`` or fewer).
    """
    rng = np.random.default_rng(seed)
    chosen = {}
    for name in sorted(files):
        items = sorted(files[name])
        take = val_per_class if val_per_class is not None else max(1, math.ceil(fraction * len(items)))
        if take >= len(items):
            raise UserError(f"class {name!r} has {len(items)} train images: holding out {take} leaves none to distil "
                            "from; lower --val-per-class")
        chosen[name] = sorted(items[i] for i in rng.choice(len(items), size=take, replace=False))
    return chosen


def class_images(split: Path, classes: list[str]) -> dict[str, list[str]]:
    """Class name -> the image files under ``split/<class>/`` (:func:`wmdd.data.folders.is_image_file`),
    as paths relative to the class folder."""
    out = {}
    for name in classes:
        folder = split / name
        out[name] = [str(p.relative_to(folder)) for p in folder.rglob("*")
                     if is_image_file(str(p), str(split)) and p.is_file()]
    return out


def _clear_links(root: Path) -> None:
    """Remove what an interrupted :func:`write_holdout_root` left in ``root`` (only symbolic links
    under ``train/`` and ``val/`` and their folders).

    Raises:
        UserError: ``root`` holds anything else.
    """
    if not root.exists():
        return
    unknown = sorted(p.name for p in root.iterdir() if p.name not in ("train", "val"))
    unknown += sorted(str(p) for d in ("train", "val") if (root / d).is_dir()
                      for p in (root / d).rglob("*") if not p.is_symlink() and not p.is_dir())
    if unknown:
        raise UserError(f"{root} holds {', '.join(unknown[:3])}, not a held-out split of links; give an empty or "
                        "new directory")
    for d in ("train", "val"):
        if (root / d).is_dir():
            shutil.rmtree(root / d)


def write_holdout_root(train: str | Path, root: str | Path, val_per_class: int | None, seed: int) -> dict:
    """Materialise the held-out split of the train split ``train`` as the dataset root ``root``
    (``root/train``, ``root/val``: symbolic links to the images of ``train``) and record it in
    ``root/holdout.json``. A root written before with the same source and settings is kept as it is
    (a resumed study scores on the same images); the links are written before ``holdout.json``,
    so a root without it is incomplete and is rewritten.

    Returns:
        The record: ``{"source", "seed", "val_per_class", "fraction", "val": {class: [paths]},
        "train_images", "val_images"}``.

    Raises:
        UserError: ``train`` has no class folders, a class would keep no image, or ``root`` holds a
            different split (other source, seed or size), or other files.
    """
    train, root = Path(train).resolve(), Path(root)
    record_path = root / HOLDOUT_FILE
    settings = {"source": str(train), "seed": seed, "val_per_class": val_per_class,
                "fraction": None if val_per_class is not None else DEFAULT_VAL_FRACTION}
    if record_path.is_file():
        record = read_json(record_path, "held-out split record")
        if {k: record.get(k) for k in settings} != settings:
            kept = {k: record.get(k) for k in settings}
            raise UserError(f"{root} holds another held-out split ({kept}), not {settings}; use another output "
                            "directory or the settings the study was started with")
        return record
    _clear_links(root)
    classes = class_folders(train) if train.is_dir() else []
    if not classes:
        raise UserError(f"{train}: no class folders; give a dataset root whose train/ holds one folder per class")
    files = class_images(train, classes)
    empty = [c for c, f in files.items() if not f]
    if empty:
        raise UserError(f"{train}: no images in class folder(s) {', '.join(empty)}; add images or remove the folders")
    val = holdout_split(files, val_per_class, seed)
    for name in classes:
        held = set(val[name])
        for rel in files[name]:
            link = root / ("val" if rel in held else "train") / name / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            os.symlink(train / name / rel, link)
    record = {**settings, "val": val, "train_images": sum(len(f) for f in files.values()) - sum(map(len, val.values())),
              "val_images": sum(map(len, val.values()))}
    atomic_write_json(record_path, record)
    return record
