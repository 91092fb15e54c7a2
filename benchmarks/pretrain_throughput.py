"""Images/s of the pretrain loop versus a bare ``forward; backward; step`` loop.

Both run in one process on the same model architecture, batch size and real
CIFAR-10 images, alternating rounds (pretrain, bare, pretrain, bare, ...) so
that machine load affects both alike. The pretrain loop is
:func:`wmdd.pretrain.loop.train_one_epoch` fed by the stage's DataLoader (JPEG
decoding, augmentation, worker processes); the bare loop iterates over batches
already decoded into memory. Target: ratio >= 0.9.

    python -m benchmarks.pretrain_throughput [--model resnet18] [--batch-size 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn

from benchmarks.data import cached_dataset
from wmdd.data.datasets import get_spec
from wmdd.data.folders import load_splits, with_transform
from wmdd.data.loaders import seed_epoch, train_loader
from wmdd.data.transforms import train_transform
from wmdd.models import create_model, parse_model_kwargs
from wmdd.pretrain.loop import train_one_epoch
from wmdd.runtime.distributed import DistContext


def bare_loop(model, optimizer, batches) -> float:
    """Seconds for forward/backward/step over in-memory ``batches``."""
    model.train()
    start = time.perf_counter()
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--model-kwargs", nargs="*", default=[])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--images-per-class", type=int, default=64, help="train images per class per round")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    root = cached_dataset("cifar10", args.images_per_class, 10)
    spec = get_spec("cifar10")
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    train_raw, _ = load_splits(root, train_per_class=args.images_per_class, val_per_class=10)
    train_set = with_transform(train_raw, train_transform(spec, 32))
    loader = train_loader(train_set, batch_size=args.batch_size, workers=args.workers, seed=0, ctx=ctx)
    seed_epoch(loader, 0, 0, ctx)
    batches = list(loader)  # decoded and augmented once, kept in memory for the bare loop
    n = sum(len(y) for _, y in batches)

    torch.manual_seed(0)
    kwargs = parse_model_kwargs(args.model, args.model_kwargs)
    model = create_model(args.model, num_classes=10, dataset=spec, **kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=1e-4)
    bare_loop(model, optimizer, batches[:2])  # warm-up
    ours, bare = [], []
    for r in range(args.rounds):
        seed_epoch(loader, 0, r, ctx)
        ours.append(train_one_epoch(model, loader, optimizer, ctx)["seconds"])
        bare.append(bare_loop(model, optimizer, batches))
    ours_ips, bare_ips = n / min(ours), n / min(bare)
    print(f"model {args.model}  batch {args.batch_size}  {n} real CIFAR-10 images per round, "
          f"{args.workers} workers, {torch.get_num_threads()} threads, best of {args.rounds} rounds")
    print(f"pretrain loop: {ours_ips:8.1f} images/s")
    print(f"bare loop:     {bare_ips:8.1f} images/s")
    print(f"ratio:         {ours_ips / bare_ips:8.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
