"""Loading ImageFolder trees ``ROOT/<split>/<class>/<image>``.

Class index = position of the class folder in the sorted list of folder names
(torchvision's ImageFolder convention). The evaluation split may be called
``val`` or ``test``. Scanning is done by :class:`torchvision.datasets.ImageFolder`;
this module adds clear errors, seeded per-class subsets and the check that
train and evaluation splits have the same classes.

Hidden entries are never classes or images: a folder or file whose name starts
with ``.`` (``.ipynb_checkpoints``, ``.thumbnails``, ``.DS_Store``, macOS
AppleDouble files ``._name.jpg``), in a split or anywhere inside a class folder,
is skipped through ImageFolder's own hooks (``find_classes``, ``is_valid_file``).
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from wmdd.errors import UserError

log = logging.getLogger("wmdd.data")
EVAL_SPLIT_NAMES = ("val", "test")
APPLEDOUBLE_PREFIX = "._"


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden (starts with ``.``; ``.`` and ``..`` are not names).

    Hidden names are skipped everywhere classes or images are listed: editor and
    viewer caches (``.ipynb_checkpoints``, ``.thumbnails``), ``.DS_Store`` and
    macOS AppleDouble files (``._name.jpg``, metadata, not images).
    """
    return name.startswith(".") and name not in (".", "..")


def split_dir(root: str | Path, split: str) -> Path:
    """Directory of ``split`` (``"train"`` or ``"val"``) under ``root``.

    ``"val"`` resolves to ``ROOT/val`` or, when that does not exist, ``ROOT/test``.

    Raises:
        UserError: the directory does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: dataset root does not exist; pass the folder that holds train/ and val/ "
                        "(prepare one with `python -m wmdd.data.prepare`)")
    names = ("train",) if split == "train" else EVAL_SPLIT_NAMES
    for name in names:
        if (root / name).is_dir():
            return root / name
    wanted = " or ".join(f"{root / n}" for n in names)
    raise UserError(f"{wanted}: missing split directory; the dataset root must hold "
                    f"train/<class>/* and val/<class>/* (or test/<class>/*)")


def class_folders(directory: str | Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``directory`` (no other check)."""
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not is_hidden(e.name))


def is_image_file(path: str, split_root: str) -> bool:
    """Whether ``path``, a file under ``split_root/<class>/`` (given as a string
    that starts with ``split_root``, as ImageFolder and ``Path.rglob`` give it),
    counts as an image: an image extension (torchvision's ``IMG_EXTENSIONS``) and
    no hidden name in its path below ``split_root``."""
    return (has_file_allowed_extension(path, IMG_EXTENSIONS)
            and not any(map(is_hidden, path[len(split_root):].split(os.sep))))


def images_per_class(directory: str | Path, classes: list[str], cap: int | None = None) -> dict[str, int]:
    """The number of image files (:func:`is_image_file`) under ``directory/<class>/`` for each
    of ``classes`` (0 for a missing folder), found without opening any image; with ``cap``,
    counting stops there (``min(count, cap)``), so a check on a large split stays quick."""
    directory = Path(directory)
    files = {c: (p for p in (directory / c).rglob("*") if is_image_file(str(p), str(directory)) and p.is_file())
             for c in classes}
    return {c: sum(1 for _ in itertools.islice(found, cap)) for c, found in files.items()}


def list_classes(directory: str | Path, subset: list[str] | None = None) -> list[str]:
    """Sorted class folder names in ``directory`` (hidden folders skipped), or ``subset``
    (``--classes``) after checking that each of its folders is there.

    Raises:
        UserError: no class folders, a folder of ``subset`` is missing, or a class
            folder holds no image.
    """
    directory = Path(directory)
    if subset is not None:
        absent = [c for c in subset if not (directory / c).is_dir()]
        if absent:
            raise UserError(f"{directory}: no class folder {absent[0]!r} of the --classes subset "
                            f"({len(absent)} missing); every split must hold the chosen classes")
    classes = list(subset) if subset is not None else class_folders(directory)
    if not classes:
        raise UserError(f"{directory}: no class folders; images must be in {directory}/<class_name>/")
    for c in classes:
        if not any(is_image_file(str(p), str(directory)) and p.is_file() for p in (directory / c).rglob("*")):
            raise UserError(f"{directory / c}: empty class folder (no {'/'.join(IMG_EXTENSIONS)} file); "
                            "add images or remove the folder from every split")
    return classes


class ImageFilter:
    """ImageFolder's ``is_valid_file`` for one split directory: :func:`is_image_file`,
    counting the macOS AppleDouble files (``._name.jpg``) it rejects in ``appledouble``."""

    def __init__(self, split_root: str | Path):
        self.split_root = str(split_root)
        self.appledouble = 0

    def __call__(self, path: str) -> bool:
        if os.path.basename(path).startswith(APPLEDOUBLE_PREFIX):
            self.appledouble += 1
            return False
        return is_image_file(path, self.split_root)


class VisibleImageFolder(ImageFolder):
    """torchvision's :class:`ImageFolder` whose classes are the non-hidden
    sub-folders (:func:`class_folders`), or only the folders named in ``only`` (a
    class subset, sorted); pass :class:`ImageFilter` as ``is_valid_file`` to skip
    hidden files and folders inside the classes too."""

    def __init__(self, root: str, *args, only: list[str] | None = None, **kwargs):
        self.only = only
        super().__init__(root, *args, **kwargs)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = list(self.only) if self.only is not None else class_folders(directory)
        return classes, {c: i for i, c in enumerate(classes)}


def _is_class_count(value: str) -> bool:
    """Whether a ``--classes`` value is a number of classes (ASCII digits) rather than a file."""
    text = str(value).strip()
    return text.isascii() and text.isdigit()


def resolve_classes(value: str | None, train_dir: str | Path) -> list[str] | None:
    """The class subset named by ``--classes`` (``None``: every class folder).

    Args:
        value: ``N`` (the first N class folders of ``train_dir`` in sorted order) or
            the path of a text file with one class folder name per line (blank lines
            and ``#`` comments ignored); ``None`` for all classes.
        train_dir: the train split directory.

    Returns:
        The subset's folder names in sorted order (the class-index order).

    Raises:
        UserError: N < 1 or more than the class folders, a missing, binary or empty
            file, a name listed twice, or a name that is not a class folder of ``train_dir``.
    """
    if value is None:
        return None
    found = class_folders(train_dir)
    text = str(value).strip()
    if _is_class_count(text):
        n = int(text)
        if not 1 <= n <= len(found):
            raise UserError(f"--classes {text}: {train_dir} has {len(found)} class folders; pass 1 to {len(found)} "
                            "or a file of class names")
        return found[:n]
    path = Path(text)
    if not path.is_file():
        raise UserError(f"--classes {text}: neither a number of classes nor an existing file of class names")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file; --classes takes a number or a file with one class "
                        "folder name per line") from None
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if name in first_line:
            raise UserError(f"{path}: line {number} names {name!r} again (first on line {first_line[name]}); "
                            "list each class once")
        first_line[name] = number
    names = sorted(first_line)
    if not names:
        raise UserError(f"{path}: no class names (one class folder name per line)")
    unknown = [n for n in names if n not in found]
    if unknown:
        raise UserError(f"{path}: {len(unknown)} name(s) that are not class folders of {train_dir}, e.g. "
                        f"{unknown[0]!r}; fix the names")
    return names


def recorded_classes(value: str | None, data_path: str | Path | None) -> str | list[str] | None:
    """What a stage's manifest records for ``--classes``: ``None`` and ``N`` as given, a FILE
    as the sorted class names it lists (:func:`resolve_classes`), so that a run whose class
    file was edited since is a different run, not one "already finished with these arguments".

    Raises:
        UserError: as :func:`resolve_classes` (a missing or unusable file, unknown names).
    """
    if value is None or data_path is None or _is_class_count(value):
        return value  # without --data-path the stage refuses to run anyway
    return resolve_classes(value, split_dir(data_path, "train"))


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


def distilled_images_dir(images_dir: str | Path) -> Path:
    """``images_dir`` (``--images``: an ImageFolder of distilled images, e.g. recover's
    ``OUT/images``) after checking that it is one.

    Raises:
        UserError: missing directory, or a recover output directory instead of its
            ``images/`` folder (names the folder to pass).
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise UserError(f"{root}: image directory not found; pass recover's OUT/images (or any ImageFolder)")
    if (root / "images").is_dir() and ((root / "progress").is_dir() or (root / "manifest.json").is_file()):
        raise UserError(f"{root}: is a recover output directory, not an image folder; pass {root / 'images'}")
    return root


def image_folder(directory: str | Path, transform=None, classes: list[str] | None = None,
                 per_class: int | None = None, seed: int = 0, subset: list[str] | None = None) -> ImageFolder:
    """A torchvision :class:`ImageFolder` over ``directory`` with clear errors.

    Args:
        directory: split directory with one sub-folder per class.
        transform: applied to each PIL image.
        classes: expected class folder names (e.g. the train split's); ``None``
            accepts whatever is found.
        per_class: keep a seeded choice of this many images per class.
        seed: seed of that choice.
        subset: use only these class folders (``--classes``, :func:`resolve_classes`);
            other folders are ignored, each of these must exist.

    Returns:
        The dataset; ``dataset.classes`` is the sorted list of non-hidden class
        folders, hidden files and folders are not samples (one log line counts
        the skipped AppleDouble files) and unreadable images raise
        :class:`UserError` naming the file when loaded.

    Raises:
        UserError: empty class folder, class folders different from
            ``classes``, or too few images for ``per_class``.
    """
    directory = Path(directory)
    found = list_classes(directory, subset)
    if classes is not None and found != list(classes):
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        hint = ("every split must have the same class folders" if missing else
                f"if the training classes are a subset of these {len(found)} (--classes in an earlier stage), pass "
                "the same --classes here; otherwise every split must have the same class folders")
        raise UserError(f"{directory}: class folders differ from the training classes "
                        f"(missing: {missing[:5] or 'none'}; unexpected: {extra[:5] or 'none'}); {hint}")
    keep = ImageFilter(directory)
    ds = VisibleImageFolder(str(directory), transform=transform, loader=load_image, is_valid_file=keep, only=subset)
    if keep.appledouble:
        log.info("%s: skipped %d macOS AppleDouble file(s) (._name, metadata, not images)", directory,
                 keep.appledouble)
    ds.samples = select_per_class(ds.samples, per_class, seed, where=str(directory))
    ds.imgs = ds.samples
    ds.targets = [t for _, t in ds.samples]
    return ds


def load_splits(root: str | Path, train_transform=None, val_transform=None,
                train_per_class: int | None = None, val_per_class: int | None = None,
                seed: int = 0, subset: list[str] | None = None) -> tuple[ImageFolder, ImageFolder]:
    """Train and evaluation splits of the ImageFolder tree at ``root`` (only the classes
    of ``subset`` when given, :func:`resolve_classes`).

    Raises:
        UserError: a split is missing, a class folder is empty, or the two
            splits have different class folders (or lack one of ``subset``).
    """
    train = image_folder(split_dir(root, "train"), train_transform, per_class=train_per_class, seed=seed,
                         subset=subset)
    val = image_folder(split_dir(root, "val"), val_transform, classes=train.classes,
                       per_class=val_per_class, seed=seed, subset=subset)
    return train, val


def with_transform(dataset: ImageFolder, transform) -> ImageFolder:
    """A shallow copy of ``dataset`` (same samples) applying ``transform``."""
    clone = copy.copy(dataset)
    clone.transform = transform
    return clone
