"""``python -m wmdd.pretrain``: train a teacher and compute its per-class BatchNorm statistics.

Writes ``OUT/teacher.pt`` (weights, classes, dataset spec, BN statistics,
resolved arguments), ``OUT/metrics.jsonl`` (one line per epoch),
``OUT/config.yaml``, ``OUT/last.pt`` (resume state) and, last,
``OUT/manifest.json``. Re-running a killed run with the same command resumes
from ``last.pt``. ``--stats-only --teacher CKPT`` skips training and computes
the statistics of an existing checkpoint (ours or a plain torchvision state dict).
``--experts N`` trains N experts for DANCE instead (:mod:`wmdd.pretrain.experts`:
``OUT/experts.pt``, the paper's settings as defaults).
Under ``torchrun`` training uses DDP and the statistics are summed over ranks.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from wmdd.data.datasets import dataset_names, resolve_spec
from wmdd.data.device_split import INPUT_PIPELINES, DeviceSplit, choose_pipeline, uint8_images
from wmdd.data.folders import load_splits, resolve_classes, split_dir, with_transform
from wmdd.data.loaders import eval_loader, seed_epoch, train_loader
from wmdd.data.transforms import eval_transform, train_transform
from wmdd.errors import UserError
from wmdd.io.manifest import finished_with_same_args, record_run_args, run_arguments, write_manifest
from wmdd.models import create_model, model_names, parse_model_kwargs
from wmdd.models.bn_stats import compute_bn_statistics
from wmdd.models.teacher import TEACHER_FILE, load_state_dict_into, read_weights, save_teacher
from wmdd.options.bounds import COUNT, MOMENTUM, NON_NEGATIVE, POSITIVE, PROBABILITY
from wmdd.options.config import (
    add_classes_option,
    parse_with_config,
    resolve_precision,
    save_resolved_config,
    stage_parser,
)
from wmdd.options.parsing import progress, run_main
from wmdd.pretrain.experts import EXPERT_ONLY, PRETRAIN_KINDS, train_experts
from wmdd.pretrain.loop import train_one_epoch
from wmdd.recover.dsa import DSAParams
from wmdd.runtime.distributed import DistContext, setup
from wmdd.runtime.training import (
    ResumableRun,
    build_epoch_scheduler,
    build_optimizer,
    evaluate,
    load_resume_state,
    unwrap,
)

log = logging.getLogger("wmdd.pretrain")

#: Arguments that may change between a killed run and its resumption: they do not change the recipe
#: (the device and the input pipeline change the float rounding and the random numbers, not their
#: distribution; the manifest records both).
RESUME_IGNORES = ("workers", "device", "config", "input_pipeline")


def build_parser() -> argparse.ArgumentParser:
    p = stage_parser("pretrain", __doc__.split("\n\n")[0], workers_help="DataLoader worker processes")
    p.add_argument("--dataset", default="cifar10", help=f"one of {', '.join(dataset_names())}")
    p.add_argument("--data-path", help="dataset root holding train/ and val/ (or test/)")
    p.add_argument("--model", default="resnet18", help=f"one of {', '.join(model_names())}")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="architecture options, e.g. depth=3 width=128 norm=batch for convnet")
    p.add_argument("--input-size", type=COUNT, help="input side in pixels (default: the dataset's native size)")
    add_classes_option(p)
    p.add_argument("--epochs", type=COUNT, default=50)
    p.add_argument("--batch-size", type=COUNT, default=32, help="images per step and process")
    p.add_argument("--lr", type=POSITIVE, default=0.025)
    p.add_argument("--opt", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--momentum", type=MOMENTUM, default=0.9)
    p.add_argument("--lr-scheduler", default="cosine", choices=["cosine", "step", "multistep", "none"])
    p.add_argument("--wd", type=NON_NEGATIVE, default=1e-4, help="weight decay")
    p.add_argument("--train-per-class", type=COUNT, help="use a seeded choice of N train images per class")
    p.add_argument("--val-per-class", type=COUNT, help="use a seeded choice of N val images per class")
    p.add_argument("--eval-batch-size", type=COUNT, default=256,
                   help="batch size of evaluation and of the statistics pass")
    p.add_argument("--input-pipeline", default="auto", choices=INPUT_PIPELINES,
                   help="device: the train split held on the device as uint8 and augmented there (above 64 px: "
                        "random-resized crops of its centre square); loader: DataLoader worker processes; auto: "
                        "device on CUDA when the split "
                        "fits in a quarter of the free memory, else loader (with --experts: the in-memory split is "
                        "moved to the device unless loader)")
    p.add_argument("--stats-only", action="store_true",
                   help="no training: compute the BN statistics of --teacher")
    p.add_argument("--teacher", help="with --stats-only: a teacher.pt or a plain (torchvision) state dict")
    p.add_argument("--experts", type=COUNT, help="train N DANCE experts (initial and final weights in experts.pt) "
                                               "instead of a teacher; defaults become convnet_in, 60 epochs, "
                                               "batch 64, SGD lr 0.01 wd 5e-4, multistep, DSA color_crop, "
                                               "CutMix 0.5")
    p.add_argument("--dsa-strategy", help="with --experts: DSA families applied in turn to every batch [color_crop]")
    p.add_argument("--cutmix-prob", type=PROBABILITY, help="with --experts: probability of CutMix per batch [0.5]")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The stage's arguments, parsed and checked (``wmdd run`` checks them the same way before it
    starts anything): with ``--experts``'s defaults (:data:`wmdd.pretrain.experts.EXPERT_DEFAULTS`)
    when it is given; command line > YAML > those defaults > the teacher's defaults.

    Raises:
        UserError: a required option is missing, options that exclude each other, or an option of
            the other kind of run (teacher vs experts).
    """
    parser = build_parser()
    if parser.parse_known_args(argv)[0].experts is not None:
        parser.set_defaults(**PRETRAIN_KINDS["experts"].defaults)
    args = parse_with_config(parser, argv, "pretrain")
    _check_args(args)
    return args


def _check_args(args: argparse.Namespace) -> None:
    if not args.data_path:
        raise UserError("--data-path is required (the dataset root holding train/ and val/)")
    if not args.output_dir:
        raise UserError("--output-dir is required")
    if args.stats_only != bool(args.teacher):
        raise UserError("--stats-only and --teacher CKPT go together")
    if args.experts is None:
        PRETRAIN_KINDS.refuse_foreign(args, "teacher", fix=" or pass --experts N")
        return
    if args.stats_only:
        raise UserError("--experts and --stats-only are alternatives; pass one")
    DSAParams(strategy=args.dsa_strategy)


def train_batches(args, train_raw, spec, size: int, ctx: DistContext) -> DataLoader | DeviceSplit:
    """The teacher's training batches by ``--input-pipeline``: a :class:`DeviceSplit` or the
    DataLoader of :func:`train_loader` over ``train_transform`` (the same augmentation)."""
    pipeline = choose_pipeline(args.input_pipeline, spec, len(train_raw), size, ctx.device)
    if ctx.distributed:  # every rank the same pipeline (auto decides by each rank's free memory)
        agree = ctx.all_reduce_sum(torch.tensor([float(pipeline == "device")]))
        pipeline = "device" if int(agree) == ctx.world_size else "loader"
    log.info("input pipeline: %s", pipeline)
    if pipeline == "device":
        pixels, labels = uint8_images(train_raw, spec, size, args.workers, hold=True)
        return DeviceSplit(pixels, labels, spec, batch_size=args.batch_size, seed=args.seed, ctx=ctx, size=size)
    return train_loader(with_transform(train_raw, train_transform(spec, size)), batch_size=args.batch_size,
                        workers=args.workers, seed=args.seed, ctx=ctx)


def _train(args, model, loader, val_set, ctx: DistContext, out: Path, run_args: dict) -> dict | None:
    """Train ``model`` for ``args.epochs`` epochs on ``loader``'s batches with resume; returns the
    last validation result."""
    ddp = ctx.wrap(model)
    optimizer = build_optimizer(args.opt, model.parameters(), lr=args.lr, weight_decay=args.wd, momentum=args.momentum)
    scheduler = build_epoch_scheduler(args.lr_scheduler, optimizer, args.epochs)
    state = ResumableRun(out, run_args, RESUME_IGNORES, ctx, model, optimizer, scheduler)
    start, val = state.resume()
    vloader = eval_loader(val_set, batch_size=args.eval_batch_size, workers=args.workers, ctx=ctx)
    for epoch in range(start, args.epochs):
        seed_epoch(loader, args.seed, epoch, ctx)
        lr = optimizer.param_groups[0]["lr"]
        batches = progress(loader, f"epoch {epoch + 1}/{args.epochs}", ctx.is_main)
        stats = train_one_epoch(ddp, batches, optimizer, ctx, amp=args.amp, channels_last=args.channels_last)
        scheduler.step()
        ctx.broadcast_buffers(model)
        val = evaluate(model, vloader, ctx, amp=args.amp)
        log.info("epoch %d/%d  loss %.4f  train top-1 %.2f%%  val top-1 %.2f%%  top-5 %.2f%%  %.0f img/s",
                 epoch + 1, args.epochs, stats["train_loss"], stats["train_top1"], val["top1"], val["top5"],
                 stats["images_per_s"])
        state.end_epoch(epoch, {"epoch": epoch, "lr": lr, **stats, "val_top1": val["top1"], "val_top5": val["top5"],
                                "val_loss": val["loss"]}, val)
    return val


def main(argv: list[str] | None = None) -> int:
    args = resolve_precision(parse_args(argv))
    model_kwargs = parse_model_kwargs(args.model, args.model_kwargs)
    out = Path(args.output_dir)
    run_args = run_arguments(args, RESUME_IGNORES + (() if args.experts else EXPERT_ONLY))
    if finished_with_same_args(out, "pretrain", run_args):
        return 0
    ctx = setup(args.device)
    if args.experts:
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            record_run_args(out, "pretrain", run_args)
            save_resolved_config(args, out / "config.yaml")
        ctx.barrier()
        train_experts(args, ctx, out, run_args)
        ctx.barrier()
        return 0

    name, size = args.model, args.input_size
    state_dict = None
    if args.stats_only:
        name, model_kwargs, state_dict, file_size = read_weights(args.teacher, args.model, model_kwargs)
        size = size or file_size
    train_raw, val_set = load_splits(args.data_path, train_per_class=args.train_per_class,
                                     val_per_class=args.val_per_class, seed=args.seed,
                                     subset=resolve_classes(args.classes, split_dir(args.data_path, "train")))
    spec = resolve_spec(args.dataset, train_raw.classes, args.data_path, subset=args.classes is not None)
    size = size or spec.image_size
    val_set.transform = eval_transform(spec, size)
    classes = train_raw.classes
    log.info("%s: %d classes, %d train / %d val images, %d px, %s on %s (x%d)", args.dataset, len(classes),
             len(train_raw), len(val_set), size, name, ctx.device, ctx.world_size)

    torch.manual_seed(args.seed)
    model = create_model(name, num_classes=len(classes), dataset=spec, input_size=size, **model_kwargs)
    if state_dict is not None:
        load_state_dict_into(model, state_dict, Path(args.teacher), name)
    model.to(ctx.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if ctx.is_main:
        load_resume_state(out / "last.pt", run_args, ignore=RESUME_IGNORES)  # refused before anything is written
        out.mkdir(parents=True, exist_ok=True)
        record_run_args(out, "pretrain", run_args)
        save_resolved_config(args, out / "config.yaml")

    pipeline = None
    if args.stats_only:
        val = evaluate(model, eval_loader(val_set, batch_size=args.eval_batch_size, workers=args.workers, ctx=ctx),
                       ctx, amp=args.amp)
    else:
        loader = train_batches(args, train_raw, spec, size, ctx)
        pipeline = "device" if isinstance(loader, DeviceSplit) else "loader"
        val = _train(args, model, loader, val_set, ctx, out, run_args)
    log.info("val top-1 %.2f%%  top-5 %.2f%%", val["top1"], val["top5"])

    stats_loader = eval_loader(with_transform(train_raw, eval_transform(spec, size)),
                               batch_size=args.eval_batch_size, workers=args.workers, ctx=ctx)
    bn_stats = compute_bn_statistics(unwrap(model), stats_loader, len(classes), ctx,
                                     progress=lambda it: progress(it, "BN statistics", ctx.is_main))
    log.info("per-class BN statistics of %d layers over %d images", len(bn_stats["layers"]),
             int(bn_stats["images_per_class"].sum()))
    if ctx.is_main:
        save_teacher(out / TEACHER_FILE, model=model, name=name, kwargs=model_kwargs, classes=classes, spec=spec,
                     input_size=size, bn_stats=bn_stats, args=run_args, val=val)
        # last.pt (resume state) is not an output: deleting it after the run loses nothing
        outputs = [TEACHER_FILE, "config.yaml"] + ([] if args.stats_only else ["metrics.jsonl"])
        write_manifest(out, stage="pretrain", args=run_args,
                       outputs=outputs, dataset=spec.to_dict(), classes=classes, model=name,
                       inputs={"teacher_weights": args.teacher} if args.stats_only else None,
                       extra={"val": val, "input_size": size, "model_kwargs": model_kwargs,
                              "input_pipeline": pipeline, "device": str(ctx.device)})
        log.info("wrote %s", out / TEACHER_FILE)
    ctx.barrier()
    return 0


if __name__ == "__main__":
    run_main(main)
