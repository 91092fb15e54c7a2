"""Time per recover iteration versus a bare teacher forward + backward on the same batch.

One recover iteration (:func:`wmdd.recover.synthesize.synthesize`) is: random-resized
crop + flip + roll of the batch, teacher forward with the BN-input hooks and
the feature capture, the WMDD loss (barycenter + per-class BN terms), backward
to the pixels, Adam step and clipping. The bare loop is ``model(x)`` and a
backward to ``x`` (teacher parameters frozen in both). Rounds alternate so that
machine load affects both alike. Target ratio: <= 1.25 on CPU. Beside the times it prints
the operators each dispatches per iteration (:func:`benchmarks.op_counts.count_ops`).

    python -m benchmarks.recover_overhead [--teacher DIR] [--model resnet18] [--ipc 10] [--batch-size 100]
        [--iterations 5] [--rounds 3] [--device auto] [--amp] [--channels-last] [--input-size 32] [--data-path DIR]

Without ``--teacher`` a freshly initialised model gets per-class BN statistics
from 20 real CIFAR-10 images per class resized to ``--input-size`` (timing does not depend
on the weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from torch.utils.data import DataLoader

from benchmarks.data import cached_dataset
from benchmarks.op_counts import count_ops
from wmdd.data.datasets import get_spec
from wmdd.data.folders import load_splits, with_transform
from wmdd.data.transforms import eval_transform, pixel_bounds
from wmdd.models import create_model, penultimate_features
from wmdd.models.bn_stats import compute_bn_statistics
from wmdd.models.teacher import load_teacher
from wmdd.recover.losses import RecoverObjective
from wmdd.recover.methods.wmdd import ViewConfig, augment
from wmdd.recover.synthesize import SynthesisConfig, synthesize
from wmdd.runtime.distributed import DistContext, resolve_device


def sync(device: torch.device) -> None:
    """Wait for the queued CUDA work of ``device`` (nothing on CPU), so that host clocks time it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--iterations", type=int, default=5, help="iterations per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--input-size", type=int, default=32, help="without --teacher: image side in pixels")
    p.add_argument("--data-path", help="without --teacher: CIFAR-10 ImageFolder root for the BN statistics "
                                       "(default: the cached 20-per-class subset)")
    args = p.parse_args()
    device = resolve_device(args.device)
    ctx = DistContext(0, 1, 0, device)

    if args.teacher:
        teacher = load_teacher(args.teacher, device, require_bn_stats=True)
        model, stats, spec, size = teacher.model, teacher.bn_stats, teacher.spec, teacher.input_size
    else:
        spec, size = get_spec("cifar10"), args.input_size
        torch.manual_seed(0)
        model = create_model(args.model, num_classes=10, dataset=spec, input_size=size).to(device).eval()
        train_raw, _ = load_splits(args.data_path or cached_dataset("cifar10", 20, 10), train_per_class=20,
                                   val_per_class=1)
        real = with_transform(train_raw, eval_transform(spec, size))
        stats = compute_bn_statistics(model, DataLoader(real, batch_size=100), 10, ctx)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    num_classes = stats["per_class_mean"][stats["layers"][0]].shape[0]
    groups = max(1, args.batch_size // args.ipc)
    classes = torch.arange(groups, device=device) % num_classes
    x = torch.randn(groups * args.ipc, 3, size, size, device=device)
    with torch.no_grad():
        support = penultimate_features(model, x).float() + 1.0
    objective = RecoverObjective(model, stats, per_class_bn=True, use_wb=True, r_bn=0.01, r_ce=0.0,
                                 first_bn_multiplier=10.0, device=device)
    low, high = pixel_bounds(spec)
    config = SynthesisConfig(iterations=args.iterations, lr=0.25, log_every=10 ** 9)
    view_config = ViewConfig(jitter=round(size * 32 / 224))

    def loss(images: torch.Tensor, iteration: int):
        view = augment(images, view_config)
        if args.channels_last:
            view = view.contiguous(memory_format=torch.channels_last)
        return objective(view, classes, support, amp=args.amp)

    def recover_round(iterations: int = args.iterations) -> float:
        with objective:
            sync(device)
            start = time.perf_counter()
            synthesize(loss, x, low, high, dataclasses.replace(config, iterations=iterations))
            sync(device)
        return (time.perf_counter() - start) / iterations

    def bare_round(iterations: int = args.iterations) -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(iterations):
            inp = x.clone().requires_grad_(True)
            view = inp.contiguous(memory_format=torch.channels_last) if args.channels_last else inp
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                out = model(view)
            out.float().square().mean().backward()
        sync(device)
        return (time.perf_counter() - start) / iterations

    recover_round(), bare_round()  # warm-up
    ours, bare = [], []
    for _ in range(args.rounds):
        ours.append(recover_round())
        bare.append(bare_round())
    ops_ours, ops_bare = (sum(count_ops(lambda run=run: run(1)).values()) for run in (recover_round, bare_round))
    n = groups * args.ipc
    print(f"model {args.model if not args.teacher else args.teacher}, {n} images of {size} px per batch "
          f"({groups} classes x IPC {args.ipc}), {device}, amp={args.amp}, channels_last={args.channels_last}, "
          f"{torch.get_num_threads()} threads, best of {args.rounds} rounds of {args.iterations} iterations")
    print(f"recover iteration:       {min(ours) * 1000:8.1f} ms  ({n / min(ours):.1f} images/s)  {ops_ours} ops")
    print(f"bare forward + backward: {min(bare) * 1000:8.1f} ms  ({n / min(bare):.1f} images/s)  {ops_bare} ops")
    print(f"ratio:                   {min(ours) / min(bare):8.3f}  (target <= 1.25)  {ops_ours / ops_bare:.3f} ops")


if __name__ == "__main__":
    main()
