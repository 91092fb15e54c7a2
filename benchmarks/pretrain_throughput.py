"""Images/s of the pretrain loop versus a bare ``forward; backward; step`` loop on synthetic
tensors already on the device.

Both run in one process on the same model, batch size, input size, device and precision,
alternating rounds (pretrain, bare, pretrain, bare, ...) so that machine load affects
both alike. The pretrain loop is :func:`wmdd.pretrain.loop.train_one_epoch` fed by the
stage's input pipeline (:func:`wmdd.pretrain.__main__.train_batches`: the split held on
the device, or the DataLoader with JPEG decoding, augmentation and worker processes) over
real CIFAR-10 images; the bare loop runs as many steps on one random batch created on the
device (no input pipeline at all). Targets: ratio >= 0.9 on the CPU (32 px, DataLoader),
>= 0.8 on CUDA (224 px, bf16 autocast, channels_last).

    python -m benchmarks.pretrain_throughput [--model resnet18] [--batch-size 32] [--input-size 32]
        [--images-per-class 64] [--rounds 3] [--device auto] [--amp] [--channels-last]
        [--input-pipeline auto|device|loader] [--dataset cifar10|imagenette] [--data-path DIR]

``--data-path`` is an ImageFolder root of ``--dataset`` (default: a 64-per-class subset of the
full archive, extracted under ``.cache/``). CIFAR-10 resized to 224 px exercises the small-image
augmentation (padded crop) at that size; ``--dataset imagenette`` the random-resized crops of
large images (on the device: cut from the held 256-px centre square by ``roi_align``).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn

from benchmarks.data import cached_dataset
from benchmarks.recover_overhead import sync
from wmdd.data.datasets import get_spec
from wmdd.data.device_split import DeviceSplit
from wmdd.data.folders import load_splits
from wmdd.data.loaders import seed_epoch
from wmdd.models import create_model, parse_model_kwargs
from wmdd.pretrain.__main__ import train_batches
from wmdd.pretrain.loop import train_one_epoch
from wmdd.runtime.distributed import DistContext, resolve_device


def bare_loop(model, optimizer, x: torch.Tensor, y: torch.Tensor, steps: int, amp: bool) -> float:
    """Seconds for ``steps`` forward/backward/step iterations on the device batch ``(x, y)``."""
    model.train()
    sync(x.device)
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(x.device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--model-kwargs", nargs="*", default=[])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--input-size", type=int, default=32, help="image side in pixels (CIFAR-10 resized)")
    p.add_argument("--images-per-class", type=int, default=64, help="train images per class per round")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true", help="bf16 autocast in both loops")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and inputs in both loops")
    p.add_argument("--input-pipeline", default="auto", choices=["auto", "device", "loader"])
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "imagenette"])
    p.add_argument("--data-path", help="ImageFolder root of --dataset (default: the cached subset)")
    args = p.parse_args(argv)
    args.seed = 0

    root = args.data_path or cached_dataset(args.dataset, args.images_per_class, 10)
    spec = get_spec(args.dataset)
    device = resolve_device(args.device)
    ctx = DistContext(0, 1, 0, device)
    train_raw, _ = load_splits(root, train_per_class=args.images_per_class, val_per_class=1)
    batches = train_batches(args, train_raw, spec, args.input_size, ctx)
    steps, n = len(batches), len(train_raw)

    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, dataset=spec, input_size=args.input_size,
                         **parse_model_kwargs(args.model, args.model_kwargs)).to(device)
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(memory_format=memory)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device).contiguous(
        memory_format=memory)
    y = torch.randint(10, (args.batch_size,), device=device)
    bare_loop(model, optimizer, x, y, 2, args.amp)  # warm-up

    def ours_round(r: int) -> float:
        seed_epoch(batches, 0, r, ctx)
        sync(device)
        seconds = train_one_epoch(model, batches, optimizer, ctx, amp=args.amp,
                                  channels_last=args.channels_last)["seconds"]
        sync(device)
        return seconds

    ours, bare = [], []
    for r in range(args.rounds):
        ours.append(ours_round(r))
        bare.append(bare_loop(model, optimizer, x, y, steps, args.amp))
    ours_ips, bare_ips = n / min(ours), steps * args.batch_size / min(bare)
    pipeline = "device split" if isinstance(batches, DeviceSplit) else f"DataLoader, {args.workers} workers"
    print(f"model {args.model}  batch {args.batch_size}  {args.input_size} px  {n} real {args.dataset} images per "
          f"round ({pipeline}), {device}, amp={args.amp}, channels_last={args.channels_last}, "
          f"{torch.get_num_threads()} threads, best of {args.rounds} rounds")
    print(f"pretrain loop: {ours_ips:8.1f} images/s")
    print(f"bare loop:     {bare_ips:8.1f} images/s  (synthetic batch on the device)")
    print(f"ratio:         {ours_ips / bare_ips:8.3f}  (target >= 0.9 on the CPU, >= 0.8 on CUDA)")


if __name__ == "__main__":
    main()
