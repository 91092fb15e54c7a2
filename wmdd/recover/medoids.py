"""Barycenter medoids: the real images nearest, one-to-one, to a class's barycenter support.

For one class with teacher features ``X [N, D]`` and barycenter support
``Y [k, D]`` (WMDD Sec. III-C, :mod:`wmdd.recover.barycenter`), the medoid
assignment is the injective map ``pi: {0..k-1} -> {0..N-1}`` minimising

    sum_i ||Y_i - X_pi(i)||_2      (Euclidean, not squared, distances)

solved exactly by the Hungarian algorithm on the rectangular ``[k, N]`` cost
matrix (``scipy.optimize.linear_sum_assignment``, Crouse 2016). The chosen real
images are a k-medoids coreset of the class in feature space: ``--method
medoids`` copies them, ``--init medoid`` starts WMDD/SRe2L from them.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from wmdd.errors import UserError


def medoid_assignment(features: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Indices of the real features assigned one-to-one to the support points: the toolkit's
    barycenter-medoid selection (no equation of WMDD; the support is WMDD Sec. III-C's
    barycenter), a linear assignment on Euclidean distances solved exactly by
    ``scipy.optimize.linear_sum_assignment`` (Crouse 2016).

    Args:
        features: ``[N, D]`` teacher features of one class's real images (any float
            dtype; computed in float64).
        support: ``[k, D]`` barycenter support points of that class, ``k <= N``.

    Returns:
        ``[k]`` int64 array of distinct row indices into ``features``: entry ``i`` is
        the image assigned to support point ``i``; the sum of the Euclidean distances
        ``||support[i] - features[idx[i]]||`` is minimal over all injective assignments.

    Raises:
        ValueError: ``features`` or ``support`` is not a non-empty 2-D array, or their
            feature dimensions ``D`` differ (a programming error).
        UserError: more support points than images (``k > N``): lower ``--ipc``.
    """
    features = np.asarray(features, dtype=np.float64)
    support = np.asarray(support, dtype=np.float64)
    if features.ndim != 2 or support.ndim != 2 or not len(features) or not len(support):
        raise ValueError(f"features [N, D] and support [k, D] must be non-empty 2-D arrays, got shapes "
                         f"{features.shape} and {support.shape}")
    if features.shape[1] != support.shape[1]:
        raise ValueError(f"feature dimension {features.shape[1]} differs from the support's {support.shape[1]}")
    if len(support) > len(features):
        raise UserError(f"{len(support)} support points (IPC) but only {len(features)} images in the class: a "
                        "one-to-one medoid choice needs IPC <= images per class; lower --ipc")
    rows, cols = linear_sum_assignment(cdist(support, features))
    return cols[np.argsort(rows)].astype(np.int64)
