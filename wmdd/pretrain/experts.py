"""``python -m wmdd.pretrain --experts N``: DANCE's experts (Zhang et al., IJCAI 2024, Sec. 3.2).

N networks (``--model``, DM's instance-norm ConvNet ``convnet_in`` by default),
each from its own seeded initialisation (``derive_seed(seed, "expert", e)``),
trained on the real train split with cross-entropy. The paper's settings are
the defaults (:data:`EXPERT_DEFAULTS`): 60 epochs, batch 64, SGD lr 0.01
momentum 0.9 wd 5e-4, lr x0.2 at 2/3 and 5/6 of the epochs, every batch
augmented by DSA ``color_crop`` (per-image parameters, both families in turn as
IDC's ``DiffAug`` does) and then CutMix with probability 0.5.

Each expert's initial and final weights go to ``OUT/progress/expert_<e>.pt``
when it finishes; at the end they are merged into ``OUT/experts.pt``
(:mod:`wmdd.models.experts`) with ``metrics.jsonl`` (one line per expert and epoch,
with its training seconds), and ``manifest.json`` (with the mean training
seconds per expert) is written last. A killed run re-run with the same command
skips finished experts and restarts the one it was training from its
initialisation. Under ``torchrun`` experts are sharded round-robin over ranks;
every expert depends only on the seed and its index, so the result equals one
process.

Deviations from the authors' code (DANCE ``wmdd.pretrain.py`` on IDC): the images
are the evaluation geometry of the train split held as uint8 in memory and
shuffled by a seeded permutation per epoch (their ``ClassDataLoader`` samples
class-balanced batches); the CutMix partner is a random permutation (theirs
draws partners with ``random_indices``); the validation accuracy is measured
once per expert, after training, not every epoch.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from wmdd.data.datasets import resolve_spec
from wmdd.data.device_split import fits_on_device, uint8_images
from wmdd.data.folders import load_splits, resolve_classes, split_dir, with_transform
from wmdd.data.transforms import eval_transform, normalize
from wmdd.io.files import torch_load
from wmdd.io.manifest import write_manifest
from wmdd.models import create_model, parse_model_kwargs
from wmdd.models.experts import EXPERTS_FILE, cpu_state, part_path, save_part, write_experts
from wmdd.options.variants import Variant, VariantRegistry
from wmdd.recover.dsa import DSAParams, apply_sequence, draw_sequence
from wmdd.relabel.views import cutmix_batch
from wmdd.runtime.distributed import DistContext
from wmdd.runtime.training import build_epoch_scheduler, build_optimizer, derive_seed, evaluate

log = logging.getLogger("wmdd.pretrain")

#: What ``--experts`` sets unless the command line or the YAML gives it (DANCE's experts).
EXPERT_DEFAULTS = {"model": "convnet_in", "epochs": 60, "batch_size": 64, "lr": 0.01, "opt": "sgd",
                   "momentum": 0.9, "wd": 5e-4, "lr_scheduler": "multistep", "dsa_strategy": "color_crop",
                   "cutmix_prob": 0.5}

#: Options that only ``--experts`` uses (left out of a teacher run's recorded arguments).
EXPERT_ONLY = ("experts", "dsa_strategy", "cutmix_prob")

#: What pretrain trains: a teacher, or DANCE's experts (``--experts N``), as registered variants
#: (:class:`wmdd.options.variants.VariantRegistry`) that say which option belongs to which.
PRETRAIN_KINDS = VariantRegistry("pretrain")
PRETRAIN_KINDS.register(Variant("teacher", help="a teacher with its per-class BN statistics"))
PRETRAIN_KINDS.register(Variant("experts", EXPERT_DEFAULTS, EXPERT_ONLY, "DANCE's experts (--experts N)"))


def expert_epoch(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, spec, optimizer,
                 args: argparse.Namespace, generator: torch.Generator, device: torch.device) -> float:
    """One epoch of DANCE's expert training (Zhang et al., IJCAI 2024, Sec. 3.2) over
    ``pixels`` (uint8 ``[N, 3, S, S]``, labels ``[N]`` int64) in a seeded order: DSA chain,
    CutMix, mixed cross-entropy ``lam CE(y) + (1 - lam) CE(y_partner)``, SGD step.
    Randomness from ``generator`` only. Returns the mean training loss (a float)."""
    dsa = DSAParams(strategy=args.dsa_strategy)
    model.train()
    total, count = 0.0, 0
    for index in torch.randperm(len(pixels), generator=generator).split(args.batch_size):
        index = index.to(pixels.device)
        x = normalize(pixels[index], spec).to(device)
        x = apply_sequence(x, draw_sequence(dsa, len(x), x.shape[-1], generator))
        x, partner, lam = cutmix_batch(x, args.cutmix_prob, generator)
        y = labels[index].to(device)
        out = model(x)
        loss = lam * nn.functional.cross_entropy(out, y) + \
            (1 - lam) * nn.functional.cross_entropy(out, y[partner.to(device)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(index)
        count += len(index)
    return total / max(1, count)


def train_expert(e: int, args, pixels, labels, spec, size: int, classes: list[str], vloader,
                 device: torch.device) -> dict:
    """Train DANCE expert ``e`` (Zhang et al., IJCAI 2024, Sec. 3.2), keeping its initial and final
    weights for the middle encoder (DANCE Eq. 3); returns its record for
    :func:`wmdd.models.experts.save_part` plus its metrics."""
    seed = derive_seed(args.seed, "expert", e)
    torch.manual_seed(seed)
    model = create_model(args.model, num_classes=len(classes), dataset=spec, input_size=size,
                         **parse_model_kwargs(args.model, args.model_kwargs)).to(device)
    init = cpu_state(model)
    optimizer = build_optimizer(args.opt, model.parameters(), lr=args.lr, weight_decay=args.wd,
                                momentum=args.momentum)
    scheduler = build_epoch_scheduler(args.lr_scheduler, optimizer, args.epochs)
    metrics = []
    for epoch in range(args.epochs):
        generator = torch.Generator().manual_seed(derive_seed(args.seed, "expert", e, "epoch", epoch))
        lr = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        loss = expert_epoch(model, pixels, labels, spec, optimizer, args, generator, device)
        scheduler.step()
        metrics.append({"expert": e, "epoch": epoch, "lr": lr, "train_loss": loss,
                        "seconds": time.perf_counter() - start})
    val = evaluate(model, vloader, DistContext(0, 1, 0, device))
    log.info("expert %d/%d: loss %.4f, val top-1 %.2f%%", e + 1, args.experts, metrics[-1]["train_loss"],
             val["top1"])
    return {"index": e, "seed": seed, "init": init, "final": cpu_state(model), "val": val, "metrics": metrics}


def train_experts(args: argparse.Namespace, ctx: DistContext, out: Path, run_args: dict) -> None:
    """Train this rank's experts (skipping finished ones), then (rank 0) merge them
    into ``experts.pt`` and write ``metrics.jsonl`` and the manifest."""
    train_raw, val_set = load_splits(args.data_path, train_per_class=args.train_per_class,
                                     val_per_class=args.val_per_class, seed=args.seed,
                                     subset=resolve_classes(args.classes, split_dir(args.data_path, "train")))
    spec = resolve_spec(args.dataset, train_raw.classes, args.data_path, subset=args.classes is not None)
    size = args.input_size or spec.image_size
    classes = list(train_raw.classes)
    pixels, labels = uint8_images(train_raw, spec, size, args.workers)
    if args.input_pipeline != "loader" and fits_on_device(pixels, ctx.device):
        pixels, labels = pixels.to(ctx.device), labels.to(ctx.device)  # batches gathered on the device
    vloader = DataLoader(with_transform(val_set, eval_transform(spec, size)), batch_size=args.eval_batch_size,
                         num_workers=args.workers)
    todo = [e for e in ctx.shard(args.experts) if not part_path(out, e).exists()]
    log.info("%d experts (%s, %d epochs) on %d images of %d classes, %d px: %d to do on this rank",
             args.experts, args.model, args.epochs, len(pixels), len(classes), size, len(todo))
    for e in todo:
        record = train_expert(e, args, pixels, labels, spec, size, classes, vloader, ctx.device)
        save_part(part_path(out, e), **record)
    ctx.barrier()
    if not ctx.is_main:
        return
    parts = [torch_load(part_path(out, e), "expert") for e in range(args.experts)]
    metrics = [p.pop("metrics") for p in parts]
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for epochs in metrics for m in epochs))
    seconds = sum(m["seconds"] for epochs in metrics for m in epochs) / args.experts
    write_experts(out / EXPERTS_FILE, parts, name=args.model, kwargs=parse_model_kwargs(args.model, args.model_kwargs),
                  classes=classes, spec=spec, input_size=size, args=run_args)
    val = [p["val"]["top1"] for p in parts]
    write_manifest(out, stage="pretrain", args=run_args, outputs=[EXPERTS_FILE, "metrics.jsonl", "config.yaml"],
                   dataset=spec.to_dict(), classes=classes, model=args.model,
                   extra={"experts": args.experts, "input_size": size, "val_top1": val,
                          "seconds_per_expert": seconds})
    for e in range(args.experts):
        part_path(out, e).unlink()
    part_path(out, 0).parent.rmdir()
    log.info("wrote %s (%d experts, val top-1 %.2f..%.2f%%)", out / EXPERTS_FILE, args.experts, min(val), max(val))
