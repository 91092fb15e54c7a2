"""Where the full real datasets are, and cached extractions of them for benchmarks.

Only benchmarks read the full archives (the test suite uses ``tests/data``). They are
located through ``$WMDD_SHARED_DATASETS``, else ``<repo>/../shared/datasets``; extractions
go to ``<repo>/.cache/`` (ignored by git), never into the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

from wmdd.data.prepare import extract

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
ARCHIVES = {"cifar10": "cifar10-jpg.tar.gz", "imagenette": "imagenette2-224-jpg.tar.gz"}


def shared_datasets() -> Path:
    """Folder holding the real dataset archives (``cifar10-jpg.tar.gz``, ``imagenette2-224-jpg.tar.gz``).

    Raises:
        RuntimeError: neither ``$WMDD_SHARED_DATASETS`` nor ``<repo>/../shared/datasets`` holds them.
    """
    variable = os.environ.get("WMDD_SHARED_DATASETS")
    folder = Path(variable) if variable else REPO.parent / "shared" / "datasets"
    if (folder / ARCHIVES["cifar10"]).is_file():
        return folder
    raise RuntimeError(f"real datasets not found: {folder / ARCHIVES['cifar10']} does not exist; set "
                       "WMDD_SHARED_DATASETS to the folder holding the archives (default: ../shared/datasets "
                       "beside the repository)")


def cached_dataset(name: str, train_per_class: int | None = None, val_per_class: int | None = None,
                   seed: int = 0) -> Path:
    """``.cache/<name>[-<train>-<val>]``: the real dataset (or a seeded subset), extracted once."""
    suffix = "" if train_per_class is None and val_per_class is None else f"-{train_per_class}-{val_per_class}"
    return extract(shared_datasets() / ARCHIVES[name], CACHE / f"{name}{suffix}", train_per_class,
                   val_per_class, seed)
