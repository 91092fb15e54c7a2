"""The barycenter-medoid coreset: per class, the IPC real images whose teacher features
are nearest, one-to-one, to the class's barycenter support points
(:func:`wmdd.recover.medoids.medoid_assignment`), copied unchanged. It is WMDD's
``--init medoid`` starting point without the optimisation, so that a results
table can tell selection from synthesis."""

from __future__ import annotations

import argparse

from wmdd.recover.methods.registry import register_method
from wmdd.recover.methods.wmdd import BarycenterMethod


@register_method
class Medoids(BarycenterMethod):
    """``--method medoids``: the k-medoids coreset in the teacher's feature space that
    ``--init medoid`` starts WMDD and SRe2L from; no optimisation, needs a teacher."""

    name = "medoids"
    summary = "real images nearest one-to-one to the feature barycenter's support, unchanged (selection alone)"
    defaults = {**BarycenterMethod.defaults, "init": "medoid"}
    optimizes = False
    inits = ("medoid",)

    @classmethod
    def needs(cls, args: argparse.Namespace) -> frozenset[str]:
        return frozenset({"teacher", "barycenters"})

    def batch_objective(self, classes: list[int], batch: int) -> None:
        return None
