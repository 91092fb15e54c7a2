"""``python -m wmdd.recover``: synthesise IPC images per class with a registered method.

Methods (``--method``, :mod:`wmdd.recover.methods`): ``wmdd`` (barycenter feature
matching + per-class BN, no CE; WMDD Eq. 5-7), ``sre2l`` (CE + global BN),
``random-real`` (IPC seeded real images per class), ``medoids`` (the real images
nearest one-to-one to the feature barycenter's support), ``dm`` (distribution
matching with random networks and DSA), ``ddm`` (DM + style matching +
intra-class diversity) and ``dance`` (middle encoders of pretrained experts,
expert calibration, multi-formation; needs ``--experts``). ``python -m wmdd.recover
--help`` lists each method's options.

Writes ``OUT/images/<class>/<i>.png``, ``sample_weights.csv``, ``grid.png``,
``metrics.jsonl``, ``barycenters.pt`` (methods that use barycenters),
``sources.csv`` (the real image each synthetic image started from, with ``--init
real`` or ``medoid``) and, last, ``manifest.json``. A killed run re-run with the
same command skips finished class batches; ``torchrun`` shards class batches over ranks.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from wmdd.data.datasets import get_spec
from wmdd.data.folders import image_folder, resolve_classes, split_dir
from wmdd.data.transforms import eval_transform, pixel_bounds
from wmdd.errors import UserError
from wmdd.io.files import atomic_torch_save, atomic_write_json, torch_load
from wmdd.io.manifest import (
    RUN_ARGS,
    finished_with_same_args,
    record_run_args,
    run_arguments,
    write_manifest,
    write_set_record,
)
from wmdd.models.experts import load_experts
from wmdd.models.teacher import Teacher, check_classes, load_teacher
from wmdd.options.config import resolve_precision, save_resolved_config
from wmdd.options.parsing import progress, run_main
from wmdd.recover.barycenter import class_barycenter
from wmdd.recover.batches import class_batches, marker_path, pending_batches, real_choice
from wmdd.recover.features import cache_key, cached_features, dataset_fingerprint, key_digest
from wmdd.recover.images import (
    check_images_complete,
    check_images_owned,
    save_class_images,
    write_grid,
    write_sample_weights,
    write_sources,
)
from wmdd.recover.medoids import medoid_assignment
from wmdd.recover.methods import RecoverMethod, Resources, get_method
from wmdd.recover.methods.registry import INITS
from wmdd.recover.options import parse_args
from wmdd.recover.synthesize import SynthesisConfig, synthesize
from wmdd.runtime.distributed import DistContext, setup
from wmdd.runtime.training import derive_seed

log = logging.getLogger("wmdd.recover")

RESUME_IGNORES = ("workers", "device", "config", "feature_batch_size", "cache_dir")



def compute_barycenters(args, teacher: Teacher, dataset, ctx: DistContext, out: Path,
                        support_per_image: int = 1) -> dict:
    """Features (cached), per-class barycenters (WMDD Sec. III-C) of ``k = IPC * support_per_image`` support
    points (one per decoded image: ``factor**2`` with multi-formation) and their
    medoids, saved to ``barycenters.pt`` (rank 0). With ``--cache-dir`` the features and
    barycenters are also kept there (``features-<key>.pt``, ``barycenters-<key>.pt``, named
    after their keys) and reused from there when their keys match.

    Returns:
        The saved dict: ``support [K, k, D]`` and ``weights [K, k]`` float32,
        ``medoids [K, k]`` int64 (the ``dataset`` sample index assigned to each
        support point by :func:`wmdd.recover.medoids.medoid_assignment`), ``objective``
        and ``seconds [K]`` float64 (W2^2 and solver time per class), ``solver``, ``key``.
    """
    path = out / "barycenters.pt"
    points = args.ipc * support_per_image
    key = {**cache_key(teacher, dataset), "ipc": args.ipc, "solver": args.barycenter_solver,
           "weighted": args.weight_wb, "seed": args.seed}
    if support_per_image > 1:
        key["support_per_image"] = support_per_image
    shared = Path(args.cache_dir) if args.cache_dir else None
    if shared is not None:
        shared.mkdir(parents=True, exist_ok=True)
    for candidate in (path, shared / f"barycenters-{key_digest(key)}.pt" if shared else None):
        if candidate is not None and candidate.exists():
            saved = torch_load(candidate, "barycenters")
            if saved.get("key") == key and "medoids" in saved:
                if candidate != path:
                    log.info("using cached barycenters %s", candidate)
                    atomic_torch_save(saved, path)
                return saved
    features_path = shared / f"features-{key_digest(cache_key(teacher, dataset))}.pt" if shared else out / "features.pt"
    features, labels = cached_features(features_path, teacher, dataset, ctx.device, args.feature_batch_size,
                                       args.workers)
    supports, weights, objectives, seconds, medoids = [], [], [], [], []
    for c in progress(range(len(teacher.classes)), "barycenters", ctx.is_main):
        start = time.perf_counter()
        members = torch.nonzero(labels == c).flatten()
        class_features = features[members].double().numpy()
        bary = class_barycenter(class_features, points, solver=args.barycenter_solver,
                                weighted=args.weight_wb, seed=derive_seed(args.seed, "barycenter", c) % 2**32)
        seconds.append(time.perf_counter() - start)
        medoids.append(members[torch.from_numpy(medoid_assignment(class_features, bary.support))])
        supports.append(torch.from_numpy(bary.support).float())
        weights.append(torch.from_numpy(bary.weights).float())
        objectives.append(bary.objective)
    saved = {"key": key, "classes": teacher.classes, "support": torch.stack(supports),
             "weights": torch.stack(weights), "medoids": torch.stack(medoids),
             "objective": torch.tensor(objectives, dtype=torch.float64),
             "seconds": torch.tensor(seconds, dtype=torch.float64),
             "solver": "kmeans" if args.weight_wb else args.barycenter_solver}
    atomic_torch_save(saved, path)
    if shared is not None:
        atomic_torch_save(saved, shared / f"barycenters-{key_digest(key)}.pt")
    log.info("barycenters (%s, k=%d): mean W2^2 %.4f, %.2f s/class", saved["solver"], points,
             sum(objectives) / len(objectives), sum(seconds) / len(seconds))
    return saved


def load_inputs(args, needs: frozenset[str], ctx: DistContext) -> tuple[Teacher | None, Resources]:
    """The teacher (when given), dataset spec, input size, real train split and the
    experts (when needed). Whether each class has the real images that the initial images
    or the barycenter need was checked when the arguments were parsed
    (:func:`wmdd.recover.options.check_real_images`).

    Raises:
        UserError: teacher and ``--dataset``/``--input-size`` disagree, the class
            folders differ from the teacher's, or the experts file is missing, corrupt
            or from another dataset.
    """
    teacher = None
    if args.teacher:
        teacher = load_teacher(args.teacher, ctx.device, require_bn_stats="bn_stats" in needs)
        if args.dataset and args.dataset != teacher.spec.name:
            raise UserError(f"--dataset {args.dataset} differs from the teacher's dataset {teacher.spec.name} "
                            f"({teacher.path}); drop --dataset")
        if args.input_size and args.input_size != teacher.input_size:
            raise UserError(f"--input-size {args.input_size} differs from the teacher's {teacher.input_size} px "
                            f"({teacher.path}); drop --input-size")
    spec = teacher.spec if teacher else get_spec(args.dataset)
    size = teacher.input_size if teacher else (args.input_size or spec.image_size)
    train = split_dir(args.data_path, "train")
    dataset = image_folder(train, eval_transform(spec, size), per_class=args.train_per_class, seed=args.seed,
                           subset=resolve_classes(args.classes, train))
    if teacher is not None:
        check_classes(teacher, dataset.classes, str(train))
    experts = None
    if "experts" in needs:
        experts = load_experts(args.experts)
        experts.check_data(dataset.classes, size, str(train))
    return teacher, Resources(args=args, spec=spec, input_size=size, classes=list(dataset.classes),
                              dataset=dataset, device=ctx.device, teacher=teacher, experts=experts)


def batch_inputs(res: Resources) -> dict:
    """What a class batch's images depend on besides the arguments (recorded with them in its
    marker, :func:`wmdd.recover.batches.pending_batches`): the real train split's fingerprint
    and the sha256 of the teacher and the experts (``None`` when not used)."""
    return {"dataset": dataset_fingerprint(res.dataset),
            "teacher_sha256": res.teacher.sha256 if res.teacher else None,
            "experts_sha256": res.experts.sha256 if res.experts else None}


def run_batch(args, b: int, classes: list[int], method: RecoverMethod, sources: dict[int, list[int]],
              config: SynthesisConfig | None, out: Path, inputs: dict) -> None:
    """Synthesise (or copy) the images of class batch ``b`` and mark it done.

    ``sources[c]`` lists the dataset sample indices that class ``c``'s images start
    from (``--init real`` or ``medoid``; IPC of them, or IPC x tiles with
    multi-formation, ``--factor``); with ``--init noise`` they start from N(0, 1).
    """
    res = method.res
    torch.manual_seed(derive_seed(args.seed, "recover-batch", b))
    start = time.perf_counter()
    curve: list[dict] = []
    if args.init == "noise":
        images = torch.randn(len(classes) * args.ipc, 3, res.input_size, res.input_size)
    else:
        images = method.initial_images(torch.stack([res.dataset[i][0] for c in classes for i in sources[c]]))
    objective = method.batch_objective(classes, b)
    if objective is not None:
        low, high = pixel_bounds(res.spec)
        images, curve = synthesize(objective, images.to(res.device), low, high, config)
    for j, c in enumerate(classes):
        save_class_images(images[j * args.ipc:(j + 1) * args.ipc], res.spec, out / "images" / res.classes[c])
    record = {"batch": b, "classes": [res.classes[c] for c in classes], "inputs": inputs,
              "seconds": time.perf_counter() - start, "curve": curve}
    atomic_write_json(marker_path(out, b), record)
    if curve:
        names = record["classes"]
        log.info("batch %d (%d classes, %s..%s): loss %.4f -> %.4f in %.1f s", b, len(names), names[0], names[-1],
                 curve[0]["loss"], curve[-1]["loss"], record["seconds"])


def main(argv: list[str] | None = None) -> int:
    args = resolve_precision(parse_args(argv))
    cls = get_method(args.method)
    out = Path(args.output_dir)
    run_args = run_arguments(args, RESUME_IGNORES)
    if finished_with_same_args(out, "recover", run_args):
        return 0
    ctx = setup(args.device)
    needs = cls.needs(args) | INITS[args.init]
    teacher, res = load_inputs(args, needs, ctx)
    cls.check_resources(res)
    if ctx.is_main:
        check_images_owned(out / "images", res.classes,
                           (out / RUN_ARGS).is_file() or marker_path(out, 0).parent.is_dir())
        out.mkdir(parents=True, exist_ok=True)
        record_run_args(out, "recover", run_args)
        save_resolved_config(args, out / "config.yaml")
    ctx.barrier()  # no rank writes an image before rank 0 has checked and claimed the directory
    if "barycenters" in needs:
        if ctx.is_main:
            res.barycenters = compute_barycenters(args, teacher, res.dataset, ctx, out, cls.real_per_image(args))
        ctx.barrier()
        res.barycenters = res.barycenters or torch_load(out / "barycenters.pt", "barycenters")
    if "real_init" in needs:
        sources = real_choice(res.dataset, args.ipc * cls.real_per_image(args), args.seed)
    elif "medoid_init" in needs:
        sources = {c: row.tolist() for c, row in enumerate(res.barycenters["medoids"])}
    else:
        sources = {}
    config = SynthesisConfig(iterations=args.iterations, lr=args.lr, optimisation=cls.optimisation(args),
                             log_every=args.log_every) if cls.optimizes else None
    batches = class_batches(len(res.classes), args.ipc, args.batch_size)
    inputs = {**batch_inputs(res), "args": run_args}
    todo = pending_batches(out, ctx.shard(len(batches)), inputs)
    log.info("%s: %d classes x IPC %d in %d batches (%d to do on this rank), %d px, %s", args.method,
             len(res.classes), args.ipc, len(batches), len(todo), res.input_size, ctx.device)
    method = cls(res)
    try:
        for b in progress(todo, "class batches", ctx.is_main):
            run_batch(args, b, batches[b], method, sources, config, out, inputs)
    finally:
        method.close()
    ctx.barrier()
    if ctx.is_main:
        finish(args, method, batches, out, run_args, sources)
    ctx.barrier()
    return 0


def finish(args, method: RecoverMethod, batches: list[list[int]], out: Path, run_args: dict,
           sources: dict[int, list[int]]) -> None:
    """Merge per-batch records into ``metrics.jsonl``, write weights, grid, ``sources.csv``
    (when the images started from real ones) and manifest (rank 0)."""
    res, bary = method.res, method.res.barycenters
    records = [json.loads(marker_path(out, b).read_text()) for b in range(len(batches))]
    lines = [json.dumps({"batch": r["batch"], "classes": r["classes"], **point})
             for r in records for point in r["curve"]]
    (out / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    weights = bary["weights"] if bary is not None and args.weight_wb else torch.ones(len(res.classes), args.ipc)
    write_sample_weights(out / "sample_weights.csv", res.classes, weights)
    check_images_complete(out / "images", res.classes, args.ipc)
    write_set_record(out / "images", stage="recover", factor=method.manifest_fields().get("factor", 1),
                     input_size=res.input_size)
    write_grid(out / "images", res.classes, out / "grid.png")
    outputs = ["images", "sample_weights.csv", "grid.png", "metrics.jsonl", "config.yaml"]
    if sources:
        write_sources(out / "sources.csv", res.dataset, res.classes, sources, args.ipc)
        outputs.append("sources.csv")
    extra = {"method": args.method, "ipc": args.ipc, "input_size": res.input_size,
             "num_images": args.ipc * len(res.classes), **method.manifest_fields(),
             "seconds": sum(r["seconds"] for r in records),
             "loss": {"initial": [r["curve"][0]["loss"] for r in records if r["curve"]],
                      "final": [r["curve"][-1]["loss"] for r in records if r["curve"]]}}
    if bary is not None:
        outputs.append("barycenters.pt")
        extra["barycenter"] = {"solver": bary["solver"], "mean_w2_squared": float(bary["objective"].mean()),
                               "seconds_per_class": float(bary["seconds"].mean())}
    teacher, experts = res.teacher, res.experts
    inputs = {**({"teacher": teacher.path} if teacher else {}), **({"experts": experts.path} if experts else {})}
    write_manifest(out, stage="recover", args=run_args, outputs=outputs, dataset=res.spec.to_dict(),
                   classes=res.classes, model=teacher.name if teacher else None, inputs=inputs, extra=extra)
    log.info("wrote %d images to %s and %s", extra["num_images"], out / "images", out / "grid.png")


if __name__ == "__main__":
    run_main(main)
