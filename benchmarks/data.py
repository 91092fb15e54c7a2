"""Where the real datasets are, and cached extractions of them for benchmarks.

The archives are located through ``$WMDD_SHARED_DATASETS``, then
``<repo>/../shared/datasets``, then ``/work/shared/datasets``; extractions go to
``<repo>/.cache/`` (ignored by git), never into the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

from common.prepare import extract

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
ARCHIVES = {"cifar10": "cifar10-jpg.tar.gz", "imagenette": "imagenette2-224-jpg.tar.gz"}


def shared_datasets() -> Path:
    """Folder holding the real dataset archives.

    Raises:
        RuntimeError: not found (set ``WMDD_SHARED_DATASETS``).
    """
    candidates = [os.environ.get("WMDD_SHARED_DATASETS"), REPO.parent / "shared" / "datasets",
                  Path("/work/shared/datasets")]
    for c in candidates:
        if c and (Path(c) / ARCHIVES["cifar10"]).is_file():
            return Path(c)
    raise RuntimeError("real datasets not found: set WMDD_SHARED_DATASETS to the folder holding "
                       f"{ARCHIVES['cifar10']}")


def cached_dataset(name: str, train_per_class: int | None = None, val_per_class: int | None = None,
                   seed: int = 0) -> Path:
    """``.cache/<name>[-<train>-<val>]``: the real dataset (or a seeded subset), extracted once."""
    suffix = "" if train_per_class is None and val_per_class is None else f"-{train_per_class}-{val_per_class}"
    return extract(shared_datasets() / ARCHIVES[name], CACHE / f"{name}{suffix}", train_per_class,
                   val_per_class, seed)
