"""Units of recover work: class batches, their completion markers, and the seeded
choice of real images per class."""

from __future__ import annotations

from pathlib import Path

from common.data import select_per_class
from common.training import derive_seed


def class_batches(num_classes: int, ipc: int, batch_size: int) -> list[list[int]]:
    """Class indices of each optimisation batch: ``max(1, batch_size // ipc)`` classes each."""
    per = max(1, batch_size // ipc)
    return [list(range(s, min(s + per, num_classes))) for s in range(0, num_classes, per)]


def marker_path(out: Path, b: int) -> Path:
    """``OUT/progress/batch_<b>.json``: written when class batch ``b`` is finished."""
    return out / "progress" / f"batch_{b:05d}.json"


def real_choice(dataset, ipc: int, seed: int) -> dict[int, list[int]]:
    """Seeded choice of ``ipc`` sample indices per class (random-real, ``--init real``).

    Raises:
        UserError: a class has fewer than ``ipc`` images.
    """
    chosen = select_per_class(dataset.samples, ipc, derive_seed(seed, "real-images"), where=str(dataset.root))
    index = {s: i for i, s in enumerate(dataset.samples)}
    out: dict[int, list[int]] = {}
    for s in chosen:
        out.setdefault(s[1], []).append(index[s])
    return out
