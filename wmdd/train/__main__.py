"""``python -m wmdd.train``: train a student from scratch and evaluate it on the real validation split.

Distilled images (``--images``), replaying relabel's recorded views with:

* soft labels (default, ``--soft-labels RELABEL_DIR``): KL at temperature T
  against the stored top-k teacher logits (FKD);
* ``--online-teacher TEACHER_DIR``: the teacher labels the same kind of views
  on the fly (nothing stored);
* ``--hard-labels``: cross-entropy on folder labels, mixed by CutMix/MixUp;
* ``--protocol dsa``: the DM family's evaluation (hard labels, DSA on every
  batch, convnet_in, SGD, lr x0.1 at half the epochs, 1,000 epochs).

A full real train split (``--train-dir``) with labels from
``--pseudo-label-csv`` (or folder labels with ``--hard-labels``), plus
distillation with ``--online-teacher``.

Writes ``OUT/metrics.jsonl``, ``OUT/results.json`` (top-1/top-5 in percent),
``OUT/last.pt`` (resume) and, last, ``OUT/manifest.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from wmdd.data.loaders import eval_loader
from wmdd.io.files import atomic_write_json
from wmdd.io.manifest import finished_with_same_args, record_run_args, run_arguments, verify_upstream, write_manifest
from wmdd.models import create_model, parse_model_kwargs
from wmdd.options.config import resolve_precision, save_resolved_config
from wmdd.options.parsing import progress, run_main
from wmdd.relabel.soft_labels import meta_path
from wmdd.runtime.distributed import setup
from wmdd.runtime.training import ResumableRun, build_epoch_scheduler, build_optimizer, evaluate, load_resume_state
from wmdd.train.student import StudentRun, parse_args, resolve_factor, train_epoch

log = logging.getLogger("wmdd.train")
#: Options that may change between a killed run and its resumption: they change where the work
#: runs (and so the float rounding), not the recipe.
RESUME_IGNORES = ("workers", "device", "config", "input_pipeline")


def main(argv: list[str] | None = None) -> int:
    args = resolve_precision(parse_args(argv))
    if args.images:
        verify_upstream(args.images)
    resolve_factor(args)
    out = Path(args.output_dir)
    run_args = run_arguments(args, RESUME_IGNORES)
    if finished_with_same_args(out, "train", run_args):
        return 0
    ctx = setup(args.device)
    run = StudentRun(args, ctx)
    decoded = (f" decoded from {run.num_images()} stored (factor {args.factor})"
               if run.training_images() != run.num_images() else "")
    log.info("%s training of %s on %d images%s (%d classes, %d px), %d epochs, batch %d, %s (x%d)", run.mode,
             args.model, run.training_images(), decoded, len(run.classes), run.input_size, args.epochs,
             args.batch_size, ctx.device, ctx.world_size)
    torch.manual_seed(args.seed)
    model = create_model(args.model, num_classes=len(run.classes), dataset=run.spec, input_size=run.input_size,
                         **parse_model_kwargs(args.model, args.model_kwargs)).to(ctx.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    ddp = ctx.wrap(model)
    optimizer = build_optimizer(args.opt, model.parameters(), lr=args.lr, weight_decay=args.wd,
                                momentum=args.momentum)
    scheduler = build_epoch_scheduler(args.lr_scheduler, optimizer, args.epochs)
    if ctx.is_main:
        load_resume_state(out / "last.pt", run_args, ignore=RESUME_IGNORES)  # refused before anything is written
        out.mkdir(parents=True, exist_ok=True)
        record_run_args(out, "train", run_args)
        save_resolved_config(args, out / "config.yaml")
    state = ResumableRun(out, run_args, RESUME_IGNORES, ctx, model, optimizer, scheduler)
    start, val = state.resume()
    vloader = eval_loader(run.val, batch_size=args.eval_batch_size, workers=args.workers, ctx=ctx)
    for epoch, batches in run.epochs(start):
        lr = optimizer.param_groups[0]["lr"]
        stats = train_epoch(run, ddp, progress(batches, f"epoch {epoch + 1}/{args.epochs}", ctx.is_main), optimizer)
        scheduler.step()
        record = {"epoch": epoch, "lr": lr, **stats}
        if (epoch + 1) % args.val_every == 0 or epoch + 1 == args.epochs:
            ctx.broadcast_buffers(model)
            val = evaluate(model, vloader, ctx, amp=args.amp)
            record.update(val_top1=val["top1"], val_top5=val["top5"], val_loss=val["loss"])
            log.info("epoch %d/%d  loss %.4f  val top-1 %.2f%%  top-5 %.2f%%  %.0f img/s", epoch + 1, args.epochs,
                     stats["train_loss"], val["top1"], val["top5"], stats["images_per_s"])
        state.end_epoch(epoch, record, val)
    if ctx.is_main:
        results = {"top1": val["top1"], "top5": val["top5"], "epochs": args.epochs, "model": args.model,
                   "images": str(Path(args.images or args.train_dir).resolve()), "num_images": run.num_images(),
                   "training_images": run.training_images(), "input_size": run.input_size, "mode": run.mode,
                   "protocol": args.protocol, "val_images": val["count"]}
        atomic_write_json(out / "results.json", results)
        inputs = {}
        if run.soft is not None:
            inputs["soft_labels_meta"] = meta_path(run.soft.dir)
        if run.teacher is not None:
            inputs["teacher"] = run.teacher.path
        # last.pt (resume state) is not an output: deleting it after the run loses nothing
        write_manifest(out, stage="train", args=run_args, outputs=["results.json", "metrics.jsonl", "config.yaml"],
                       dataset=run.spec.to_dict(), classes=run.classes, model=args.model, inputs=inputs,
                       extra={"results": results})
        log.info("student %s: top-1 %.2f%%  top-5 %.2f%% on %d real val images", args.model, val["top1"],
                 val["top5"], val["count"])
    ctx.barrier()
    return 0


if __name__ == "__main__":
    run_main(main)
