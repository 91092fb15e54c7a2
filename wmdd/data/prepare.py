"""``python -m wmdd.data.prepare``: build ImageFolder trees ``DEST/<split>/<class>/<image>``.

Sub-commands:

* ``extract ARCHIVE DEST [--train-per-class N] [--val-per-class N] [--seed S]``:
  a local ``.tar``/``.tar.gz``/``.tgz``/``.zip`` holding ``[prefix/]train/<class>/*``
  and ``val/`` or ``test/`` (e.g. ``../shared/datasets/cifar10-jpg.tar.gz``), or
  the official ``tiny-imagenet-200.zip`` (its val images are sorted into class
  folders on the way), optionally only a seeded choice of N images per class.
  Hidden entries (``.DS_Store``, ``._*``, ``__MACOSX/``) are left out.
* ``download {cifar10,cifar100} DEST``: torchvision download (needs internet),
  written as PNG trees ``train/`` and ``test/``.
* ``tiny-imagenet ROOT``: move a hand-unzipped Tiny-ImageNet's ``val/images/*``
  into ``val/<wnid>/`` using ``val/val_annotations.txt`` (in place, all checks
  first).
* ``digits DEST [--val-fraction F] [--seed S]``: scikit-learn's bundled 1,797
  real 8x8 handwritten digits, upsampled to 32x32 RGB PNG, stratified split.

``extract``, ``download`` and ``digits`` build into ``DEST.partial`` and rename
it to ``DEST`` when complete, with ``DEST/.prepared.json`` describing what was
built; a complete ``DEST`` built with the same options is left alone. No command
reports success for a tree whose evaluation split has other classes than train.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
from PIL import Image

from wmdd.data.folders import EVAL_SPLIT_NAMES, class_folders, is_hidden
from wmdd.errors import UserError
from wmdd.io.files import atomic_write_json, check_output_dir, read_json
from wmdd.options.bounds import COUNT, FRACTION, SEED
from wmdd.options.parsing import StageParser, run_main

log = logging.getLogger("wmdd.prepare")
MARKER = ".prepared.json"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
SPLITS = ("train",) + EVAL_SPLIT_NAMES
MACOS_FOLDER = "__MACOSX"
TINY_ANNOTATIONS = "val_annotations.txt"
TINY_IMAGES = "images"


def _already_prepared(dest: Path, description: dict) -> bool:
    check_output_dir(dest, "destination")
    marker = dest / MARKER
    if marker.is_file():
        if read_json(marker, "preparation marker") == description:
            log.info("%s: already prepared with the same options", dest)
            return True
        raise UserError(f"{dest}: already holds a dataset prepared with other options ({marker}); "
                        "choose another destination or delete it")
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"{dest}: exists and is not empty; choose another destination or delete it")
    return False


def _publish(partial: Path, dest: Path, description: dict) -> None:
    atomic_write_json(partial / MARKER, description)
    if dest.exists():
        dest.rmdir()
    partial.rename(dest)
    log.info("prepared %s", dest)


def _fresh_partial(dest: Path) -> Path:
    partial = dest.with_name(dest.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


Layout = dict[tuple[str, str], list[tuple[str, str]]]
"""``(split, class) -> [(archive member, target path relative to DEST)]``, sorted by member."""


def hidden_member(parts: tuple[str, ...]) -> bool:
    """Whether an archive member (its path components) is macOS or editor debris:
    a hidden component (``.DS_Store``, ``._name.jpg``, ``.ipynb_checkpoints/``) or
    anything under ``__MACOSX/``."""
    return any(is_hidden(p) or p == MACOS_FOLDER for p in parts)


def archive_layout(names: list[str], archive: str, read_text: Callable[[str], str]) -> Layout:
    """Locate the ImageFolder tree inside an archive listing.

    Two layouts are recognised, after dropping hidden members (:func:`hidden_member`):

    * ImageFolder: ``[prefix/]train/<class>/<image>`` and ``val/<class>/`` or
      ``test/<class>/`` (nested folders inside a class are kept as they are);
    * Tiny-ImageNet-200 (``[prefix/]val/val_annotations.txt`` present):
      ``train/<wnid>/images/<file>`` becomes ``train/<wnid>/<file>``,
      ``val/images/<file>`` becomes ``val/<wnid>/<file>`` following the
      annotations, and the unlabelled ``test/`` split is left out.

    Args:
        names: member paths (POSIX) of regular files in the archive.
        archive: archive path, for error messages.
        read_text: member name -> its text (read only for ``val_annotations.txt``).

    Returns:
        For each ``(split, class)``, its ``(member, target)`` pairs sorted by member.

    Raises:
        UserError: no ``train/<class>/<image>`` member, no evaluation split, an
            evaluation split whose classes differ from train's, or (Tiny-ImageNet)
            a bad annotation file or a val image without annotation.
    """
    parts_of = {n: PurePosixPath(n).parts for n in names}
    visible = {n: parts for n, parts in parts_of.items() if not hidden_member(parts)}
    if len(visible) < len(parts_of):
        log.info("%s: skipped %d hidden or macOS entries (.DS_Store, ._*, __MACOSX/)", archive,
                 len(parts_of) - len(visible))
    prefixes = {parts[:parts.index("train")] for parts in visible.values()
                if "train" in parts and len(parts) >= parts.index("train") + 3}
    if not prefixes:
        raise UserError(f"{archive}: no train/<class>/<image> inside; expected an ImageFolder archive")
    prefix = min(prefixes, key=len)
    tree = {n: parts[len(prefix):] for n, parts in visible.items() if parts[:len(prefix)] == prefix}
    annotations = [n for n, rel in tree.items() if rel == ("val", TINY_ANNOTATIONS)]
    if annotations:
        groups = _tiny_imagenet_groups(tree, annotations[0], read_text(annotations[0]), archive)
    else:
        groups = {}
        for n, rel in tree.items():
            if len(rel) >= 3 and rel[0] in SPLITS and _is_image_name(rel[-1]):
                groups.setdefault((rel[0], rel[1]), []).append((n, "/".join(rel)))
    eval_splits = [s for s in EVAL_SPLIT_NAMES if any(split == s for split, _ in groups)]
    if not eval_splits:
        raise UserError(f"{archive}: no val/<class>/ or test/<class>/ images inside; the evaluation split is missing")
    check_same_classes({c for s, c in groups if s == "train"}, {c for s, c in groups if s == eval_splits[0]},
                       f"{archive}: {eval_splits[0]}/")
    return {k: sorted(v) for k, v in groups.items()}


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _tiny_imagenet_groups(tree: dict[str, tuple[str, ...]], annotation_member: str, text: str,
                          archive: str) -> Layout:
    """The Tiny-ImageNet-200 layout (see :func:`archive_layout`) of the members
    ``tree`` (member -> path components below the dataset folder)."""
    where = f"{archive}: {annotation_member}"
    labels = parse_val_annotations(text, where)
    groups: Layout = {}
    val_images: set[str] = set()
    test_images = 0
    for n, rel in tree.items():
        if not _is_image_name(rel[-1]):
            continue
        if rel[0] == "train" and len(rel) >= 3:
            inside = rel[3:] if rel[2] == TINY_IMAGES and len(rel) > 3 else rel[2:]
            groups.setdefault(("train", rel[1]), []).append((n, "/".join(("train", rel[1]) + inside)))
        elif rel[:2] == ("val", TINY_IMAGES) and len(rel) == 3:
            if rel[2] not in labels:
                raise UserError(f"{archive}: {n} has no line in {annotation_member}; the archive is "
                                "incomplete or modified, download Tiny-ImageNet-200 again")
            val_images.add(rel[2])
            groups.setdefault(("val", labels[rel[2]][1]), []).append((n, f"val/{labels[rel[2]][1]}/{rel[2]}"))
        elif rel[0] == "test":
            test_images += 1
    missing = sorted(set(labels) - val_images)
    if missing:
        lineno = labels[missing[0]][0]
        raise UserError(f"{where}: line {lineno}: val/{TINY_IMAGES}/{missing[0]} is not in the archive "
                        f"({len(missing)} annotated val image(s) missing); download Tiny-ImageNet-200 again")
    log.info("%s: Tiny-ImageNet layout: %d train and %d val images (val/ sorted into class folders by %s), "
             "%d unlabelled test images left out", archive, sum(len(v) for (s, _), v in groups.items() if s == "train"),
             len(val_images), TINY_ANNOTATIONS, test_images)
    return groups


def parse_val_annotations(text: str, where: str) -> dict[str, tuple[int, str]]:
    """Parse Tiny-ImageNet's ``val_annotations.txt`` (tab-separated: file, wnid, 4 box ints).

    Args:
        text: the file's content.
        where: the file, for error messages.

    Returns:
        ``file name -> (line number, wnid)``.

    Raises:
        UserError: a line without a tab-separated class id, or a file listed twice.
    """
    labels: dict[str, tuple[int, str]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[1].strip():
            raise UserError(f"{where}: line {lineno} has no tab-separated class id; expected "
                            "'file<TAB>wnid<TAB>box', as in Tiny-ImageNet-200")
        file = fields[0].strip()
        if file in labels:
            raise UserError(f"{where}: line {lineno}: {file} is already listed on line {labels[file][0]}")
        labels[file] = (lineno, fields[1].strip())
    return labels


def check_same_classes(train: set[str], evaluation: set[str], where: str) -> None:
    """Refuse an evaluation split whose class set differs from the train split's.

    Args:
        train: class names of the train split.
        evaluation: class names of the evaluation split.
        where: the evaluation split (path, or archive and folder), for the message.

    Raises:
        UserError: the sets differ (names the classes missing from and unexpected in ``where``).
    """
    if train == evaluation:
        return
    raise UserError(f"{where}: classes differ from the train split's (missing: {_few(sorted(train - evaluation))}; "
                    f"unexpected: {_few(sorted(evaluation - train))}); every split must hold the same classes: "
                    "fix the tree or download the dataset again")


def _few(names: list[str], shown: int = 5) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def choose_members(groups: Layout, train_per_class: int | None, val_per_class: int | None, seed: int,
                   archive: str) -> list[tuple[str, str]]:
    """A seeded choice of ``(member, target)`` pairs per (split, class); ``None`` keeps all.

    Raises:
        UserError: a class has fewer images than asked for.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for (split, cls) in sorted(groups):
        members = groups[(split, cls)]
        n = train_per_class if split == "train" else val_per_class
        if n is None:
            chosen.extend(members)
            continue
        if n > len(members):
            raise UserError(f"{archive}: {split}/{cls} has {len(members)} images, fewer than {n}; lower the count")
        chosen.extend(members[i] for i in np.sort(rng.choice(len(members), size=n, replace=False)))
    return chosen


def extract(archive: str | Path, dest: str | Path, train_per_class: int | None = None,
            val_per_class: int | None = None, seed: int = 0) -> Path:
    """Extract (a per-class subset of) an ImageFolder or Tiny-ImageNet-200 archive to ``dest``.

    The tree is built in ``DEST.partial`` and renamed to ``dest`` only when
    complete (see :func:`archive_layout` for the layouts).

    Returns:
        ``dest``, holding ``train/<class>/`` and ``val/<class>/`` or ``test/<class>/``.

    Raises:
        UserError: missing or unreadable archive, unsupported format, no
            ImageFolder tree inside, an evaluation split with other classes than
            train, a bad Tiny-ImageNet annotation file, unsafe member paths, or
            a non-empty ``dest`` prepared differently.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise UserError(f"{archive}: archive not found")
    description = {"command": "extract", "archive": archive.name, "size_bytes": archive.stat().st_size,
                   "train_per_class": train_per_class, "val_per_class": val_per_class, "seed": seed}
    if _already_prepared(dest, description):
        return dest
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                names = [i.filename for i in zf.infolist() if not i.is_dir()]
                groups = archive_layout(names, str(archive), lambda m: zf.read(m).decode("utf-8"))
                chosen = choose_members(groups, train_per_class, val_per_class, seed, str(archive))
                for _, target in chosen:
                    _safe_target(dest, target, archive)
                partial = _fresh_partial(dest)
                for member, target in chosen:
                    path = partial / target
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(path, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        elif name.endswith((".tar", ".tar.gz", ".tgz")):
            with tarfile.open(archive) as tf:
                members = {m.name: m for m in tf.getmembers() if m.isfile()}
                groups = archive_layout(list(members), str(archive),
                                        lambda m: tf.extractfile(members[m]).read().decode("utf-8"))
                selected = []
                for member, target in choose_members(groups, train_per_class, val_per_class, seed, str(archive)):
                    _safe_target(dest, target, archive)
                    members[member].name = target
                    selected.append(members[member])
                partial = _fresh_partial(dest)
                tf.extractall(partial, members=selected, filter="data")
        else:
            raise UserError(f"{archive}: unsupported archive type; use .tar, .tar.gz, .tgz or .zip")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{archive}: cannot read archive ({exc}); download it again") from None
    _publish(partial, dest, description)
    return dest


def _safe_target(root: Path, relative: str, archive: Path) -> Path:
    rel = PurePosixPath(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise UserError(f"{archive}: member {relative!r} would be written outside the destination; "
                        "refusing to extract this archive")
    return root / rel


def write_imagefolder(images, labels, classes: list[str], split_root: Path, suffix: str = ".png") -> None:
    """Write ``images`` (PIL images) into ``split_root/<classes[label]>/<i>.png``,
    numbering images within each class from 0 (zero-padded to 5 digits)."""
    counters = {c: 0 for c in range(len(classes))}
    for image, label in zip(images, labels):
        folder = split_root / classes[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{counters[int(label)]:05d}{suffix}")
        counters[int(label)] += 1


def download_cifar(name: str, dest: str | Path, cache: str | Path | None = None) -> Path:
    """Download CIFAR-10/100 with torchvision and write PNG trees ``train/`` and ``test/``.

    Raises:
        UserError: the download fails (no internet, say).
    """
    from torchvision import datasets

    dest = Path(dest)
    description = {"command": "download", "dataset": name}
    if _already_prepared(dest, description):
        return dest
    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    cache = Path(cache) if cache else dest.with_name(dest.name + ".download")
    partial = _fresh_partial(dest)
    for split, train in (("train", True), ("test", False)):
        try:
            ds = cls(str(cache), train=train, download=True)
        except Exception as exc:  # network errors come in many types
            raise UserError(f"{name}: download into {cache} failed ({exc}); check the internet connection "
                            "or extract a local archive with `python -m wmdd.data.prepare extract`") from None
        write_imagefolder((Image.fromarray(a) for a in ds.data), ds.targets, ds.classes, partial / split)
    _publish(partial, dest, description)
    return dest


def reorganize_tiny_imagenet(root: str | Path) -> Path:
    """Move ``ROOT/val/images/<file>`` to ``ROOT/val/<wnid>/<file>`` following
    ``ROOT/val/val_annotations.txt`` (tab-separated: file, wnid, 4 box ints), in
    place, for a hand-unzipped Tiny-ImageNet-200 tree (``train/<wnid>/images/``
    stays as it is: ImageFolder reads nested folders).

    Everything is checked before the first file moves; a run interrupted while
    moving is finished by running it again. ``val/images/`` is removed at the
    end, with any hidden leftovers (``.DS_Store``). A tree already reorganised
    is only checked.

    Raises:
        UserError: missing annotations, a malformed line, an annotated file that
            does not exist, a val image without annotation, or val classes that
            differ from the train class folders (hidden folders are ignored).
    """
    root = Path(root)
    val, ann = root / "val", root / "val" / TINY_ANNOTATIONS
    images = val / TINY_IMAGES
    if not (root / "train").is_dir() or not val.is_dir():
        raise UserError(f"{root}: expected the Tiny-ImageNet-200 layout (train/, val/images/, "
                        f"val/{TINY_ANNOTATIONS}); pass the folder that holds train/ and val/")
    train_classes = set(class_folders(root / "train"))
    if not images.is_dir():
        check_same_classes(train_classes, set(class_folders(val)), f"{val}/")
        log.info("%s: val/ is already in class folders", root)
        return root
    if not ann.is_file():
        raise UserError(f"{ann}: missing; it maps each val image to its class")
    labels = parse_val_annotations(ann.read_text(), str(ann))
    for file, (lineno, wnid) in labels.items():
        if wnid not in train_classes:
            raise UserError(f"{ann}: line {lineno}: class {wnid!r} has no train folder")
        if not (images / file).is_file() and not (val / wnid / file).is_file():
            raise UserError(f"{ann}: line {lineno}: {images / file} does not exist")
    unlabelled = sorted(p.name for p in images.iterdir() if not is_hidden(p.name) and p.name not in labels)
    if unlabelled:
        raise UserError(f"{images / unlabelled[0]}: no line in {ann} ({len(unlabelled)} such file(s)); "
                        "restore the annotation file or remove the file")
    already = set(class_folders(val)) - {TINY_IMAGES}
    check_same_classes(train_classes, {wnid for _, wnid in labels.values()} | already, f"{val}/")
    moves = [(images / file, val / wnid / file) for file, (_, wnid) in labels.items() if (images / file).is_file()]
    for src, dst in moves:
        dst.parent.mkdir(exist_ok=True)
        src.rename(dst)
    shutil.rmtree(images)
    log.info("%s: moved %d val images into %d class folders", root, len(moves), len({d.parent for _, d in moves}))
    return root


def build_digits(dest: str | Path, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """scikit-learn's handwritten digits as a 32x32 RGB PNG ImageFolder.

    The 1,797 8x8 images (values 0-16) are scaled to 0-255, upsampled with
    bilinear interpolation to 32x32 and repeated over 3 channels; classes
    ``"0"``..``"9"``; split ``train``/``val`` stratified by class with
    ``val_fraction`` of each class in ``val`` (seeded).

    Raises:
        UserError: ``val_fraction`` outside (0, 1).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    dest = Path(dest)
    description = {"command": "digits", "val_fraction": val_fraction, "seed": seed}
    if _already_prepared(dest, description):
        return dest
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    idx_train, idx_val = train_test_split(np.arange(len(pixels)), test_size=val_fraction,
                                          stratify=digits.target, random_state=seed)
    classes = [str(c) for c in range(10)]
    partial = _fresh_partial(dest)
    for split, idx in (("train", idx_train), ("val", idx_val)):
        imgs = (Image.fromarray(pixels[i]).resize((32, 32), Image.BILINEAR).convert("RGB") for i in sorted(idx))
        write_imagefolder(imgs, digits.target[sorted(idx)], classes, partial / split)
    _publish(partial, dest, description)
    return dest


def build_parser() -> argparse.ArgumentParser:
    p = StageParser(prog="wmdd prepare", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("extract", help="extract a local ImageFolder archive")
    e.add_argument("archive")
    e.add_argument("dest")
    e.add_argument("--train-per-class", type=COUNT)
    e.add_argument("--val-per-class", type=COUNT)
    e.add_argument("--seed", type=SEED, default=0)
    d = sub.add_parser("download", help="download CIFAR-10/100 through torchvision (internet)")
    d.add_argument("dataset", choices=["cifar10", "cifar100"])
    d.add_argument("dest")
    t = sub.add_parser("tiny-imagenet", help="put Tiny-ImageNet's val images into class folders")
    t.add_argument("root")
    g = sub.add_parser("digits", help="build the digits dataset from scikit-learn")
    g.add_argument("dest")
    g.add_argument("--val-fraction", type=FRACTION, default=0.2)
    g.add_argument("--seed", type=SEED, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "extract":
        extract(args.archive, args.dest, args.train_per_class, args.val_per_class, args.seed)
    elif args.command == "download":
        download_cifar(args.dataset, args.dest)
    elif args.command == "tiny-imagenet":
        reorganize_tiny_imagenet(args.root)
    else:
        build_digits(args.dest, args.val_fraction, args.seed)
    return 0


if __name__ == "__main__":
    run_main(main)
