"""Where DDM should read the feature maps: the size of each loss term and of its pixel
gradient, after the instance norm (post-norm) and before it (pre-norm).

For 3 freshly initialised ``convnet_in`` networks, the IPC seeded real images of
each class (the DM/DDM initialisation) are matched against a random real batch
of the same class under one shared DSA draw, as in a DDM iteration at
iteration 0. Printed per feature point: the mean value of L_DM, L_MM and L_CM
(summed over the 10 classes) and the norm of the pixel gradient of
``L_DM + lambda * alpha * L_MM`` and ``L_DM + lambda * L_CM`` at the published
lambda = 1e4, alpha = 1, against L_DM's alone.

    python -m benchmarks.ddm_style_signal [--data-path DIR] [--ipc 10] [--batch-real 32]

``--data-path`` defaults to a cached seeded CIFAR-10 subset (100 train images per class).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.data import cached_dataset
from wmdd.data.datasets import get_spec
from wmdd.data.folders import image_folder, split_dir
from wmdd.data.transforms import eval_transform
from wmdd.recover.batches import real_choice
from wmdd.recover.methods import Resources
from wmdd.recover.methods.dm import reinitialise
from wmdd.recover.options import build_parser, resolve_args
from wmdd.recover.real_pool import RealPool


def measure(data: str, where: str, ipc: int, batch_real: int, networks: int = 3) -> dict:
    """Mean loss terms and gradient norms over ``networks`` random networks."""
    args = build_parser().parse_args(["--method", "ddm", "--dataset", "cifar10", "--data-path", data,
                                      "--output-dir", "unused", "--ipc", str(ipc), "--batch-real", str(batch_real),
                                      "--style-features", where, "--icd-weight", "0"])
    cls = resolve_args(args)
    spec = get_spec("cifar10")
    dataset = image_folder(split_dir(data, "train"), eval_transform(spec, 32))
    method = cls(Resources(args=args, spec=spec, input_size=32, classes=list(dataset.classes), dataset=dataset,
                           device=torch.device("cpu")))
    chosen = real_choice(dataset, ipc, 0)
    init = torch.stack([dataset[i][0] for c in range(10) for i in chosen[c]])
    pool = RealPool(dataset, list(range(10)), spec, 32)
    out: dict[str, list[float]] = {}
    for trial in range(networks):
        for style in ("none", "mm", "cm"):
            method.mm, method.cm = style == "mm", style == "cm"
            torch.manual_seed(trial)
            reinitialise(method.net)
            x = init.clone().requires_grad_(True)
            real, syn, sizes = method.augmented_batches(x, pool, torch.Generator().manual_seed(trial))
            loss, parts = method.match(real, syn, sizes)
            loss.backward()
            out.setdefault(f"grad {style}", []).append(float(x.grad.norm()))
            for key, value in parts.items():
                out.setdefault(key, []).append(float(value))
    return {k: sum(v) / len(v) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-path")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--batch-real", type=int, default=32)
    args = p.parse_args()
    data = args.data_path or str(cached_dataset("cifar10", 100, 10))
    print("| feature point | L_DM | L_MM | L_CM | grad L_DM | grad L_DM + 1e4 L_MM | grad L_DM + 1e4 L_CM |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for where in ("post-norm", "pre-norm"):
        m = measure(data, where, args.ipc, args.batch_real)
        print(f"| {where} | {m['dm']:.1f} | {m['mm']:.3g} | {m['cm']:.3g} | {m['grad none']:.2f} | "
              f"{m['grad mm']:.2f} | {m['grad cm']:.2f} |")


if __name__ == "__main__":
    main()
