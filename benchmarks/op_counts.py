"""Tensor operators one recover iteration dispatches, at 10 and at 100 classes per batch.

On a GPU every operator is at least one kernel launch, so an iteration whose operator
count grows with the number of classes is launch-bound there, whatever its arithmetic.
This is the CPU proxy for that: every ATen operator the iteration dispatches (forward,
backward, optimiser step and clipping; counted by a ``TorchDispatchMode``), for DM, DDM,
DANCE and WMDD recover, at 10 and at 100 classes of IPC 2 (WMDD and DANCE at multi-formation
factor 1, whose decoding is a fixed number of operators anyway, to keep the batches small). A
method whose per-class work is batched has (nearly) the same count at both; target ratio <= 1.10.

    python -m benchmarks.op_counts [--methods wmdd dm ddm dance] [--ipc 2] [--batch-real 4]

prints one line per method, ``METHOD ops@10=N ops@100=M ratio=R``. It needs no data beyond
the test fixture (``tests/data/cifar10-mini.tar.gz``): the 100 classes are the fixture's
10 classes, each repeated 10 times under its own class folder of 8 images (the count does
not depend on the pixels). The networks are freshly initialised (DM's ``convnet_in``; DANCE's experts
and the WMDD teacher are random ``convnet_in`` / ``convnet`` networks with per-class BN
statistics of the fixture images): a count does not depend on the weights either.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader

from wmdd.data.datasets import get_spec
from wmdd.data.folders import image_folder, split_dir
from wmdd.data.prepare import extract
from wmdd.data.transforms import eval_transform, pixel_bounds
from wmdd.models import create_model, penultimate_features
from wmdd.models.bn_stats import compute_bn_statistics
from wmdd.models.experts import Experts
from wmdd.models.teacher import Teacher
from wmdd.options.config import resolve_precision
from wmdd.recover.methods import Resources
from wmdd.recover.options import build_parser, resolve_args
from wmdd.recover.real_pool import RealPool
from wmdd.recover.synthesize import SynthesisConfig, synthesize
from wmdd.runtime.distributed import DistContext

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "cifar10-mini.tar.gz"
METHODS = ("wmdd", "dm", "ddm", "dance")
CLASS_COUNTS = (10, 100)


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators dispatched while active (``counts``: name -> calls)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(run) -> Counter[str]:
    """Operators dispatched by one call of ``run()`` on this thread (CPU tensors: autograd's
    backward runs on the calling thread, so it is counted too)."""
    with OpCounter() as counter:
        run()
    return counter.counts


def many_classes(fixture_root: Path, out: Path, classes: int, per_class: int) -> Path:
    """``out/train/c<k>/``, ``classes`` class folders of ``per_class`` symlinks to the fixture's
    train images of class ``k % 10``: a real-image ImageFolder with any number of classes."""
    sources = sorted((fixture_root / "train").iterdir())
    for k in range(classes):
        folder = out / "train" / f"c{k:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for image in sorted(sources[k % len(sources)].iterdir())[:per_class]:
            (folder / image.name).symlink_to(image)
    return out


def _experts(classes: list[str], spec, size: int) -> Experts:
    """Two random ``convnet_in`` experts (initial and "trained" weights both random)."""
    states = [create_model("convnet_in", num_classes=len(classes), dataset=spec, input_size=size).state_dict()
              for _ in range(4)]
    return Experts(name="convnet_in", kwargs={}, classes=classes, spec=spec, input_size=size, init=states[:2],
                   final=states[2:], val=[{}, {}], path=Path("random"), sha256="")


def _teacher(dataset, classes: list[str], spec, size: int) -> Teacher:
    """A random ``convnet`` (BatchNorm) teacher with exact per-class BN statistics of ``dataset``."""
    model = create_model("convnet", num_classes=len(classes), dataset=spec, input_size=size).eval()
    stats = compute_bn_statistics(model, DataLoader(dataset, batch_size=200), len(classes),
                                  DistContext(0, 1, 0, torch.device("cpu")))
    return Teacher(model=model, name="convnet", kwargs={}, classes=classes, spec=spec, input_size=size,
                   bn_stats=stats, path=Path("random"), sha256="", val=None)


def iteration_ops(method: str, root: Path, ipc: int, batch_real: int) -> int:
    """Operators of one recover iteration of ``method`` on every class of the ImageFolder at
    ``root`` (one class batch), after one warm-up iteration."""
    spec, size = get_spec("cifar10"), 32
    dataset = image_folder(split_dir(root, "train"), eval_transform(spec, size))
    classes = list(dataset.classes)
    flags = ["--method", method, "--dataset", "cifar10", "--data-path", str(root), "--output-dir", "unused",
             "--ipc", str(ipc), "--device", "cpu", "--workers", "0"]
    if method in ("wmdd", "dance"):
        flags += ["--factor", "1"]  # the decoding is a fixed reshape and resize; factor 1 keeps the batch small
    if method == "wmdd":
        flags += ["--teacher", "random"]
    else:
        flags += ["--batch-real", str(batch_real)]
    if method == "dance":
        flags += ["--experts", "random", "--num-experts", "2"]
    args = resolve_precision(build_parser().parse_args(flags))
    cls = resolve_args(args)
    res = Resources(args=args, spec=spec, input_size=size, classes=classes, dataset=dataset,
                    device=torch.device("cpu"))
    batch = list(range(len(classes)))
    per_image = cls.real_per_image(args)
    if method == "dance":
        res.experts = _experts(classes, spec, size)
    if method == "wmdd":
        res.teacher = _teacher(dataset, classes, spec, size)
        with torch.no_grad():
            support = penultimate_features(res.teacher.model, torch.randn(len(classes) * ipc * per_image, 3, size,
                                                                         size)).float()
        res.barycenters = {"support": support.view(len(classes), ipc * per_image, -1)}
    instance = cls(res)
    pool = RealPool(dataset, batch, spec, size)
    start = torch.cat([pool.sample(c, ipc * per_image, torch.Generator().manual_seed(c)) for c in batch])
    init = instance.initial_images(start)
    objective = instance.batch_objective(batch, 0)
    low, high = pixel_bounds(spec)
    config = SynthesisConfig(iterations=1, lr=args.lr, optimisation=cls.optimisation(args), log_every=10 ** 9)
    synthesize(objective, init, low, high, config)  # warm-up
    counts = count_ops(lambda: synthesize(objective, init, low, high, config))
    instance.close()
    return sum(counts.values())


def main(argv: list[str] | None = None) -> dict[str, tuple[int, int]]:
    """Print and return ``{method: (ops at 10 classes, ops at 100 classes)}``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--ipc", type=int, default=2)
    p.add_argument("--batch-real", type=int, default=4, help="real images per class and iteration (DM family)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        fixture = extract(FIXTURE, Path(tmp) / "cifar10")
        roots = {g: many_classes(fixture, Path(tmp) / f"classes{g}", g, 8) for g in CLASS_COUNTS}
        for method in args.methods:
            ops = [iteration_ops(method, roots[g], args.ipc, args.batch_real) for g in CLASS_COUNTS]
            results[method] = tuple(ops)
            print(f"{method} ops@{CLASS_COUNTS[0]}={ops[0]} ops@{CLASS_COUNTS[1]}={ops[1]} ratio={ops[1] / ops[0]:.3f}",
                  flush=True)
    return results


if __name__ == "__main__":
    main()
