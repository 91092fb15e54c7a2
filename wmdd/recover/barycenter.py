"""Free-support 2-Wasserstein barycenters of one class's feature cloud
(WMDD Sec. III-C; Cuturi & Doucet 2014, Alg. 2).

For one class with features ``X [N, d]`` (uniform weights ``1/N``) and ``k``
support points, the barycenter minimises

    W2^2(b, Y; a, X) = min_{T in U(b, a)} sum_ij T_ij ||Y_i - X_j||^2

over the support ``Y [k, d]`` (and, with free weights, over ``b``). Solvers:

* :func:`pot_barycenter` -- WMDD's reference path: POT's
  ``ot.lp.free_support_barycenter`` from an unseeded-style random N(0, 1)
  initial support (here drawn from a seeded generator) with uniform weights.
* :func:`exact_barycenter` (default) -- the same alternation (exact OT plan with
  ``ot.emd``, then barycentric update ``Y = diag(1/b) T X``) from a seeded
  k-means++ start and from WMDD's N(0, 1) start, each run to a fixed point; the
  better one wins, so it is never worse than the POT path with the same seed.
* :func:`weighted_barycenter` -- free weights (WMDD's ``--weight-wb``): with one
  input measure the problem is k-means quantisation, support = cluster centres,
  weights = cluster masses (scikit-learn's ``KMeans`` from the balanced barycenter
  and from seeded k-means++ starts, the better one), replacing WMDD's mirror-descent loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ot
from sklearn.cluster import KMeans, kmeans_plusplus

from wmdd.errors import UserError

#: Network-simplex iteration cap for our solver (POT's default 1e5 can stop
#: before optimality on 5,000 x 100 problems).
EMD_MAX_ITER = 10_000_000


@dataclass
class Barycenter:
    """A discrete measure: ``support [k, d]`` float64 and ``weights [k]`` float64 summing to 1,
    with its W2^2 ``objective`` to the class's features and the solver ``iterations``."""

    support: np.ndarray
    weights: np.ndarray
    objective: float
    iterations: int


def w2_squared(features: np.ndarray, support: np.ndarray, weights: np.ndarray | None = None) -> float:
    """W2^2 between the uniform measure on ``features [N, d]`` and ``(support [k, d], weights [k])``:
    the objective the class barycenter minimises (WMDD Sec. III-C, the discrete W2^2 of Cuturi &
    Doucet 2014; no equation number on record). Exact (``ot.emd2`` on squared Euclidean costs),
    inputs cast to float64; uniform ``weights`` when ``None``. Returns a Python float."""
    features, support = np.asarray(features, np.float64), np.asarray(support, np.float64)
    a = np.full(len(features), 1.0 / len(features))
    b = np.full(len(support), 1.0 / len(support)) if weights is None else np.asarray(weights, np.float64)
    return float(ot.emd2(b, a, ot.dist(support, features), numItermax=EMD_MAX_ITER))


def optimal_plan(features: np.ndarray, support: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
    """The transport step of Cuturi & Doucet 2014, Alg. 2: the exact OT plan ``T [k, N]``
    (float64 for float64 inputs) from ``(support [k, d], weights [k])`` to the uniform measure
    on ``features [N, d]`` (``ot.emd``, squared Euclidean costs) and its cost W2^2 (a float)."""
    a = np.full(len(features), 1.0 / len(features))
    cost = ot.dist(support, features)
    plan = ot.emd(weights, a, cost, numItermax=EMD_MAX_ITER)
    return plan, float((plan * cost).sum())


def barycentric_update(features: np.ndarray, support: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One support update of Cuturi & Doucet 2014, Alg. 2 with theta = 1 (the free-support
    barycenter of WMDD Sec. III-C): the optimal plan ``T [k, N]`` from ``support [k, d]`` with
    ``weights [k]`` to ``features [N, d]`` (:func:`optimal_plan`), then ``diag(1 / weights) T features``.

    Returns:
        The new support ``[k, d]`` float64.
    """
    plan, _ = optimal_plan(features, support, weights)
    return (plan @ features) / weights[:, None]


def _check(features: np.ndarray, k: int) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f"features must be a non-empty [N, d] array, got shape {features.shape}")
    if not 1 <= k <= len(features):
        raise UserError(f"{k} support points (IPC) for a class with {len(features)} images: IPC must be "
                        f"between 1 and the number of images of the class")
    return features


def gaussian_init(k: int, dim: int, seed: int) -> np.ndarray:
    """WMDD's initial support (its official code's start for POT; no equation of the paper):
    ``[k, dim]`` float64 draws of N(0, 1), seeded here where the official code is not."""
    return np.random.default_rng(seed).normal(0.0, 1.0, size=(k, dim))


def alternate(features: np.ndarray, support: np.ndarray, weights: np.ndarray, max_iter: int = 100,
              tol: float = 0.0) -> Barycenter:
    """Cuturi & Doucet 2014, Alg. 2 with theta = 1 and the ``weights [k]`` held fixed: alternate
    the exact OT plan and the barycentric update from ``support [k, d]`` towards ``features
    [N, d]`` (float64) until the objective improves by no more than ``tol`` (relative) or
    ``max_iter`` updates; each step cannot raise the objective, and the plan is discrete, so
    it reaches a fixed point. Returns the last accepted :class:`Barycenter`."""
    plan, objective = optimal_plan(features, support, weights)
    it = 0
    for it in range(1, max_iter + 1):
        new_support = (plan @ features) / weights[:, None]
        new_plan, new_objective = optimal_plan(features, new_support, weights)
        if new_objective >= objective:
            break
        improvement = objective - new_objective
        support, plan, objective = new_support, new_plan, new_objective
        if improvement <= tol * objective:
            break
    return Barycenter(support, weights, objective, it)


def exact_barycenter(features: np.ndarray, k: int, *, seed: int = 0, max_iter: int = 100,
                     tol: float = 0.0, n_init: int = 1) -> Barycenter:
    """Uniform-weight free-support barycenter of one class (WMDD Sec. III-C, no equation
    number on record; Cuturi & Doucet 2014, Alg. 2 with theta = 1), best of seeded starts.

    The starts are ``n_init`` k-means++ initialisations (scikit-learn) and
    WMDD's N(0, 1) initialisation (:func:`gaussian_init` with the same seed),
    each refined by :func:`alternate`. Since POT's path is the same alternation
    from the N(0, 1) start, the result is never worse than
    :func:`pot_barycenter` with the same seed; it costs about ``n_init + 1``
    times as much. The k-means++ starts are the toolkit's (WMDD starts from N(0, 1) only).

    Args:
        features: ``[N, d]`` class features (any float dtype; computed in float64).
        k: support points (IPC), ``1 <= k <= N``.
        seed: seed of the initialisations.
        max_iter: alternations per start.
        tol: relative objective improvement under which a start stops.
        n_init: k-means++ starts.

    Returns:
        :class:`Barycenter`: support ``[k, d]`` float64, uniform weights ``[k]``, exact W2^2.

    Raises:
        ValueError: ``features`` is not a non-empty ``[N, d]`` array.
        UserError: ``k`` outside ``[1, N]``.
    """
    features = _check(features, k)
    weights = np.full(k, 1.0 / k)
    rng = np.random.RandomState(seed)
    starts = [kmeans_plusplus(features, k, random_state=rng)[0] for _ in range(n_init)]
    starts.append(gaussian_init(k, features.shape[1], seed))
    return min((alternate(features, s, weights, max_iter, tol) for s in starts), key=lambda b: b.objective)


def pot_barycenter(features: np.ndarray, k: int, *, seed: int = 0, max_iter: int = 100,
                   stop_thr: float = 1e-7) -> Barycenter:
    """WMDD's path (WMDD Sec. III-C; POT's implementation of Cuturi & Doucet 2014, Alg. 2):
    ``ot.lp.free_support_barycenter`` of ``features [N, d]`` from a N(0, 1) initial support
    (seeded here for reproducibility), uniform weights, POT's defaults.

    Returns:
        :class:`Barycenter`: support ``[k, d]`` float64, uniform weights ``[k]``, exact W2^2.

    Raises:
        ValueError: ``features`` is not a non-empty ``[N, d]`` array.
        UserError: ``k`` outside ``[1, N]``.
    """
    features = _check(features, k)
    init = gaussian_init(k, features.shape[1], seed)
    a = np.full(len(features), 1.0 / len(features))
    weights = np.full(k, 1.0 / k)
    support, log = ot.lp.free_support_barycenter([features], [a], init, b=weights, numItermax=max_iter,
                                                 stopThr=stop_thr, log=True)
    support = np.asarray(support)
    return Barycenter(support, weights, w2_squared(features, support, weights),
                      len(log["displacement_square_norms"]))


def _kmeans(features: np.ndarray, k: int, init: np.ndarray | str, n_init: int, seed: int) -> Barycenter:
    """scikit-learn ``KMeans`` (Lloyd's algorithm) from ``init`` (``[k, d]`` centres, or
    ``"k-means++"`` with ``n_init`` seeded starts) as a barycenter with cluster-mass weights."""
    km = KMeans(n_clusters=k, init=init, n_init=n_init, random_state=seed).fit(features)
    weights = np.bincount(km.labels_, minlength=k).astype(np.float64) / len(features)
    return Barycenter(km.cluster_centers_.astype(np.float64), weights, float(km.inertia_) / len(features),
                      int(km.n_iter_))


def weighted_barycenter(features: np.ndarray, k: int, *, seed: int = 0, tol: float = 1e-4,
                        restarts: int = 3) -> Barycenter:
    """Free-weight barycenter (WMDD's ``--weight-wb``; the paper learns the weights with a
    fixed-support mirror-descent step, its appendix Alg. 2, which this replaces) = k-means
    quantisation: support = centres, weights = cluster masses, objective = mean squared
    distance of each feature to its nearest centre (k-means inertia / N), which equals W2^2
    with those weights.

    Lloyd's algorithm stops in local optima, and which start finds the best one depends
    on N / k (``benchmarks/barycenter.py`` on real 2,048-d teacher features): at N of
    about 1,000-5,000 and k = 10-100 (Imagenette, CIFAR-10) Lloyd from one k-means++
    start ends up to 1 % above WMDD's weighted loop, while Lloyd from the balanced
    barycenter is below it; at N = 500 (CIFAR-100, Tiny-ImageNet) and k = 50-100
    Lloyd from the best of 3 k-means++ starts is the lower one, by up to 3.7 %. So
    both candidates are run and the lower objective wins:

    1. the balanced alternation of :func:`alternate` (uniform weights, relative
       tolerance ``tol``) from one seeded k-means++ start, then Lloyd from there (no
       worse than that balanced alternation);
    2. Lloyd from ``restarts`` seeded k-means++ starts (skipped when ``restarts`` is 0).

    Args:
        features: ``[N, d]`` class features (any float dtype; computed in float64).
        k: support points (IPC), ``1 <= k <= N``.
        seed: seed of the k-means++ starts.
        tol: relative objective improvement under which the balanced alternation stops.
        restarts: k-means++ starts of the second candidate.

    Returns:
        The better :class:`Barycenter` (support ``[k, d]`` and weights ``[k]`` float64);
        ``iterations`` counts the alternation and Lloyd steps of the winning candidate.

    Raises:
        ValueError: ``features`` is not a non-empty ``[N, d]`` array.
        UserError: ``k`` outside ``[1, N]``.
    """
    features = _check(features, k)
    start = kmeans_plusplus(features, k, random_state=np.random.RandomState(seed))[0]
    balanced = alternate(features, start, np.full(k, 1.0 / k), tol=tol)
    best = _kmeans(features, k, balanced.support, 1, seed)
    best.iterations += balanced.iterations
    if restarts > 0:
        best = min(best, _kmeans(features, k, "k-means++", restarts, seed), key=lambda b: b.objective)
    return best


SOLVERS = {"exact": exact_barycenter, "pot": pot_barycenter}


def class_barycenter(features: np.ndarray, k: int, *, solver: str = "exact", weighted: bool = False,
                     seed: int = 0) -> Barycenter:
    """The ``k``-point barycenter of one class's ``features [N, d]`` (WMDD Sec. III-C, no
    equation number on record). Dispatch: ``weighted`` -> :func:`weighted_barycenter`, else
    ``SOLVERS[solver]``.

    Raises:
        ValueError: ``features`` is not a non-empty ``[N, d]`` array.
        UserError: unknown solver, or ``k`` outside ``[1, N]``.
    """
    if weighted:
        return weighted_barycenter(features, k, seed=seed)
    if solver not in SOLVERS:
        raise UserError(f"--barycenter-solver {solver!r}: expected {' or '.join(SOLVERS)}")
    return SOLVERS[solver](features, k, seed=seed)
