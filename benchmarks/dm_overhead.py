"""Time per DM / DDM recover iteration versus a bare embedding pass of the same batch.

One DM iteration (:func:`recover.synthesize.synthesize` with
:class:`recover.methods.dm.DM`'s objective) is: re-initialise the network, draw
``batch_real`` real images of each class from the in-memory pool, one shared
DSA draw per class applied to its real and synthetic images, the embedding of
the real batch (no grad) and of the synthetic batch, the per-class loss,
backward to the pixels, the SGD step and the clipping. DDM adds the per-block
feature maps and the style and diversity terms. The bare pass is the same
network, on the same number of real and synthetic images (sampled once, no
augmentation, no re-initialisation): real forward without grad, synthetic
forward, the DM loss and its backward. Rounds alternate so that machine load
affects both alike. Target ratio: <= 1.2.

    python -m benchmarks.dm_overhead [--method dm] [--ipc 10] [--classes 10] [--batch-real 256]
        [--iterations 3] [--rounds 3] [--data-path DIR]

``--data-path`` defaults to the full CIFAR-10 extracted in ``.cache/cifar10``.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.data import cached_dataset
from common.data import image_folder, split_dir
from common.datasets import get_spec
from common.transforms import eval_transform, pixel_bounds
from recover.matching import mean_embedding_loss
from recover.methods import Resources
from recover.options import build_parser, resolve_args
from recover.real_pool import RealPool
from recover.synthesize import SynthesisConfig, synthesize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="dm", choices=["dm", "ddm"])
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch-real", type=int, default=256)
    p.add_argument("--iterations", type=int, default=3, help="iterations per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data-path")
    args = p.parse_args()
    data = args.data_path or str(cached_dataset("cifar10"))
    spec = get_spec("cifar10")
    rargs = build_parser().parse_args(["--method", args.method, "--dataset", "cifar10", "--data-path", data,
                                       "--output-dir", "unused", "--ipc", str(args.ipc), "--workers", "2",
                                       "--batch-real", str(args.batch_real), "--device", "cpu"])
    cls = resolve_args(rargs)
    dataset = image_folder(split_dir(data, "train"), eval_transform(spec, 32))
    device = torch.device("cpu")
    method = cls(Resources(args=rargs, spec=spec, input_size=32, classes=list(dataset.classes), dataset=dataset,
                           device=device))
    classes = list(range(args.classes))
    objective = method.batch_objective(classes, 0)
    pool = RealPool(dataset, classes, spec, 32)
    real = torch.cat([pool.sample(c, args.batch_real) for c in classes])
    x = torch.cat([pool.sample(c, args.ipc) for c in classes])
    sizes = [min(args.batch_real, pool.size(c)) for c in classes]
    low, high = pixel_bounds(spec)
    config = SynthesisConfig(iterations=args.iterations, lr=1.0, optimisation=cls.optimisation(rargs),
                             log_every=10 ** 9)

    def method_round() -> float:
        start = time.perf_counter()
        synthesize(objective, x, low, high, config)
        return (time.perf_counter() - start) / args.iterations

    def bare_round() -> float:
        start = time.perf_counter()
        for _ in range(args.iterations):
            syn = x.clone().requires_grad_(True)
            with torch.no_grad():
                real_emb = method.embed(real).split(sizes)
            syn_emb = method.embed(syn).split(args.ipc)
            sum(mean_embedding_loss(r, s) for r, s in zip(real_emb, syn_emb)).backward()
        return (time.perf_counter() - start) / args.iterations

    method_round(), bare_round()  # warm-up
    ours, bare = [], []
    for _ in range(args.rounds):
        ours.append(method_round())
        bare.append(bare_round())
    print(f"{args.method}: {args.classes} classes x (IPC {args.ipc} synthetic + {args.batch_real} real) images of "
          f"32 px, {rargs.net}, cpu, {torch.get_num_threads()} threads, best of {args.rounds} rounds of "
          f"{args.iterations} iterations")
    print(f"{args.method} iteration:        {min(ours) * 1000:8.1f} ms")
    print(f"bare embedding pass:    {min(bare) * 1000:8.1f} ms")
    print(f"ratio:                  {min(ours) / min(bare):8.3f}  (target <= 1.2)")


if __name__ == "__main__":
    main()
