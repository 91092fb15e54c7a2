"""Teacher penultimate features of every real train image, cached on disk.

``features.pt`` holds the features with a key made of the teacher's sha256,
the dataset (root, and every image's relative path, size and mtime) and the
evaluation transform; a cache whose key differs is recomputed, never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from wmdd.io.files import atomic_torch_save, torch_load
from wmdd.models import penultimate_features
from wmdd.models.teacher import Teacher
from wmdd.options.parsing import progress

log = logging.getLogger("wmdd.recover")


def dataset_fingerprint(dataset: ImageFolder) -> str:
    """sha256 over every sample's path relative to the dataset root, size, mtime and label."""
    root = Path(dataset.root)
    h = hashlib.sha256(str(root.resolve()).encode())
    for path, label in dataset.samples:
        st = os.stat(path)
        h.update(f"{Path(path).relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
    return h.hexdigest()


def cache_key(teacher: Teacher, dataset: ImageFolder) -> dict:
    """What the cached features depend on."""
    return {"teacher_sha256": teacher.sha256, "dataset": dataset_fingerprint(dataset),
            "transform": repr(dataset.transform)}


def key_digest(key: dict) -> str:
    """16 hex digits of the SHA-256 of a cache key (sorted JSON): the name of a shared cache file
    (``recover --cache-dir``)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def extract_features(teacher: Teacher, dataset: ImageFolder, device: torch.device, batch_size: int = 256,
                     workers: int = 2, show_progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features of every image of ``dataset`` (in sample order).

    Returns:
        ``(features [N, D] float32, labels [N] int64)`` on the CPU.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    feats, labels = [], []
    teacher.model.eval()
    for x, y in progress(loader, "class features", show_progress):
        feats.append(penultimate_features(teacher.model, x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def cached_features(path: str | Path, teacher: Teacher, dataset: ImageFolder, device: torch.device,
                    batch_size: int = 256, workers: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of ``dataset`` from ``path`` when its key matches, else computed and saved there.

    Returns:
        ``(features [N, D] float32, labels [N] int64)``.
    """
    path = Path(path)
    key = cache_key(teacher, dataset)
    if path.exists():
        cached = torch_load(path, "feature cache")
        if cached.get("key") == key:
            log.info("using cached class features %s", path)
            return cached["features"], cached["labels"]
        stale = [k for k in key if cached.get("key", {}).get(k) != key[k]]
        log.info("feature cache %s is stale (%s changed); recomputing", path, ", ".join(stale))
    features, labels = extract_features(teacher, dataset, device, batch_size, workers)
    atomic_torch_save({"key": key, "features": features, "labels": labels}, path)
    return features, labels
