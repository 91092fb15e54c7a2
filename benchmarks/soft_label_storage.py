"""Soft-label storage: bytes per image-epoch of our epoch files versus FKD's files.

For 10, 100, 200 and 1000 classes it writes one epoch of N images in batches
of B, both ways, and measures the files on disk:

* ours: one ``epoch_<e>.pt`` per epoch, written by relabel's writer
  (:func:`wmdd.relabel.soft_labels.write_epoch`: the view plan plus the teacher's
  top-k logits in fp16 with int16 indices; all logits, no indices, when
  k >= classes);
* FKD (SRe2L/WMDD's relabel): one ``batch_<i>.tar`` per batch holding
  ``[crop coords (float64 [B, 4]), flip status (bool [B]), mix index (int64 [B]),
  mix lambda, mix box, full fp16 logits [B, K]]``.

    python -m benchmarks.soft_label_storage [--images 1000] [--batch-size 100]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from wmdd.relabel.soft_labels import write_epoch
from wmdd.relabel.views import ViewSettings, plan_epoch


def ours_bytes(folder: Path, n: int, batch: int, classes: int, top_k: int) -> int:
    """Bytes of one of our epoch files, written by relabel's writer (random logits; the
    size does not depend on the values)."""
    plan = plan_epoch([(224, 224)] * n, ViewSettings(batch_size=batch, input_size=224), seed=0, epoch=0)
    logits = torch.randn(n, classes)
    path = write_epoch(folder / f"ours_{classes}_{top_k}", 0, plan, logits.split(batch), top_k)
    return path.stat().st_size


def fkd_bytes(folder: Path, n: int, batch: int, classes: int) -> int:
    """Bytes of FKD's per-batch files for one epoch."""
    total = 0
    for b in range(0, n, batch):
        size = min(batch, n - b)
        config = [torch.rand(size, 4, dtype=torch.float64), torch.rand(size) < 0.5, torch.randperm(size), 0.37,
                  (12, 40, 100, 130), torch.randn(size, classes).half()]
        path = folder / f"fkd_{classes}_{b}.tar"
        torch.save(config, path)
        total += path.stat().st_size
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1000, help="images per epoch")
    p.add_argument("--batch-size", type=int, default=100)
    args = p.parse_args()
    n, b = args.images, args.batch_size
    print(f"bytes per image-epoch, {n} images per epoch in batches of {b}")
    print(f"{'classes':>8} {'FKD full fp16':>14} {'ours top-10':>12} {'ours top-100':>13} {'ours all':>9}"
          f" {'FKD/top-10':>11} {'FKD/top-100':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for classes in (10, 100, 200, 1000):
            fkd = fkd_bytes(folder, n, b, classes) / n
            top10 = ours_bytes(folder, n, b, classes, 10) / n
            top100 = ours_bytes(folder, n, b, classes, 100) / n
            full = ours_bytes(folder, n, b, classes, classes) / n
            print(f"{classes:>8} {fkd:>14.1f} {top10:>12.1f} {top100:>13.1f} {full:>9.1f} {fkd / top10:>11.1f}"
                  f" {fkd / top100:>12.1f}")


if __name__ == "__main__":
    main()
