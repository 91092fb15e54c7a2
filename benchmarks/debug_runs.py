"""Wall time of ``./run.sh -g -p`` (the debug smoke test, teacher included) per dataset.

Datasets: digits (scikit-learn), CIFAR-10 and Imagenette (real, from the shared
archives; Imagenette at 224 px stands for ImageNet-1k's input size and model) and a
200-class 64 px tree laid out as Tiny-ImageNet, built from real CIFAR-10 images
upsampled to 64 px (Tiny-ImageNet itself is not on this machine). Every tree holds
40 train / 10 val images per class: ``-g`` pretrains on 20 train / 10 val images of
at most 10 classes and recovers from 4 x IPC = 40 (``--method wmdd``'s 2x2 tiles
start from that many medoids), so the class count of the full dataset only costs
the listing.

    python -m benchmarks.debug_runs [--datasets digits cifar10 tiny-imagenet imagenette] [--out DIR]

Prints one line per dataset: the command and its wall time in seconds (one run each;
the target is under 600 s on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from benchmarks.data import CACHE, REPO, cached_dataset
from wmdd.data.prepare import build_digits

DATASETS = ("digits", "cifar10", "tiny-imagenet", "imagenette")


def tiny_like(dest: Path, classes: int = 200, train: int = 40, val: int = 10, side: int = 64) -> Path:
    """A ``classes``-class ImageFolder tree of ``side`` px images (``train``/``val`` per class)
    cut from real CIFAR-10 images upsampled bilinearly, built once under ``dest``."""
    if (dest / "val").is_dir():
        return dest
    source = cached_dataset("cifar10", train_per_class=(train + val) * classes // 10, val_per_class=1)
    images = sorted((source / "train").rglob("*.jpg"))
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for i, path in enumerate(images[:classes * (train + val)]):
        c, k = divmod(i, train + val)
        split = "train" if k < train else "val"
        folder = partial / split / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("RGB").resize((side, side), Image.BILINEAR).save(folder / f"{k:04d}.JPEG")
    partial.rename(dest)
    return dest


def data_root(name: str) -> Path:
    """``ROOT`` such that ``ROOT/<name>`` is the dataset tree (built or extracted once)."""
    root = CACHE / "debug-data-40"  # 40 train images per class (trees of 20 were too few for -g since wmdd's factor 2)
    target = root / name
    if not target.exists():
        root.mkdir(parents=True, exist_ok=True)
        if name == "digits":
            build_digits(target)
        elif name == "tiny-imagenet":
            tiny_like(target)
        else:
            os.symlink(cached_dataset(name, train_per_class=40, val_per_class=10), target)
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--out", type=Path, default=CACHE / "debug-runs")
    args = p.parse_args(argv)
    for name in args.datasets:
        root = data_root(name)
        out = args.out / name
        shutil.rmtree(out, ignore_errors=True)
        cmd = ["./run.sh", "-g", "-p", "-d", name, "-r", str(root), "--device", "cpu", "--out", str(out)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PYTHON": sys.executable})
        seconds = time.perf_counter() - start
        (args.out / f"{name}.log").parent.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}.log").write_text(proc.stdout + proc.stderr)
        status = "ok" if proc.returncode == 0 else f"FAILED ({proc.returncode}, see {args.out / name}.log)"
        print(f"{name:14s} {seconds:7.1f} s  {status}  {' '.join(cmd)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
