"""``python -m wmdd.relabel``: record the student's views and the teacher's soft labels.

For each epoch ``e < --epochs`` it writes ``OUT/soft_labels/epoch_<e>.pt``
(the epoch's view plan and the teacher's top-k fp16 logits on those views),
``OUT/soft_labels/meta.json`` (format: :mod:`wmdd.relabel.soft_labels`) and, last,
``OUT/manifest.json``. A killed run re-run with the same command
continues from the first missing epoch; ``torchrun`` shards epochs over ranks.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.nn as nn

from wmdd.data.folders import distilled_images_dir, image_folder
from wmdd.errors import UserError
from wmdd.io.files import sha256_files
from wmdd.io.manifest import finished_with_same_args, record_run_args, run_arguments, verify_upstream, write_manifest
from wmdd.models.teacher import check_classes, load_teacher
from wmdd.options.bounds import COUNT, FRACTION, POSITIVE
from wmdd.options.config import parse_with_config, resolve_precision, save_resolved_config, stage_parser
from wmdd.options.parsing import progress, run_main
from wmdd.recover.multiformation import refuse_tiled
from wmdd.relabel.soft_labels import (
    SOFT_LABELS,
    build_meta,
    epoch_damage,
    epoch_path,
    label_bytes_per_view,
    write_epoch,
    write_meta,
)
from wmdd.relabel.views import MIX_TYPES, DrawnEpochs, PlannedBatches, ViewSettings, image_sizes, planned_loader
from wmdd.runtime.distributed import setup

log = logging.getLogger("wmdd.relabel")
RESUME_IGNORES = ("workers", "device", "config")


def build_parser() -> argparse.ArgumentParser:
    p = stage_parser("relabel", __doc__.split("\n\n")[0], workers_help="DataLoader workers building the views",
                     channels_last=False)
    p.add_argument("--teacher", help="pretrain output directory (or its teacher.pt)")
    p.add_argument("--images", help="ImageFolder of distilled images (recover's OUT/images)")
    p.add_argument("--epochs", type=COUNT, default=300, help="student epochs to record")
    p.add_argument("--batch-size", type=COUNT, default=100, help="student batch size (train must use the same)")
    p.add_argument("--input-size", type=COUNT, help="view side in pixels (default: the teacher's)")
    p.add_argument("--min-scale-crops", type=FRACTION, default=0.08)
    p.add_argument("--max-scale-crops", type=FRACTION, default=1.0)
    p.add_argument("--mix-type", default="cutmix", choices=MIX_TYPES)
    p.add_argument("--mix-alpha", type=POSITIVE, default=1.0, help="lambda ~ Beta(alpha, alpha)")
    p.add_argument("--top-k", type=COUNT, default=100,
                   help="logits kept per view (all classes when >= the number of classes)")
    return p


def list_images(images_dir: str | Path) -> tuple[list[str], list[int], list[str]]:
    """``(relative paths, labels, classes)`` of an ImageFolder of distilled images, sorted.

    Raises:
        UserError: as :func:`wmdd.data.folders.distilled_images_dir`, no class folder, or an
            empty class folder.
    """
    images_dir = distilled_images_dir(images_dir)
    ds = image_folder(images_dir)
    rel = [str(Path(p).relative_to(images_dir)) for p, _ in ds.samples]
    return rel, [t for _, t in ds.samples], ds.classes


def teacher_logits(teacher: nn.Module, items: Iterable[dict], device: torch.device, amp: bool
                   ) -> Iterator[torch.Tensor]:
    """The teacher's logits ``[B, C]`` on ``device`` (float32; bfloat16 with ``amp``) of
    each item's ``views`` ``[B, 3, S, S]``, in order: FKD's soft labels (Shen & Xing, ECCV 2022)."""
    for item in items:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = teacher(item["views"].to(device))
        yield logits


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The stage's arguments, parsed and checked (``wmdd run`` checks them the same way before it
    starts anything).

    Raises:
        UserError: as :func:`wmdd.options.config.parse_with_config`, or ``--teacher``, ``--images``
            or ``--output-dir`` missing.
    """
    args = parse_with_config(build_parser(), argv, "relabel")
    for name in ("teacher", "images", "output_dir"):
        if not getattr(args, name):
            raise UserError(f"--{name.replace('_', '-')} is required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = resolve_precision(parse_args(argv))
    verify_upstream(args.images)
    refuse_tiled(args.images, "relabel")
    out = Path(args.output_dir)
    ctx = setup(args.device)
    teacher = load_teacher(args.teacher, ctx.device)
    args.input_size = args.input_size or teacher.input_size
    settings = ViewSettings.from_relabel_args(args)
    run_args = run_arguments(args, RESUME_IGNORES)
    if finished_with_same_args(out, "relabel", run_args):
        return 0
    rel, labels, classes = list_images(args.images)
    check_classes(teacher, classes, str(args.images))
    images_dir = Path(args.images)
    meta = build_meta(seed=args.seed, settings=settings, epochs=args.epochs, top_k=args.top_k, classes=classes,
                      dataset=teacher.spec.to_dict(), teacher_path=teacher.path, teacher_sha256=teacher.sha256,
                      teacher_model=teacher.name, images_root=images_dir,
                      images_sha256=sha256_files(images_dir, rel), files=rel, labels=labels)
    k = meta["top_k"]
    if ctx.is_main:
        record_run_args(out, "relabel", run_args)
        write_meta(out, meta)
        save_resolved_config(args, out / "config.yaml")
    ctx.barrier()

    paths = [images_dir / r for r in rel]
    sizes = image_sizes(paths)
    todo = []
    for e in ctx.shard(args.epochs):
        damage = epoch_damage(out, e, len(rel))
        if damage not in (None, "missing"):
            log.warning("%s; redoing epoch %d", damage, e)
        if damage is not None:
            todo.append(e)
    log.info("%d images, %d classes, %d epochs (%d to do on this rank), batch %d, %d px, top-%d, %s",
             len(rel), len(classes), args.epochs, len(todo), args.batch_size, args.input_size, k, args.mix_type)
    dataset = PlannedBatches(paths, DrawnEpochs(sizes, settings, args.seed), teacher.spec, settings)
    with torch.no_grad():
        for e, items in progress(planned_loader(dataset, todo, args.workers), "relabel epochs", ctx.is_main,
                                 total=len(todo)):
            write_epoch(out, e, dataset.plan(e)[0], teacher_logits(teacher.model, items, ctx.device, args.amp), k)
    ctx.barrier()
    if ctx.is_main:
        files = [epoch_path(out, e) for e in range(args.epochs)]
        total = sum(f.stat().st_size for f in files)
        per = total / (len(rel) * args.epochs)
        label_bytes = label_bytes_per_view(k, len(classes))
        log.info("wrote %d bytes of soft labels: %.1f bytes per image-epoch (%d of them logits%s)", total, per,
                 label_bytes, "" if k == len(classes) else " and indices")
        write_manifest(out, stage="relabel", args=run_args, outputs=[SOFT_LABELS], dataset=teacher.spec.to_dict(),
                       classes=classes, model=teacher.name, inputs={"teacher": teacher.path},
                       extra={"bytes": total, "bytes_per_image_epoch": per, "label_bytes_per_image_epoch": label_bytes,
                              "num_images": len(rel), "epochs": args.epochs, "top_k": k})
    ctx.barrier()
    return 0


if __name__ == "__main__":
    run_main(main)
