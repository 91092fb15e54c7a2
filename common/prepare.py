"""``python -m common.prepare``: build ImageFolder trees ``DEST/<split>/<class>/<image>``.

Sub-commands:

* ``extract ARCHIVE DEST [--train-per-class N] [--val-per-class N] [--seed S]``:
  a local ``.tar``/``.tar.gz``/``.tgz``/``.zip`` holding ``[prefix/]train/<class>/*``
  and ``val/`` or ``test/`` (e.g. ``../shared/datasets/cifar10-jpg.tar.gz``),
  optionally only a seeded choice of N images per class.
* ``download {cifar10,cifar100} DEST``: torchvision download (needs internet),
  written as PNG trees ``train/`` and ``test/``.
* ``tiny-imagenet ROOT``: move Tiny-ImageNet's ``val/images/*`` into
  ``val/<wnid>/`` using ``val/val_annotations.txt`` (in place).
* ``digits DEST [--val-fraction F] [--seed S]``: scikit-learn's bundled 1,797
  real 8x8 handwritten digits, upsampled to 32x32 RGB PNG, stratified split.

Every command builds into ``DEST.partial`` and renames it to ``DEST`` when
complete, with ``DEST/.prepared.json`` describing what was built; a complete
``DEST`` built with the same options is left alone.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from common.cli import run_main
from common.data import EVAL_SPLIT_NAMES
from common.errors import UserError
from common.io import atomic_write_json, read_json

log = logging.getLogger("wmdd.prepare")
MARKER = ".prepared.json"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
SPLITS = ("train",) + EVAL_SPLIT_NAMES


def _already_prepared(dest: Path, description: dict) -> bool:
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


def archive_layout(names: list[str], archive: str) -> tuple[str, dict[tuple[str, str], list[str]]]:
    """Locate the ImageFolder tree inside an archive listing.

    Args:
        names: member paths (POSIX) of regular files in the archive.
        archive: archive path, for error messages.

    Returns:
        ``(prefix, groups)``: the path prefix before ``train/`` (``""`` or
        ``"dir/"``) and, for each ``(split, class)``, the sorted member names.

    Raises:
        UserError: no ``train/<class>/<image>`` member or no evaluation split.
    """
    prefixes = set()
    for n in names:
        parts = PurePosixPath(n).parts
        if "train" in parts:
            i = parts.index("train")
            if len(parts) >= i + 3:
                prefixes.add("/".join(parts[:i]))
    if not prefixes:
        raise UserError(f"{archive}: no train/<class>/<image> inside; expected an ImageFolder archive")
    prefix = min(prefixes, key=len)
    prefix = prefix + "/" if prefix else ""
    groups: dict[tuple[str, str], list[str]] = {}
    for n in names:
        if not n.startswith(prefix) or PurePosixPath(n).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        parts = PurePosixPath(n[len(prefix):]).parts
        if len(parts) >= 3 and parts[0] in SPLITS:
            groups.setdefault((parts[0], parts[1]), []).append(n)
    if not any(s in EVAL_SPLIT_NAMES for s, _ in groups):
        raise UserError(f"{archive}: no val/<class>/ or test/<class>/ images inside; the evaluation split is missing")
    return prefix, {k: sorted(v) for k, v in groups.items()}


def choose_members(groups: dict[tuple[str, str], list[str]], train_per_class: int | None,
                   val_per_class: int | None, seed: int, archive: str) -> list[str]:
    """A seeded choice of members per (split, class); ``None`` keeps all.

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
    """Extract (a per-class subset of) an ImageFolder archive to ``dest``.

    Returns:
        ``dest``, holding ``train/`` and ``val/`` or ``test/``.

    Raises:
        UserError: missing or unreadable archive, unsupported format, no
            ImageFolder tree inside, unsafe member paths, or a non-empty
            ``dest`` prepared differently.
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
                prefix, groups = archive_layout(names, str(archive))
                chosen = choose_members(groups, train_per_class, val_per_class, seed, str(archive))
                partial = _fresh_partial(dest)
                for member in chosen:
                    target = _safe_target(partial, member[len(prefix):], archive)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        elif name.endswith((".tar", ".tar.gz", ".tgz")):
            with tarfile.open(archive) as tf:
                members = [m for m in tf.getmembers() if m.isfile()]
                prefix, groups = archive_layout([m.name for m in members], str(archive))
                wanted = set(choose_members(groups, train_per_class, val_per_class, seed, str(archive)))
                selected = []
                for m in members:
                    if m.name in wanted:
                        _safe_target(dest, m.name[len(prefix):], archive)
                        m.name = m.name[len(prefix):]
                        selected.append(m)
                partial = _fresh_partial(dest)
                tf.extractall(partial, members=selected, filter="data")
        else:
            raise UserError(f"{archive}: unsupported archive type; use .tar, .tar.gz, .tgz or .zip")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
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
                            "or extract a local archive with `python -m common.prepare extract`") from None
        write_imagefolder((Image.fromarray(a) for a in ds.data), ds.targets, ds.classes, partial / split)
    _publish(partial, dest, description)
    return dest


def reorganize_tiny_imagenet(root: str | Path) -> Path:
    """Move ``ROOT/val/images/<file>`` to ``ROOT/val/<wnid>/<file>`` following
    ``ROOT/val/val_annotations.txt`` (tab-separated: file, wnid, box).

    Idempotent: a tree already reorganised is left alone.

    Raises:
        UserError: missing annotations, an annotated file that does not exist,
            or a wnid that is not a train class.
    """
    root = Path(root)
    val, ann = root / "val", root / "val" / "val_annotations.txt"
    images = val / "images"
    if not images.is_dir():
        if (root / "train").is_dir() and any(p.is_dir() for p in val.iterdir()):
            log.info("%s: val/ is already in class folders", root)
            return root
        raise UserError(f"{images}: missing; expected the Tiny-ImageNet-200 layout (train/, val/images/, "
                        "val/val_annotations.txt)")
    if not ann.is_file():
        raise UserError(f"{ann}: missing; it maps each val image to its class")
    train_classes = {p.name for p in (root / "train").iterdir() if p.is_dir()}
    moves = []
    for lineno, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise UserError(f"{ann}: line {lineno} has no tab-separated class id")
        file, wnid = fields[0], fields[1]
        if wnid not in train_classes:
            raise UserError(f"{ann}: line {lineno}: class {wnid!r} has no train folder")
        if not (images / file).is_file():
            raise UserError(f"{ann}: line {lineno}: {images / file} does not exist")
        moves.append((images / file, val / wnid / file))
    for src, dst in moves:
        dst.parent.mkdir(exist_ok=True)
        src.rename(dst)
    if not any(images.iterdir()):
        images.rmdir()
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
    p = argparse.ArgumentParser(prog="python -m common.prepare", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("extract", help="extract a local ImageFolder archive")
    e.add_argument("archive")
    e.add_argument("dest")
    e.add_argument("--train-per-class", type=int)
    e.add_argument("--val-per-class", type=int)
    e.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("download", help="download CIFAR-10/100 through torchvision (internet)")
    d.add_argument("dataset", choices=["cifar10", "cifar100"])
    d.add_argument("dest")
    t = sub.add_parser("tiny-imagenet", help="put Tiny-ImageNet's val images into class folders")
    t.add_argument("root")
    g = sub.add_parser("digits", help="build the digits dataset from scikit-learn")
    g.add_argument("dest")
    g.add_argument("--val-fraction", type=float, default=0.2)
    g.add_argument("--seed", type=int, default=0)
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
