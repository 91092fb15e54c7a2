"""Units of recover work: class batches, their completion markers, and the seeded
choice of real images per class."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from wmdd.data.folders import select_per_class
from wmdd.io.files import read_json
from wmdd.io.manifest import same_args
from wmdd.runtime.training import derive_seed


def class_batches(num_classes: int, ipc: int, batch_size: int) -> list[list[int]]:
    """Class indices of each optimisation batch: ``max(1, batch_size // ipc)`` classes each."""
    per = max(1, batch_size // ipc)
    return [list(range(s, min(s + per, num_classes))) for s in range(0, num_classes, per)]


def marker_path(out: Path, b: int) -> Path:
    """``OUT/progress/batch_<b>.json``: written when class batch ``b`` is finished."""
    return out / "progress" / f"batch_{b:05d}.json"


def pending_batches(out: Path, indices: list[int], inputs: dict) -> list[int]:
    """The class batches among ``indices`` still to do.

    A batch is done when its marker exists and records the same ``inputs`` (what the
    images depend on: the run's arguments, the real data's fingerprint, the teacher's and
    the experts' sha256; a marker is compared on the inputs it recorded, so markers of earlier
    versions, which recorded fewer or none, count as done when those agree). A
    marker from other inputs (e.g. the class folders were replaced after a killed run, or
    the recorded arguments were deleted and the run restarted with another ``--ipc``) is
    stale: its images and the marker are deleted, the batch is redone, and a log line says so.
    """
    todo = []
    for b in indices:
        path = marker_path(out, b)
        if path.exists():
            record = read_json(path, "batch marker")
            recorded = record.get("inputs", {})  # markers of earlier versions record fewer inputs, or none
            changed = [k for k in recorded if not (same_args(recorded[k], inputs.get(k) or {}) if k == "args"
                                                   else recorded[k] == inputs.get(k))]
            if not changed:
                continue
            logging.getLogger("wmdd.recover").warning(
                "batch %d was made from other inputs (%s changed since); redoing it", b, ", ".join(changed))
            for name in record["classes"]:
                shutil.rmtree(out / "images" / name, ignore_errors=True)
            path.unlink()
        todo.append(b)
    return todo


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
