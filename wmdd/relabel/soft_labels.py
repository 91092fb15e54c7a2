"""The soft-label files: what ``python -m wmdd.relabel`` writes and ``python -m wmdd.train`` reads.

A relabel output directory ``OUT`` holds, under ``OUT/soft_labels/``:

* ``epoch_<e>.pt`` (``e`` zero-padded to 4 digits), one per student epoch:
  named tensors (``torch.load(..., weights_only=True)``), the epoch's
  :class:`wmdd.relabel.views.EpochPlan` (:meth:`~wmdd.relabel.views.EpochPlan.to_tensors`)
  plus ``values``, the teacher's logits of every position in position order,
  fp16 ``[N, k]``, and ``indices``, their class indices ``[N, k]`` (int16 for
  up to 2**15 classes, else int32), largest logit first. With k >= the number
  of classes C all C logits are stored in class order (``values`` fp16
  ``[N, C]``) and there is no ``indices``.
* ``meta.json``: the view settings, seed, epochs, stored k, classes, dataset
  spec, teacher (path, sha256, architecture) and images (root, sha256, files,
  labels) the epochs were recorded with (:func:`build_meta`).

Writer: :func:`build_meta`, :func:`write_meta`, :func:`write_epoch`.
Reader: :class:`SoftLabels`, :func:`dense_logits`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from wmdd.errors import UserError
from wmdd.io.files import atomic_torch_save, atomic_write_json, read_json, torch_load
from wmdd.io.manifest import read_manifest
from wmdd.relabel.views import EpochPlan, ViewSettings

SOFT_LABELS = "soft_labels"


def soft_labels_dir(out: str | Path) -> Path:
    """``out/soft_labels``: the soft-label files of the relabel output directory ``out``."""
    return Path(out) / SOFT_LABELS


def epoch_path(out: str | Path, epoch: int) -> Path:
    """``out/soft_labels/epoch_<epoch:04d>.pt``."""
    return soft_labels_dir(out) / f"epoch_{epoch:04d}.pt"


def meta_path(out: str | Path) -> Path:
    """``out/soft_labels/meta.json``."""
    return soft_labels_dir(out) / "meta.json"


def index_dtype(num_classes: int) -> torch.dtype:
    """Stored dtype of class indices: int16 for up to 2**15 classes, else int32."""
    return torch.int16 if num_classes <= 2 ** 15 else torch.int32


def label_bytes_per_view(top_k: int, num_classes: int) -> int:
    """Bytes of soft labels per stored view: 2 per fp16 logit, plus the index bytes
    when ``top_k`` < ``num_classes`` (the plan's bytes are not counted)."""
    k = min(top_k, num_classes)
    if k == num_classes:
        return 2 * k
    return k * (2 + index_dtype(num_classes).itemsize)


def build_meta(*, seed: int, settings: ViewSettings, epochs: int, top_k: int, classes: list[str], dataset: dict,
               teacher_path: str | Path, teacher_sha256: str, teacher_model: str, images_root: str | Path,
               images_sha256: str, files: list[str], labels: list[int]) -> dict:
    """The content of ``meta.json``.

    Args:
        seed: relabel's seed (plans are drawn from ``(seed, epoch)``).
        settings: the view settings of every epoch.
        epochs: number of recorded epochs.
        top_k: logits requested per view; ``min(top_k, len(classes))`` is stored.
        classes: class folder names in class-index order.
        dataset: ``DatasetSpec.to_dict()`` of the teacher.
        teacher_path, teacher_sha256, teacher_model: the teacher checkpoint
            (stored resolved), its hash and architecture name.
        images_root: the image directory (stored resolved).
        images_sha256: :func:`wmdd.io.files.sha256_files` of ``files`` under ``images_root``.
        files, labels: image paths relative to ``images_root`` in image-index
            order, and their class indices.

    Returns:
        A JSON-ready dict; :meth:`SoftLabels.settings` reads the settings back.
    """
    return {"seed": seed, "batch_size": settings.batch_size, "epochs": epochs, "input_size": settings.input_size,
            "min_scale_crops": settings.min_scale, "max_scale_crops": settings.max_scale,
            "mix_type": settings.mix_type, "mix_alpha": settings.mix_alpha, "top_k": min(top_k, len(classes)),
            "num_classes": len(classes), "classes": classes, "dataset": dataset,
            "teacher": {"path": str(Path(teacher_path).resolve()), "sha256": teacher_sha256, "model": teacher_model},
            "images": {"root": str(Path(images_root).resolve()), "sha256": images_sha256, "files": files,
                       "labels": labels}}


def write_meta(out: str | Path, meta: dict) -> Path:
    """Write ``meta`` (from :func:`build_meta`) to ``out/soft_labels/meta.json`` atomically.

    Returns:
        The path written.

    Raises:
        UserError: a different ``meta.json`` is already there (a resumed run
            whose images or teacher changed).
    """
    path = meta_path(out)
    if path.exists() and read_json(path, "soft-label meta") != meta:
        raise UserError(f"{path}: the images or the teacher changed since this run started; "
                        "use another --output-dir")
    atomic_write_json(path, meta)
    return path


def epoch_record(plan: EpochPlan, logits: Iterable[torch.Tensor], top_k: int) -> dict[str, torch.Tensor]:
    """The named tensors of one epoch file: FKD's soft labels (Shen & Xing, ECCV 2022), the
    teacher's logits on the recorded views, kept as top-k fp16 next to the plan (the
    official code stores full logits keyed by batch).

    Args:
        plan: the epoch's plan, N positions.
        logits: the teacher's logits of the epoch's batches in position order,
            each ``[B, C]`` of any float dtype on any device (consumed once;
            converted to float32 and the top-k taken there, then moved to the CPU).
        top_k: logits kept per view, >= 1; all C in class order when ``top_k >= C``.

    Returns:
        ``plan.to_tensors()`` plus ``values`` fp16 ``[N, min(top_k, C)]`` and,
        when ``top_k < C``, ``indices`` ``[N, top_k]`` (:func:`index_dtype`),
        largest logit first.

    Raises:
        UserError: the batches hold another number of rows than N.
    """
    values, indices, num_classes = [], [], 0
    for batch in logits:
        batch = batch.float()
        num_classes = batch.shape[1]
        if top_k < num_classes:
            top = batch.topk(top_k, dim=1)
            values.append(top.values.half().cpu())
            indices.append(top.indices.cpu())
        else:
            values.append(batch.half().cpu())
    rows = sum(len(v) for v in values)
    if rows != len(plan.order):
        raise UserError(f"{rows} rows of logits for an epoch plan of {len(plan.order)} views; "
                        "pass the teacher's logits of every batch of the epoch")
    record = {**plan.to_tensors(), "values": torch.cat(values)}
    if indices:
        record["indices"] = torch.cat(indices).to(index_dtype(num_classes))
    return record


def write_epoch(out: str | Path, epoch: int, plan: EpochPlan, logits: Iterable[torch.Tensor], top_k: int) -> Path:
    """Write :func:`epoch_record` of ``(plan, logits, top_k)`` to :func:`epoch_path` atomically.

    Returns:
        The path written.

    Raises:
        UserError: see :func:`epoch_record`.
    """
    path = epoch_path(out, epoch)
    atomic_torch_save(epoch_record(plan, logits, top_k), path)
    return path


def epoch_damage(out: str | Path, epoch: int, num_views: int) -> str | None:
    """Why the epoch file of ``epoch`` in ``out`` cannot be used, or ``None`` when it holds a
    readable record (:func:`epoch_record`) of ``num_views`` views. A missing file is
    ``"missing"``: resuming relabel redoes an epoch unless this is ``None``."""
    path = epoch_path(out, epoch)
    if not path.is_file():
        return "missing"
    try:
        record = torch_load(path, "soft-label file")
        plan = EpochPlan.from_tensors(record)
        rows = record["values"].shape[0]
    except (UserError, KeyError, TypeError, AttributeError, IndexError, ValueError, RuntimeError) as exc:
        return str(exc) if isinstance(exc, UserError) else f"{path}: not a soft-label record ({exc!r})"
    if len(plan.order) != num_views or rows != num_views:
        return f"{path}: {rows} views recorded, {num_views} expected"
    return None


def dense_logits(values: torch.Tensor, indices: torch.Tensor | None, num_classes: int) -> torch.Tensor:
    """Stored top-k logits -> ``[B, num_classes]`` float32 with every other class at ``-inf``.

    Args:
        values: ``[B, k]`` logits (any float dtype; fp16 as stored).
        indices: ``[B, k]`` class indices (any integer dtype), or ``None`` when
            ``values`` already holds all classes in class order.
        num_classes: C.
    """
    if indices is None:
        return values.float()
    out = torch.full((values.shape[0], num_classes), float("-inf"), dtype=torch.float32, device=values.device)
    return out.scatter_(1, indices.long(), values.float())


class SoftLabels:
    """The soft labels recorded by relabel in ``relabel_dir``.

    Attributes:
        dir: ``relabel_dir``.
        manifest: relabel's ``manifest.json``.
        meta: ``soft_labels/meta.json`` (:func:`build_meta`).

    Raises:
        UserError: the relabel stage did not finish there, or ``meta.json`` is
            missing or unreadable.
    """

    def __init__(self, relabel_dir: str | Path):
        self.dir = Path(relabel_dir)
        self.manifest = read_manifest(self.dir, "relabel")
        self.meta = read_json(meta_path(self.dir), "soft-label meta")

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
        m, meta = self.meta, meta_path(self.dir)
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
        """:meth:`epoch` (a plan source for :class:`wmdd.relabel.views.PlannedBatches`)."""
        return self.epoch(epoch)

    def epoch(self, epoch: int) -> tuple[EpochPlan, torch.Tensor]:
        """Plan and dense teacher logits ``[N, K]`` (float32, ``-inf`` outside the top-k) of ``epoch``.

        Raises:
            UserError: the epoch file is missing or unreadable.
        """
        record = torch_load(epoch_path(self.dir, epoch), "soft-label file")
        logits = dense_logits(record["values"], record.get("indices"), self.meta["num_classes"])
        return EpochPlan.from_tensors(record), logits
