"""Images/s of the train stage's loop versus a bare forward/backward/step loop on the same batches.

Distilled set: a seeded real CIFAR-10 subset (IPC images per class) with soft
labels recorded by ``python -m wmdd.relabel`` from a teacher (a freshly initialised
ResNet-18 unless ``--teacher``). The train loop is :func:`wmdd.train.student.train_epoch`
fed by the stage's DataLoader (``--workers`` processes rebuilding the recorded
crops, flips and CutMix from the PNG/JPEG files, soft-label lookup, sample
weights); the bare loop replays the same views and targets already in memory
(forward, KD loss, backward, step). Rounds alternate. Target: ratio >= 0.85
with 2 workers on CPU.

    python -m benchmarks.train_throughput [--model resnet18] [--ipc 50] [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch

from benchmarks.data import CACHE, REPO, cached_dataset
from wmdd.data.datasets import get_spec
from wmdd.data.folders import list_classes, split_dir
from wmdd.models import create_model
from wmdd.models.teacher import save_teacher
from wmdd.runtime.distributed import DistContext
from wmdd.train.losses import kd_loss
from wmdd.train.student import StudentRun, build_parser, train_epoch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", help="teacher directory (default: a fresh ResNet-18)")
    p.add_argument("--model", default="resnet18", help="student")
    p.add_argument("--ipc", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    root = cached_dataset("cifar10", args.ipc, 10)
    work = CACHE / f"train-throughput-ipc{args.ipc}"
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

    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    targs = build_parser().parse_args(["--images", str(images), "--soft-labels", str(labels), "--data-path",
                                       str(root), "--output-dir", str(work / "unused"), "--model", args.model,
                                       "--epochs", str(args.rounds + 1), "--batch-size", str(args.batch_size),
                                       "--workers", str(args.workers)])
    run = StudentRun(targs, ctx)
    torch.manual_seed(0)
    student = create_model(args.model, num_classes=10, dataset=run.spec, input_size=run.input_size)
    optimizer = torch.optim.AdamW(student.parameters(), lr=0.001, weight_decay=0.01)
    epochs = run.epochs(0)
    _, first = next(epochs)
    memory = [(b["views"], b["targets"]) for b in first]  # epoch 0, decoded once for the bare loop
    n = sum(len(v) for v, _ in memory)

    def bare() -> float:
        student.train()
        start = time.perf_counter()
        for views, targets in memory:
            loss = kd_loss(student(views), targets, targs.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start

    bare()  # warm-up
    ours, theirs = [], []
    for _, batches in epochs:
        ours.append(train_epoch(run, student, batches, optimizer)["seconds"])
        theirs.append(bare())
    print(f"student {args.model}, {n} real CIFAR-10 images (IPC {args.ipc}), batch {args.batch_size}, "
          f"{args.workers} workers, {torch.get_num_threads()} threads, best of {len(ours)} epochs")
    print(f"train loop: {n / min(ours):8.1f} images/s")
    print(f"bare loop:  {n / min(theirs):8.1f} images/s")
    print(f"ratio:      {min(theirs) / min(ours):8.3f}  (target >= 0.85)")


if __name__ == "__main__":
    main()
