"""Images/s of the train stage's loop versus a bare forward/backward/step loop on a synthetic batch
already on the device.

Distilled set: a seeded real CIFAR-10 subset (IPC images per class) with soft
labels recorded by ``python -m wmdd.relabel`` from a teacher (a freshly initialised
ResNet-18 unless ``--teacher``). The train loop is :func:`wmdd.train.student.train_epoch`
fed by the stage's DataLoader (``--workers`` processes rebuilding the recorded
crops, flips and CutMix from the PNG/JPEG files, soft-label lookup, sample
weights); the bare loop runs as many steps on one random batch of views and soft targets
created on the device (forward, KD loss, backward, step; no input pipeline), at the same
device, precision and memory format. Rounds alternate. Targets: ratio >= 0.85 with 2
workers on the CPU, >= 0.8 on CUDA (bf16 autocast, channels_last).

    python -m benchmarks.train_throughput [--model resnet18] [--ipc 50] [--workers 2] [--rounds 3]
        [--device auto] [--amp] [--channels-last] [--data-path DIR] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.data import CACHE, REPO, cached_dataset
from benchmarks.recover_overhead import sync
from wmdd.data.datasets import get_spec
from wmdd.data.folders import list_classes, split_dir
from wmdd.models import create_model
from wmdd.models.teacher import save_teacher
from wmdd.runtime.distributed import DistContext, resolve_device
from wmdd.train.losses import kd_loss
from wmdd.train.student import StudentRun, parse_args, train_epoch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", help="teacher directory (default: a fresh ResNet-18)")
    p.add_argument("--model", default="resnet18", help="student")
    p.add_argument("--ipc", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true", help="bf16 autocast in both loops")
    p.add_argument("--channels-last", action="store_true", help="channels_last student and inputs in both loops")
    p.add_argument("--data-path", help="CIFAR-10 ImageFolder root (default: the cached IPC-per-class subset)")
    p.add_argument("--work-dir", help="where the teacher and soft labels go (default: .cache/train-throughput-ipcN)")
    args = p.parse_args()

    root = args.data_path or cached_dataset("cifar10", args.ipc, 10)
    work = Path(args.work_dir) if args.work_dir else CACHE / f"train-throughput-ipc{args.ipc}"
    teacher = args.teacher
    if teacher is None:
        teacher = work / "teacher"
        if not (teacher / "teacher.pt").exists():
            spec = get_spec("cifar10")
            torch.manual_seed(0)
            model = create_model("resnet18", num_classes=10, dataset=spec)
            save_teacher(teacher / "teacher.pt", model=model, name="resnet18", kwargs={},
                         classes=list_classes(split_dir(root, "train")), spec=spec,
                         input_size=32, bn_stats=None, args={}, val=None)
    images = split_dir(root, "train")
    labels = work / "relabel"
    subprocess.run([sys.executable, "-m", "wmdd.relabel", "--teacher", str(teacher), "--images", str(images),
                    "--output-dir", str(labels), "--epochs", str(args.rounds + 1), "--batch-size",
                    str(args.batch_size), "--workers", str(args.workers)], cwd=REPO, check=True)

    device = resolve_device(args.device)
    ctx = DistContext(0, 1, 0, device)
    flags = ["--images", str(images), "--soft-labels", str(labels), "--data-path", str(root), "--output-dir",
             str(work / "unused"), "--model", args.model, "--epochs", str(args.rounds + 1), "--batch-size",
             str(args.batch_size), "--workers", str(args.workers), "--device", device.type,
             "--amp" if args.amp else "--no-amp", "--channels-last" if args.channels_last else "--no-channels-last"]
    targs = parse_args(flags)
    run = StudentRun(targs, ctx)
    torch.manual_seed(0)
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    student = create_model(args.model, num_classes=10, dataset=run.spec, input_size=run.input_size).to(device)
    student.to(memory_format=memory)
    optimizer = torch.optim.AdamW(student.parameters(), lr=0.001, weight_decay=0.01)
    epochs = run.epochs(0)
    _, first = next(epochs)
    n = train_epoch(run, student, first, optimizer)["images"]  # warm-up; the images of one epoch
    steps = math.ceil(n / args.batch_size)
    views = torch.randn(args.batch_size, 3, run.input_size, run.input_size, device=device).contiguous(
        memory_format=memory)
    targets = torch.softmax(torch.randn(args.batch_size, 10, device=device), dim=1)

    def bare() -> float:
        student.train()
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                loss = kd_loss(student(views).float(), targets, targs.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        return time.perf_counter() - start

    bare()  # warm-up
    ours, theirs = [], []
    for _, batches in epochs:
        sync(device)
        ours.append(train_epoch(run, student, batches, optimizer)["seconds"])
        sync(device)
        theirs.append(bare())
    print(f"student {args.model}, {n} real CIFAR-10 images (IPC {args.ipc}), batch {args.batch_size}, "
          f"{run.input_size} px, {device}, amp={args.amp}, channels_last={args.channels_last}, "
          f"{args.workers} workers, {torch.get_num_threads()} threads, best of {len(ours)} epochs")
    print(f"train loop: {n / min(ours):8.1f} images/s")
    ours_ips, bare_ips = n / min(ours), steps * args.batch_size / min(theirs)
    print(f"bare loop:  {bare_ips:8.1f} images/s  (synthetic batch on the device)")
    print(f"ratio:      {ours_ips / bare_ips:8.3f}  (target >= 0.85 on the CPU, >= 0.8 on CUDA)")


if __name__ == "__main__":
    main()
