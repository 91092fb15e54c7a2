"""Reading the relabel stage's output and checking it against the train run."""

from __future__ import annotations

from pathlib import Path

import torch

from common.errors import UserError
from common.io import read_json, torch_load
from common.manifest import read_manifest
from common.views import EpochPlan, ViewSettings
from train.losses import dense_logits


class SoftLabels:
    """The soft labels recorded by relabel in ``relabel_dir``.

    Raises:
        UserError: the relabel stage did not finish there.
    """

    def __init__(self, relabel_dir: str | Path):
        self.dir = Path(relabel_dir)
        self.manifest = read_manifest(self.dir, "relabel")
        self.meta = read_json(self.dir / "soft_labels" / "meta.json", "soft-label meta")

    @property
    def settings(self) -> ViewSettings:
        m = self.meta
        return ViewSettings(batch_size=m["batch_size"], input_size=m["input_size"], min_scale=m["min_scale_crops"],
                            max_scale=m["max_scale_crops"], mix_type=m["mix_type"], mix_alpha=m["mix_alpha"])

    def check(self, *, batch_size: int, epochs: int, images_dir: Path, files: list[str], images_sha256: str,
              input_size: int | None, teacher_sha256: str | None) -> None:
        """Refuse a train run that does not replay these soft labels exactly.

        Raises:
            UserError: naming both values, for a different batch size, more
                epochs than recorded, another image set, another input size or
                another teacher.
        """
        m, meta = self.meta, self.dir / "soft_labels" / "meta.json"
        if batch_size != m["batch_size"]:
            raise UserError(f"--batch-size {batch_size} differs from the batch size {m['batch_size']} the soft "
                            f"labels were recorded with ({meta}); use --batch-size {m['batch_size']} or re-run relabel")
        if epochs > m["epochs"]:
            raise UserError(f"--epochs {epochs} is more than the {m['epochs']} epochs recorded in {meta}; "
                            "lower --epochs or re-run relabel with more epochs")
        if files != m["images"]["files"] or images_sha256 != m["images"]["sha256"]:
            changed = "file list" if files != m["images"]["files"] else "image contents"
            raise UserError(f"{images_dir}: differs from the images the soft labels were recorded on "
                            f"({m['images']['root']}, {changed} differ); pass the same --images or re-run relabel")
        if input_size is not None and input_size != m["input_size"]:
            raise UserError(f"--input-size {input_size} differs from the recorded input size {m['input_size']} "
                            f"({meta}); drop --input-size or re-run relabel")
        if teacher_sha256 is not None and teacher_sha256 != m["teacher"]["sha256"]:
            raise UserError(f"--teacher differs from the teacher the soft labels were recorded with "
                            f"({m['teacher']['path']}, sha256 {m['teacher']['sha256'][:12]}...); "
                            "pass that teacher or re-run relabel")

    def __call__(self, epoch: int) -> tuple[EpochPlan, torch.Tensor]:
        """:meth:`epoch` (a plan source for :class:`common.views.PlannedBatches`)."""
        return self.epoch(epoch)

    def epoch(self, epoch: int) -> tuple[EpochPlan, torch.Tensor]:
        """Plan and dense teacher logits ``[N, K]`` (float32, ``-inf`` outside the top-k) of ``epoch``."""
        record = torch_load(self.dir / "soft_labels" / f"epoch_{epoch:04d}.pt", "soft-label file")
        logits = dense_logits(record["values"], record.get("indices"), self.meta["num_classes"])
        return EpochPlan.from_tensors(record), logits
