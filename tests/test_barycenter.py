"""Barycenter solvers on real teacher features, against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans, kmeans_plusplus

from wmdd.data.folders import image_folder, split_dir
from wmdd.data.transforms import eval_transform
from wmdd.errors import UserError
from wmdd.models.teacher import load_teacher
from wmdd.recover.barycenter import (
    alternate,
    barycentric_update,
    class_barycenter,
    exact_barycenter,
    pot_barycenter,
    w2_squared,
    weighted_barycenter,
)
from wmdd.recover.features import extract_features


@pytest.fixture(scope="module")
def real_features(tiny_teacher, cifar_root):
    """Penultimate features [20, 512] of the 20 real train images of each CIFAR-10 class."""
    teacher = load_teacher(tiny_teacher)
    ds = image_folder(split_dir(cifar_root, "train"), eval_transform(teacher.spec, 32))
    feats, labels = extract_features(teacher, ds, torch.device("cpu"), workers=0, show_progress=False)
    return {c: feats[labels == c].double().numpy() for c in range(10)}


def brute_force_plan(features: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Optimal uniform plan [k, N] by assignment: each support point replicated N/k times."""
    n, k = len(features), len(support)
    reps = n // k
    cost = ((np.repeat(support, reps, axis=0)[:, None, :] - features[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    plan = np.zeros((k, n))
    plan[rows // reps, cols] = 1.0 / n
    return plan


@pytest.mark.parametrize("k", [2, 5])
def test_default_solver_is_never_worse_than_pot_on_real_features(real_features, k):
    for c in range(10):
        ours = exact_barycenter(real_features[c], k, seed=c)
        ref = pot_barycenter(real_features[c], k, seed=c)
        assert ours.objective <= ref.objective * (1 + 1e-9), (c, ours.objective, ref.objective)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_support_is_a_fixed_point_of_the_brute_force_barycentric_update(real_features, k):
    x = real_features[3]
    bary = exact_barycenter(x, k, seed=0, tol=0.0)
    plan = brute_force_plan(x, bary.support)
    updated = (plan @ x) * k
    assert np.allclose(updated, bary.support, rtol=1e-9, atol=1e-9)
    assert np.isclose(bary.objective, (plan * ((bary.support[:, None] - x[None]) ** 2).sum(-1)).sum(), rtol=1e-9)
    assert np.allclose(barycentric_update(x, bary.support, bary.weights), bary.support, atol=1e-9)


def test_w2_squared_matches_assignment_cost(real_features):
    x = real_features[0]
    support = x[:4] + 0.1
    plan = brute_force_plan(x, support)
    cost = (plan * ((support[:, None] - x[None]) ** 2).sum(-1)).sum()
    assert np.isclose(w2_squared(x, support), cost, rtol=1e-10)


# class 7 at k = 5: the k-means++ restarts win; class 9 at k = 5: the balanced start wins
@pytest.mark.parametrize("c", [7, 9])
def test_weighted_barycenter_is_kmeans_and_no_worse_than_either_candidate(real_features, c):
    x = real_features[c]
    for k in (2, 5):
        w = weighted_barycenter(x, k, seed=0)
        assert np.isclose(w.weights.sum(), 1.0) and (w.weights > 0).all()
        nearest = ((x[:, None] - w.support[None]) ** 2).sum(-1)
        assert np.isclose(w.objective, nearest.min(1).mean(), rtol=1e-9)
        assert np.allclose(w.weights, np.bincount(nearest.argmin(1), minlength=k) / len(x))
        assert np.isclose(w2_squared(x, w.support, w.weights), w.objective, rtol=1e-9)
        # a fixed point of Lloyd's algorithm: every centre is the mean of its cluster
        for j in range(k):
            assert np.allclose(w.support[j], x[nearest.argmin(1) == j].mean(0), atol=1e-6)
        start = kmeans_plusplus(x, k, random_state=np.random.RandomState(0))[0]
        balanced = alternate(x, start, np.full(k, 1.0 / k), tol=1e-4)
        assert w.objective <= balanced.objective * (1 + 1e-9)
        restarts = KMeans(n_clusters=k, n_init=3, random_state=0).fit(x).inertia_ / len(x)
        assert w.objective <= restarts * (1 + 1e-9)
        assert w.objective <= weighted_barycenter(x, k, seed=0, restarts=0).objective * (1 + 1e-9)


def test_solvers_are_seeded_and_check_k(real_features):
    x = real_features[1]
    a, b = class_barycenter(x, 3, seed=5), class_barycenter(x, 3, seed=5)
    assert np.array_equal(a.support, b.support)
    with pytest.raises(UserError, match="21 support points .* class with 20 images"):
        class_barycenter(x, 21)
    with pytest.raises(UserError, match="--barycenter-solver 'sinkhorn'"):
        class_barycenter(x, 3, solver="sinkhorn")
