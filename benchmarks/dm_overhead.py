"""Time per DM / DDM recover iteration versus a bare embedding pass of the same batch.

One DM iteration (:func:`wmdd.recover.synthesize.synthesize` with
:class:`wmdd.recover.methods.dm.DM`'s objective) is: re-initialise the network, draw
``batch_real`` real images of each class from the in-memory pool, one shared
DSA draw per class applied to its real and synthetic images, the embedding of
the real batch (no grad) and of the synthetic batch, the per-class loss,
backward to the pixels, the SGD step and the clipping. DDM adds the per-block
feature maps and the style and diversity terms. The bare pass is the same
network, on the same number of real and synthetic images (sampled once, no
augmentation, no re-initialisation): real forward without grad, synthetic
forward, the DM loss and its backward. Rounds alternate so that machine load
affects both alike. Target ratio: <= 1.2.

Beside the times it prints the floating-point operations of one iteration of
each (``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix
products, forward and backward) and their ratio: the share of the time ratio
that is arithmetic the method asks for (DDM's channel Gram matrices) rather
than overhead around the embedding pass; and the operators dispatched
(:func:`benchmarks.op_counts.count_ops`), the launches a GPU pays for.

    python -m benchmarks.dm_overhead [--methods dm [ddm] [dance]] [--experts DIR] [--ipc 10] [--classes 10]
        [--batch-real 256] [--iterations 3] [--rounds 3] [--data-path DIR] [--device auto]

With several ``--methods`` the first is also the reference of the others: e.g.
``--methods dm dance --experts DIR`` prints a DANCE iteration (the middle
encoder loaded from an expert, the decoded multi-formation images, the
calibration cross-entropy of the trained expert) against a DM iteration, timed
in alternating rounds of the same run.

``--data-path`` defaults to the full CIFAR-10 extracted in ``.cache/cifar10``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.data import cached_dataset
from benchmarks.op_counts import count_ops
from benchmarks.recover_overhead import sync
from wmdd.data.datasets import get_spec
from wmdd.data.folders import image_folder, split_dir
from wmdd.data.transforms import eval_transform, pixel_bounds
from wmdd.models.experts import load_experts
from wmdd.options.config import resolve_precision
from wmdd.recover.grouping import class_mean
from wmdd.recover.matching import mean_embedding_loss
from wmdd.recover.methods import Resources
from wmdd.recover.options import build_parser, resolve_args
from wmdd.recover.real_pool import RealPool
from wmdd.recover.synthesize import SynthesisConfig, synthesize
from wmdd.runtime.distributed import resolve_device


def _built(name: str, args, data: str, dataset, spec, pool: RealPool, device: torch.device):
    """``(method instance, objective, synthesis config, initial stored images on ``device``,
    resolved recover arguments)`` of ``name`` on the first ``args.classes`` classes."""
    flags = ["--method", name, "--dataset", "cifar10", "--data-path", data, "--output-dir", "unused",
             "--ipc", str(args.ipc), "--workers", "2", "--batch-real", str(args.batch_real), "--device", device.type]
    experts = None
    if name == "dance":
        if not args.experts:
            raise SystemExit("--methods dance needs --experts DIR (python -m wmdd.pretrain --experts N)")
        experts = load_experts(args.experts)
        experts.check_data(list(dataset.classes), 32, data)
        flags += ["--experts", args.experts, "--num-experts", str(min(5, len(experts)))]
    rargs = resolve_precision(build_parser().parse_args(flags))
    cls = resolve_args(rargs)
    method = cls(Resources(args=rargs, spec=spec, input_size=32, classes=list(dataset.classes), dataset=dataset,
                           device=device, experts=experts))
    classes = list(range(args.classes))
    real = torch.cat([pool.sample(c, args.ipc * cls.real_per_image(rargs)) for c in classes])
    config = SynthesisConfig(iterations=args.iterations, lr=rargs.lr, optimisation=cls.optimisation(rargs),
                             log_every=10 ** 9)
    return method, method.batch_objective(classes, 0), config, method.initial_images(real), rargs


def flops(run) -> int:
    """Floating-point operations (convolutions and matrix products, forward and
    backward; 2 per multiply-add) of one call of ``run()``, counted by
    ``torch.utils.flop_counter.FlopCounterMode``."""
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["dm"], choices=["dm", "ddm", "dance"],
                   help="methods timed side by side, each against the bare pass of the first (when it is dm or ddm) "
                        "and against the first")
    p.add_argument("--experts", help="pretrain --experts output (for dance)")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch-real", type=int, default=256)
    p.add_argument("--iterations", type=int, default=3, help="iterations per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data-path")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (times are synchronised on CUDA)")
    args = p.parse_args()
    if args.experts and "dance" not in args.methods:
        p.error("--experts is for --methods dance")
    data = args.data_path or str(cached_dataset("cifar10"))
    device = resolve_device(args.device)
    spec = get_spec("cifar10")
    dataset = image_folder(split_dir(data, "train"), eval_transform(spec, 32))
    low, high = pixel_bounds(spec)
    classes = list(range(args.classes))
    pool = RealPool(dataset, classes, spec, 32, device=device)
    built = {name: _built(name, args, data, dataset, spec, pool, device) for name in args.methods}
    real, sizes = pool.sample_classes(args.batch_real, torch.Generator().manual_seed(0))

    def method_round(name: str, iterations: int | None = None) -> float:
        _, objective, config, x, _ = built[name]
        if iterations:
            config = dataclasses.replace(config, iterations=iterations)
        sync(device)
        start = time.perf_counter()
        synthesize(objective, x, low, high, config)
        sync(device)
        return (time.perf_counter() - start) / config.iterations

    first = built[args.methods[0]][0]
    x = built[args.methods[0]][3]

    def bare_round(iterations: int | None = None) -> float:
        iterations = iterations or args.iterations
        sync(device)
        start = time.perf_counter()
        for _ in range(iterations):
            syn = x.clone().requires_grad_(True)
            with torch.no_grad():
                real_mean = class_mean(first.embed(real), sizes)
            mean_embedding_loss(real_mean, class_mean(first.embed(syn), [args.ipc] * len(sizes))).backward()
        sync(device)
        return (time.perf_counter() - start) / iterations

    timed = {name: (lambda iterations=None, name=name: method_round(name, iterations)) for name in args.methods}
    if args.methods[0] in ("dm", "ddm"):
        timed["bare embedding pass"] = bare_round
    for run in timed.values():  # warm-up
        run()
    times = {name: [] for name in timed}
    for _ in range(args.rounds):
        for name, run in timed.items():
            times[name].append(run())
    best = {name: min(t) for name, t in times.items()}
    work = {name: flops(lambda run=run: run(1)) for name, run in timed.items()}
    ops = {name: sum(count_ops(lambda run=run: run(1)).values()) for name, run in timed.items()}
    print(f"{args.classes} classes x (IPC {args.ipc} stored + {args.batch_real} real) images of 32 px, "
          f"{', '.join(f'{name} on {b[4].net or b[0].experts.name}' for name, b in built.items())}, {device}, "
          f"{torch.get_num_threads()} threads, best of {args.rounds} rounds of {args.iterations} iterations")
    for name, seconds in best.items():
        print(f"{name + (' iteration' if name in built else '') + ':':30s}{seconds * 1000:9.1f} ms"
              f"{work[name] / 1e9:10.1f} GFLOP{ops[name]:8d} ops")
    pairs = [(name, "bare embedding pass") for name in args.methods if name in ("dm", "ddm") and
             "bare embedding pass" in best] + [(name, args.methods[0]) for name in args.methods[1:]]
    for name, reference in pairs:
        label = f"ratio {name} / {'bare' if reference == 'bare embedding pass' else reference}:"
        target = "  (target <= 1.2)" if reference == "bare embedding pass" else ""
        print(f"{label:30s}{best[name] / best[reference]:9.3f} time{work[name] / work[reference]:10.3f} FLOP"
              f"{ops[name] / ops[reference]:8.3f} ops{target}")


if __name__ == "__main__":
    main()
