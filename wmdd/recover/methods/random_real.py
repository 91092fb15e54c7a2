"""The random-real baseline: IPC seeded real images per class, copied unchanged."""

from __future__ import annotations

from wmdd.recover.methods.multiformation import MultiFormation
from wmdd.recover.methods.registry import register_method


@register_method
class RandomReal(MultiFormation):
    """``--method random-real``: the seeded choice of IPC real train images per class
    that ``--init real`` (and DM's initialisation) starts from; no optimisation and
    no teacher. Every results table puts it beside the distilled sets.

    With ``--factor F`` > 1 each stored image holds ``F x F`` downsampled real
    images (IPC x F**2 seeded real images per class): DANCE's starting point, the
    random-real baseline at a multi-formation method's pixel budget."""

    name = "random-real"
    summary = "IPC seeded real images per class, unoptimised (the baseline; --factor F: F x F of them per image)"
    defaults = {"init": "real"}
    optimizes = False
    inits = ("real",)

    def batch_objective(self, classes: list[int], batch: int) -> None:
        return None
