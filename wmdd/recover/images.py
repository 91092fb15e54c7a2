"""Writing the recover stage's images: lossless PNGs per class, the preview grid
and the per-image sample weights."""

from __future__ import annotations

import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torchvision.utils import make_grid

from wmdd.data.datasets import DatasetSpec
from wmdd.data.transforms import denormalize
from wmdd.errors import UserError
from wmdd.io.files import atomic_write_bytes
from wmdd.io.manifest import SET_RECORD
from wmdd.relabel.views import read_image

#: At most this many classes (rows) and images per class (columns) in grid.png.
GRID_MAX_CLASSES = 20
#: zlib level of the stored PNGs: lossless at any level; level 1 writes a 224-px image in 3.2 ms
#: against 16 ms at PIL's default 6, for 10 % more bytes (measured on 224-px Imagenette images,
#: 2 CPU cores), the most of ``wmdd decode``'s time and much of recover's writing.
PNG_COMPRESS_LEVEL = 1
GRID_MAX_PER_CLASS = 10


def image_name(index: int) -> str:
    """File name of synthetic image ``index`` of a class: ``0000.png``, ``0001.png``, ..."""
    return f"{index:04d}.png"


#: The names :func:`image_name` gives.
IMAGE_NAME = re.compile(r"\d{4,}\.png")


def check_images_owned(images_dir: Path, classes: list[str], unfinished_run: bool) -> None:
    """Refuse an ``images_dir`` that this recover run may not write into: one that exists
    without an unfinished recover run beside it, or holds anything but ``<class>/NNNN.png``
    files of ``classes`` (a file someone put there would otherwise join the set).

    Args:
        images_dir: ``OUT/images``.
        classes: the run's class folder names.
        unfinished_run: ``OUT`` holds the recorded arguments or batch markers of a recover
            run (a killed one, being resumed).

    Raises:
        UserError: naming the directory or the first foreign file and the fix.
    """
    if not images_dir.exists():
        return
    if not unfinished_run:
        raise UserError(f"--output-dir {images_dir.parent}: {images_dir} already exists but no recover run was "
                        "started there; pass a new or empty directory (nothing there was changed)")
    for leftover in images_dir.glob(f".{SET_RECORD}.*.tmp"):  # an atomic write that a kill interrupted
        leftover.unlink()
    allowed = set(classes)
    for path in sorted(images_dir.rglob("*")):
        parts = path.relative_to(images_dir).parts
        ours = parts == (SET_RECORD,) or parts[0] in allowed and ((len(parts) == 1 and path.is_dir())
                                        or (len(parts) == 2 and path.is_file() and IMAGE_NAME.fullmatch(parts[1])))
        if not ours:
            raise UserError(f"{path}: not written by wmdd recover, which owns {images_dir}; move it away, then rerun "
                            "the same command (finished class batches are kept)")


def check_images_complete(images_dir: Path, classes: list[str], ipc: int) -> None:
    """Check that ``images_dir`` holds exactly ``classes`` x ``ipc`` images named by
    :func:`image_name`, before a manifest lists them.

    Raises:
        UserError: a missing or an extra file (names it).
    """
    expected = {f"{c}/{image_name(i)}" for c in classes for i in range(ipc)}
    found = {p.relative_to(images_dir).as_posix() for p in images_dir.rglob("*") if p.is_file()} - {SET_RECORD}
    if found - expected:
        extra = images_dir / min(found - expected)
        raise UserError(f"{extra}: not written by this recover run; move it away, then rerun the same command "
                        "(finished class batches are kept)")
    if expected - found:
        raise UserError(f"{images_dir / min(expected - found)}: missing; rerun the same command")


def save_class_images(images: torch.Tensor, spec: DatasetSpec, folder: Path) -> list[Path]:
    """Save normalised images ``[n, 3, S, S]`` as ``folder/0000.png ...`` (8-bit RGB, lossless),
    replacing whatever ``folder`` held (the images of an interrupted or stale attempt).

    Returns:
        The written paths, in image order.
    """
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = denormalize(images.detach().float().cpu(), spec)
    paths = [folder / image_name(i) for i in range(len(pixels))]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL encodes without the GIL
        list(pool.map(write_png, pixels, paths))
    return paths


def write_png(pixels: torch.Tensor, path: Path) -> None:
    """Write ``pixels`` (``[3, H, W]`` float in [0, 1]) as an 8-bit RGB PNG at ``path``, rounded
    as torchvision's ``save_image`` rounds, with zlib level :data:`PNG_COMPRESS_LEVEL`."""
    array = pixels.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    Image.fromarray(array).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def write_grid(images_dir: Path, classes: list[str], path: Path) -> None:
    """``grid.png``: one row per class (first 20 classes), up to 10 images each,
    read back from the PNGs (what the later stages use), via torchvision ``make_grid``."""
    rows = []
    shown = classes[:GRID_MAX_CLASSES]
    files = {c: sorted((images_dir / c).glob("*.png"))[:GRID_MAX_PER_CLASS] for c in shown}
    cols = max(len(f) for f in files.values())
    for c in shown:
        imgs = [read_image(f) for f in files[c]]
        imgs += [torch.zeros_like(imgs[0])] * (cols - len(imgs))
        rows.extend(imgs)
    grid = make_grid(torch.stack(rows).float() / 255, nrow=cols, padding=2, pad_value=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(grid, path)


def write_sample_weights(path: Path, classes: list[str], weights: torch.Tensor) -> None:
    """``sample_weights.csv`` with columns ``image_path`` (relative to ``images/``) and ``weight``.

    Args:
        classes: class folder names, ``K``.
        weights: ``[K, ipc]`` barycenter weights; each class's row is rescaled
            to mean 1, so uniform weights give 1.0 everywhere.
    """
    w = weights.double()
    w = w / w.mean(dim=1, keepdim=True)
    rows = [{"image_path": f"{c}/{image_name(i)}", "weight": float(w[k, i])}
            for k, c in enumerate(classes) for i in range(w.shape[1])]
    atomic_write_bytes(path, pd.DataFrame(rows).to_csv(index=False).encode())


def write_sources(path: Path, dataset, classes: list[str], sources: dict[int, list[int]], ipc: int) -> None:
    """``sources.csv``: the real train image each synthetic image started from.

    Columns ``image_path`` (relative to ``images/``, e.g. ``cat/0001.png``) and
    ``source_path`` (relative to the real train split ``dataset.root``). A stored image
    made of several real images (multi-formation tiles, in tile order) has one row per tile.

    Args:
        dataset: the real train split (``samples`` of ``(path, class_index)``, ``root``).
        classes: class folder names, class-index order.
        sources: class index -> the ``dataset`` sample indices, in image order (``ipc``
            of them, or ``ipc x tiles``).
        ipc: stored images per class.
    """
    root = Path(dataset.root)
    rows = [{"image_path": f"{classes[c]}/{image_name(i // (len(sources[c]) // ipc))}",
             "source_path": Path(dataset.samples[s][0]).relative_to(root).as_posix()}
            for c in sorted(sources) for i, s in enumerate(sources[c])]
    atomic_write_bytes(path, pd.DataFrame(rows).to_csv(index=False).encode())
