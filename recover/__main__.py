"""``python -m recover``: synthesise IPC images per class from a teacher (WMDD Eq. 5-7).

Methods: ``wmdd`` (barycenter feature matching + per-class BN, no CE),
``sre2l`` (CE + global BN, no barycenter) and ``random-real`` (IPC seeded real
images per class). ``--wb/--no-wb``, ``--per-class-bn/--no-per-class-bn``,
``--r-bn`` and ``--r-ce`` override a method's settings (WMDD Table III).

Writes ``OUT/images/<class>/<i>.png``, ``barycenters.pt``,
``sample_weights.csv``, ``grid.png``, ``metrics.jsonl`` and, last,
``manifest.json``. A killed run re-run with the same command skips finished
class batches; ``torchrun`` shards class batches over ranks.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from common.cli import progress, run_main
from common.config import parse_with_config, save_resolved_config, stage_parser
from common.data import image_folder, select_per_class, split_dir
from common.distributed import DistContext, setup
from common.errors import UserError
from common.io import atomic_torch_save, atomic_write_json, torch_load
from common.manifest import finished_with_same_args, record_run_args, run_arguments, write_manifest
from common.training import derive_seed
from common.transforms import eval_transform, pixel_bounds
from models.teacher import Teacher, check_classes, load_teacher
from recover.barycenter import class_barycenter
from recover.features import cache_key, cached_features
from recover.images import save_class_images, write_grid, write_sample_weights
from recover.losses import RecoverObjective
from recover.synthesize import SynthesisConfig, synthesize

log = logging.getLogger("wmdd.recover")

METHODS = {
    "wmdd": {"wb": True, "per_class_bn": True, "r_ce": 0.0},
    "sre2l": {"wb": False, "per_class_bn": False, "r_ce": 1.0},
    "random-real": {"wb": False, "per_class_bn": False, "r_ce": 0.0},
}
RESUME_IGNORES = ("workers", "device", "config", "feature_batch_size")


def build_parser() -> argparse.ArgumentParser:
    p = stage_parser("recover", __doc__.split("\n\n")[0], workers_help="DataLoader workers for the feature pass")
    p.add_argument("--teacher", help="pretrain output directory (or its teacher.pt)")
    p.add_argument("--data-path", help="real dataset root (train/ is used for features and real images)")
    p.add_argument("--method", default="wmdd", choices=sorted(METHODS))
    p.add_argument("--ipc", type=int, default=10, help="images per class")
    p.add_argument("--batch-size", type=int, default=100,
                   help="images per optimisation batch (batch-size // ipc classes per batch)")
    p.add_argument("--iterations", "--iteration", dest="iterations", type=int, default=2000)
    p.add_argument("--lr", type=float, default=0.25, help="Adam learning rate on the pixels")
    p.add_argument("--r-bn", type=float, default=0.01, help="weight of the BN term (lambda, WMDD Eq. 7)")
    p.add_argument("--r-ce", type=float, help="weight of the cross-entropy term (method default)")
    p.add_argument("--wb", action=argparse.BooleanOptionalAction, default=None,
                   help="barycenter feature-matching term (method default)")
    p.add_argument("--per-class-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="per-class (WMDD) instead of global (SRe2L) BN statistics (method default)")
    p.add_argument("--first-bn-multiplier", type=float, default=10.0)
    p.add_argument("--jitter", type=int, help="random roll in pixels (default: input size * 32/224)")
    p.add_argument("--random-crop", action=argparse.BooleanOptionalAction, default=True,
                   help="random-resized crop of the batch each iteration (SRe2L's CIFAR recipe has none)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flip of the batch each iteration")
    p.add_argument("--min-scale", type=float, default=0.08, help="random-resized-crop minimum area")
    p.add_argument("--max-scale", type=float, default=1.0, help="random-resized-crop maximum area")
    p.add_argument("--init", default="noise", choices=["noise", "real"],
                   help="N(0,1) noise in normalised space, or seeded real images of the class")
    p.add_argument("--barycenter-solver", default="exact", choices=["exact", "pot"],
                   help="exact: k-means++-initialised alternation; pot: WMDD's POT path")
    p.add_argument("--weight-wb", action="store_true", help="free barycenter weights (k-means masses)")
    p.add_argument("--train-per-class", type=int, help="use a seeded choice of N real images per class")
    p.add_argument("--feature-batch-size", type=int, default=256)
    p.add_argument("--log-every", type=int, default=50, help="iterations between loss records")
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the method's settings into the switches left unset, and check values.

    Raises:
        UserError: a required option is missing or a value is out of range.
    """
    for name in ("teacher", "data_path", "output_dir"):
        if not getattr(args, name):
            raise UserError(f"--{name.replace('_', '-')} is required")
    for name, value in METHODS[args.method].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("ipc", "batch_size", "iterations", "log_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.min_scale <= args.max_scale <= 1:
        raise UserError(f"crop scales must satisfy 0 < min ({args.min_scale}) <= max ({args.max_scale}) <= 1")
    if args.method != "random-real" and not (args.wb or args.r_bn > 0 or args.r_ce > 0):
        raise UserError("every loss term is off (--no-wb, --r-bn 0, --r-ce 0): nothing to optimise")
    return args


def class_batches(num_classes: int, ipc: int, batch_size: int) -> list[list[int]]:
    """Class indices of each optimisation batch: ``max(1, batch_size // ipc)`` classes each."""
    per = max(1, batch_size // ipc)
    return [list(range(s, min(s + per, num_classes))) for s in range(0, num_classes, per)]


def real_choice(dataset, ipc: int, seed: int) -> dict[int, list[int]]:
    """Seeded choice of ``ipc`` sample indices per class (the Random baseline and ``--init real``).

    Raises:
        UserError: a class has fewer than ``ipc`` images.
    """
    chosen = select_per_class(dataset.samples, ipc, derive_seed(seed, "real-images"), where=str(dataset.root))
    index = {s: i for i, s in enumerate(dataset.samples)}
    out: dict[int, list[int]] = {}
    for s in chosen:
        out.setdefault(s[1], []).append(index[s])
    return out


def compute_barycenters(args, teacher: Teacher, dataset, ctx: DistContext, out: Path) -> dict:
    """Features (cached) and per-class barycenters, saved to ``barycenters.pt`` (rank 0)."""
    path = out / "barycenters.pt"
    key = {**cache_key(teacher, dataset), "ipc": args.ipc, "solver": args.barycenter_solver,
           "weighted": args.weight_wb, "seed": args.seed}
    if path.exists():
        saved = torch_load(path, "barycenters")
        if saved.get("key") == key:
            return saved
    features, labels = cached_features(out / "features.pt", teacher, dataset, ctx.device,
                                       args.feature_batch_size, args.workers)
    supports, weights, objectives, seconds = [], [], [], []
    for c in progress(range(len(teacher.classes)), "barycenters", ctx.is_main):
        start = time.perf_counter()
        bary = class_barycenter(features[labels == c].double().numpy(), args.ipc, solver=args.barycenter_solver,
                                weighted=args.weight_wb, seed=derive_seed(args.seed, "barycenter", c) % 2**32)
        seconds.append(time.perf_counter() - start)
        supports.append(torch.from_numpy(bary.support).float())
        weights.append(torch.from_numpy(bary.weights).float())
        objectives.append(bary.objective)
    saved = {"key": key, "classes": teacher.classes, "support": torch.stack(supports),
             "weights": torch.stack(weights), "objective": torch.tensor(objectives, dtype=torch.float64),
             "seconds": torch.tensor(seconds, dtype=torch.float64),
             "solver": "kmeans" if args.weight_wb else args.barycenter_solver}
    atomic_torch_save(saved, path)
    log.info("barycenters (%s, k=%d): mean W2^2 %.4f, %.2f s/class", saved["solver"], args.ipc,
             sum(objectives) / len(objectives), sum(seconds) / len(seconds))
    return saved


def marker_path(out: Path, b: int) -> Path:
    return out / "progress" / f"batch_{b:05d}.json"


def run_batch(args, b: int, classes: list[int], teacher: Teacher, dataset, objective, support, real,
              config: SynthesisConfig, ctx: DistContext, out: Path) -> None:
    """Synthesise (or copy, for random-real) the images of class batch ``b`` and mark it done."""
    torch.manual_seed(derive_seed(args.seed, "recover-batch", b))
    start = time.perf_counter()
    curve: list[dict] = []
    if args.method == "random-real" or args.init == "real":
        init = torch.stack([dataset[i][0] for c in classes for i in real[c]])
    else:
        init = torch.randn(len(classes) * args.ipc, 3, teacher.input_size, teacher.input_size)
    if args.method == "random-real":
        images = init
    else:
        low, high = pixel_bounds(teacher.spec)
        target = support[classes].reshape(-1, support.shape[-1]).to(ctx.device) if support is not None else None
        images, curve = synthesize(objective, init.to(ctx.device), torch.tensor(classes, device=ctx.device),
                                   target, low, high, config)
    for j, c in enumerate(classes):
        save_class_images(images[j * args.ipc:(j + 1) * args.ipc], teacher.spec,
                          out / "images" / teacher.classes[c])
    record = {"batch": b, "classes": [teacher.classes[c] for c in classes],
              "seconds": time.perf_counter() - start, "curve": curve}
    atomic_write_json(marker_path(out, b), record)
    if curve:
        names = record["classes"]
        log.info("batch %d (%d classes, %s..%s): loss %.4f -> %.4f in %.1f s", b, len(names), names[0], names[-1],
                 curve[0]["loss"], curve[-1]["loss"], record["seconds"])


def main(argv: list[str] | None = None) -> int:
    args = resolve_args(parse_with_config(build_parser(), argv, "recover"))
    out = Path(args.output_dir)
    run_args = run_arguments(args, RESUME_IGNORES)
    if finished_with_same_args(out, "recover", run_args):
        return 0
    ctx = setup(args.device)
    needs_stats = args.method != "random-real" and args.r_bn > 0
    teacher = load_teacher(args.teacher, ctx.device, require_bn_stats=needs_stats)
    size = teacher.input_size
    jitter = args.jitter if args.jitter is not None else round(size * 32 / 224)
    dataset = image_folder(split_dir(args.data_path, "train"), eval_transform(teacher.spec, size),
                           per_class=args.train_per_class, seed=args.seed)
    check_classes(teacher, dataset.classes, str(split_dir(args.data_path, "train")))
    counts = torch.bincount(torch.tensor(dataset.targets), minlength=len(dataset.classes))
    if args.method == "random-real" or args.init == "real" or args.wb:
        small = int(counts.argmin())
        if counts[small] < args.ipc:
            raise UserError(f"{split_dir(args.data_path, 'train') / dataset.classes[small]}: {int(counts[small])} "
                            f"images, fewer than --ipc {args.ipc} (needed by "
                            f"{'the barycenter' if args.wb else 'real images'}); lower --ipc")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        record_run_args(out, "recover", run_args)
        save_resolved_config(args, out / "config.yaml")

    bary = None
    if args.method != "random-real" and (args.wb or args.weight_wb):
        if ctx.is_main:
            bary = compute_barycenters(args, teacher, dataset, ctx, out)
        ctx.barrier()
        bary = bary or torch_load(out / "barycenters.pt", "barycenters")
    real = real_choice(dataset, args.ipc, args.seed) if (args.method == "random-real" or args.init == "real") else {}
    config = SynthesisConfig(iterations=args.iterations, lr=args.lr, min_scale=args.min_scale,
                             max_scale=args.max_scale, random_crop=args.random_crop, flip=args.flip,
                             jitter=jitter, amp=args.amp,
                             channels_last=args.channels_last, log_every=args.log_every)
    batches = class_batches(len(teacher.classes), args.ipc, args.batch_size)
    todo = [b for b in ctx.shard(len(batches)) if not marker_path(out, b).exists()]
    log.info("%s: %d classes x IPC %d in %d batches (%d to do on this rank), %d px, %s", args.method,
             len(teacher.classes), args.ipc, len(batches), len(todo), size, ctx.device)
    objective = None
    if args.method != "random-real":
        objective = RecoverObjective(teacher.model, teacher.bn_stats, per_class_bn=args.per_class_bn,
                                     use_wb=args.wb, r_bn=args.r_bn, r_ce=args.r_ce,
                                     first_bn_multiplier=args.first_bn_multiplier, device=ctx.device)
        objective.__enter__()
    support = bary["support"] if bary is not None and args.wb else None
    try:
        for b in progress(todo, "class batches", ctx.is_main):
            run_batch(args, b, batches[b], teacher, dataset, objective, support, real, config, ctx, out)
    finally:
        if objective is not None:
            objective.__exit__(None, None, None)
    ctx.barrier()
    if ctx.is_main:
        finish(args, teacher, bary, batches, out, run_args, size, jitter)
    ctx.barrier()
    return 0


def finish(args, teacher: Teacher, bary: dict | None, batches: list[list[int]], out: Path, run_args: dict,
           size: int, jitter: int) -> None:
    """Merge per-batch records into ``metrics.jsonl``, write weights, grid and manifest (rank 0)."""
    records = [json.loads(marker_path(out, b).read_text()) for b in range(len(batches))]
    lines = [json.dumps({"batch": r["batch"], "classes": r["classes"], **point})
             for r in records for point in r["curve"]]
    (out / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    weights = bary["weights"] if bary is not None and args.weight_wb else torch.ones(len(teacher.classes), args.ipc)
    write_sample_weights(out / "sample_weights.csv", teacher.classes, weights)
    write_grid(out / "images", teacher.classes, out / "grid.png")
    outputs = ["images", "sample_weights.csv", "grid.png", "metrics.jsonl", "config.yaml"]
    extra = {"method": args.method, "ipc": args.ipc, "input_size": size, "jitter": jitter,
             "num_images": args.ipc * len(teacher.classes),
             "seconds": sum(r["seconds"] for r in records),
             "loss": {"initial": [r["curve"][0]["loss"] for r in records if r["curve"]],
                      "final": [r["curve"][-1]["loss"] for r in records if r["curve"]]}}
    if bary is not None:
        outputs.append("barycenters.pt")
        extra["barycenter"] = {"solver": bary["solver"], "mean_w2_squared": float(bary["objective"].mean()),
                               "seconds_per_class": float(bary["seconds"].mean())}
    write_manifest(out, stage="recover", args=run_args, outputs=outputs, dataset=teacher.spec.to_dict(),
                   classes=teacher.classes, model=teacher.name, inputs={"teacher": teacher.path}, extra=extra)
    log.info("wrote %d images to %s and %s", extra["num_images"], out / "images", out / "grid.png")


if __name__ == "__main__":
    run_main(main)
