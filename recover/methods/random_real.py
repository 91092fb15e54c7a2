"""The random-real baseline: IPC seeded real images per class, copied unchanged."""

from __future__ import annotations

from recover.methods.registry import RecoverMethod, register_method


@register_method
class RandomReal(RecoverMethod):
    """``--method random-real``: the seeded choice of IPC real train images per class
    that ``--init real`` (and DM's initialisation) starts from; no optimisation and
    no teacher. Every results table puts it beside the distilled sets."""

    name = "random-real"
    summary = "IPC seeded real images per class, unchanged (the baseline)"
    defaults = {"init": "real"}
    optimizes = False
    inits = ("real",)

    def batch_objective(self, classes: list[int], batch: int) -> None:
        return None
