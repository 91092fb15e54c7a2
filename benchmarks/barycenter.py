"""Barycenter solvers on real teacher features, side by side in one run.

For each class of a real dataset (teacher penultimate features of every train
image, evaluation transform) and each k (IPC), it measures time and W2^2
objective (``ot.emd2``, the same function for all) of:

* ``pot``: WMDD's unweighted path, POT's ``ot.lp.free_support_barycenter`` from
  an N(0, 1) initial support (:func:`wmdd.recover.barycenter.pot_barycenter`);
* ``exact``: our default (:func:`wmdd.recover.barycenter.exact_barycenter`);
* ``wmdd_weighted``: WMDD's ``--weight-wb`` path, reimplemented here only for
  comparison (:func:`wmdd_weighted_barycenter`);
* ``weighted``: our free-weight mode (:func:`wmdd.recover.barycenter.weighted_barycenter`).

    python -m benchmarks.barycenter --teacher TEACHER_DIR --data-path ROOT [--k 1 10 50 100]
        [--classes N] [--weighted-classes N] [--per-class N] [--out results.csv]

``--per-class N`` keeps a seeded random subset of N features of each class
(e.g. 500, the train images per class of CIFAR-100 and Tiny-ImageNet, where
N / k is small at IPC 50-100).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import ot
import pandas as pd
import torch

from wmdd.data.folders import image_folder, split_dir
from wmdd.data.transforms import eval_transform
from wmdd.models.teacher import load_teacher
from wmdd.recover.barycenter import (
    EMD_MAX_ITER,
    exact_barycenter,
    gaussian_init,
    pot_barycenter,
    w2_squared,
    weighted_barycenter,
)
from wmdd.recover.features import cached_features


def wmdd_weighted_barycenter(features: np.ndarray, k: int, *, seed: int = 0, outer: int = 20, rounds: int = 10,
                             damping: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """WMDD's learned-weight barycenter as described in its appendix (Alg. 2), for comparison:
    from an N(0, 1) support, ``outer`` times: ``rounds`` mirror-descent steps on the weights
    (gradient = the dual potential of the exact OT problem, ``ot.emd`` with ``log=True``;
    step 1 / range of the potential), then one damped free-support step
    ``Y <- (1 - damping) Y + damping diag(1/b) T X``.

    Returns:
        ``(support [k, d], weights [k])``.
    """
    a = np.full(len(features), 1.0 / len(features))
    support = gaussian_init(k, features.shape[1], seed)
    weights = np.full(k, 1.0 / k)
    for _ in range(outer):
        cost = ot.dist(support, features)
        for _ in range(rounds):
            _, log = ot.emd(weights, a, cost, log=True, numItermax=EMD_MAX_ITER)
            potential = log["u"] - log["u"].mean()
            step = 1.0 / max(float(np.ptp(potential)), 1e-12)
            weights = weights * np.exp(-step * potential)
            weights = np.maximum(weights, 1e-12)
            weights /= weights.sum()
        plan = ot.emd(weights, a, cost, numItermax=EMD_MAX_ITER)
        target = (plan @ features) / np.maximum(weights[:, None], 1e-12)
        support = (1 - damping) * support + damping * target
    return support, weights


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--data-path", required=True)
    p.add_argument("--k", type=int, nargs="+", default=[1, 10, 50, 100])
    p.add_argument("--classes", type=int, help="first N classes for pot/exact/weighted (default all)")
    p.add_argument("--weighted-classes", type=int, default=2, help="first N classes for WMDD's weighted loop")
    p.add_argument("--per-class", type=int, help="seeded random subset of N features per class (default all)")
    p.add_argument("--cache", default=".cache/bench-features", help="feature cache directory")
    p.add_argument("--out", help="CSV of every measurement")
    args = p.parse_args()

    teacher = load_teacher(args.teacher)
    dataset = image_folder(split_dir(args.data_path, "train"), eval_transform(teacher.spec, teacher.input_size))
    cache = Path(args.cache) / f"{teacher.sha256[:16]}.pt"
    cache.parent.mkdir(parents=True, exist_ok=True)
    features, labels = cached_features(cache, teacher, dataset, torch.device("cpu"))
    classes = range(args.classes or len(teacher.classes))
    rows = []
    for c in classes:
        x = features[labels == c].double().numpy()
        if args.per_class:
            if args.per_class > len(x):
                raise SystemExit(f"--per-class {args.per_class}: class {c} has only {len(x)} images")
            x = x[np.sort(np.random.default_rng(c).choice(len(x), args.per_class, replace=False))]
        for k in args.k:
            for name, fn in (("pot", lambda: pot_barycenter(x, k, seed=c)),
                             ("exact", lambda: exact_barycenter(x, k, seed=c)),
                             ("weighted", lambda: weighted_barycenter(x, k, seed=c))):
                bary, seconds = timed(fn)
                rows.append({"class": c, "n": len(x), "k": k, "solver": name, "seconds": seconds,
                             "w2": w2_squared(x, bary.support, bary.weights)})
            if c < args.weighted_classes:
                (support, weights), seconds = timed(lambda: wmdd_weighted_barycenter(x, k, seed=c))
                rows.append({"class": c, "n": len(x), "k": k, "solver": "wmdd_weighted", "seconds": seconds,
                             "w2": w2_squared(x, support, weights)})
            done = [r for r in rows if r["class"] == c and r["k"] == k]
            print("  ".join(f"{r['solver']} {r['w2']:.4f} ({r['seconds']:.2f}s)" for r in done),
                  f"<- class {c}, N={len(x)}, k={k}", flush=True)
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    pivot_w2 = table.pivot_table(index=["class", "k"], columns="solver", values="w2")
    pivot_s = table.pivot_table(index="k", columns="solver", values="seconds", aggfunc="mean")
    ratio = (pivot_w2["exact"] / pivot_w2["pot"]).groupby("k").agg(["mean", "min", "max"])
    worse = (pivot_w2["exact"] > pivot_w2["pot"] * (1 + 1e-9)).groupby("k").sum()
    print(f"\n{teacher.spec.name}: {len(classes)} classes, features {features.shape[1]}-d, "
          f"{args.per_class or int(np.mean([int((labels == c).sum()) for c in classes]))} images per class")
    print("mean seconds per class:\n" + pivot_s.round(3).to_string())
    print("W2^2 ratio exact / pot (per class): mean, min, max\n" + ratio.round(4).to_string())
    print("classes where exact is worse than pot:\n" + worse.to_string())
    if "wmdd_weighted" in pivot_w2:
        sub = pivot_w2.dropna(subset=["wmdd_weighted"])
        per_class = pd.DataFrame({"weighted/wmdd_weighted": sub["weighted"] / sub["wmdd_weighted"],
                                  "wmdd_weighted/pot": sub["wmdd_weighted"] / sub["pot"],
                                  "weighted/exact": sub["weighted"] / sub["exact"]})
        print("free weights, W2^2 ratios per class:\n" + per_class.round(4).to_string())
        print("free weights, W2^2 ratios over classes: mean, min, max\n"
              + per_class.groupby("k").agg(["mean", "min", "max"]).round(4).to_string())
        print("classes where weighted is worse than wmdd_weighted:\n"
              + (per_class["weighted/wmdd_weighted"] > 1 + 1e-9).groupby("k").sum().to_string())


if __name__ == "__main__":
    main()
