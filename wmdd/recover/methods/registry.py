"""The recover-method registry: a method is one class, registered by name.

A method declares

* its options (:meth:`RecoverMethod.add_arguments`; parser default ``None``,
  the method's value in :attr:`RecoverMethod.defaults`, so that YAML presets
  and the command line override it and another method's option given by
  mistake is refused),
* what it needs (:meth:`RecoverMethod.needs`: a subset of :data:`NEEDS`),
* how it initialises the images of a class batch and its per-iteration loss
  (:meth:`RecoverMethod.batch_objective`), with the optimiser and schedule the
  shared loop (:func:`wmdd.recover.synthesize.synthesize`) should use.

Register with the decorator (timm's ``@register_model`` pattern)::

    @register_method
    class MyMethod(RecoverMethod):
        name = "mine"
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from wmdd.data.datasets import DatasetSpec
from wmdd.errors import UserError

#: What a method may need from the stage.
NEEDS = {
    "teacher": "a pretrained teacher (--teacher)",
    "bn_stats": "the teacher's per-class BatchNorm statistics",
    "barycenters": "per-class Wasserstein barycenters of the teacher's features",
    "real_init": "IPC seeded real images per class (the initial images)",
    "medoid_init": "the real images nearest one-to-one to the barycenter support (the initial images)",
    "real_batches": "a fresh batch of real images of each class every iteration",
    "random_networks": "a freshly initialised network every iteration",
    "experts": "trained expert networks (--experts)",
}

#: ``--init`` values and what each needs: N(0, 1) noise, the seeded real images, or the
#: barycenter medoids (:mod:`wmdd.recover.medoids`).
INITS = {"noise": frozenset(), "real": frozenset({"real_init"}),
         "medoid": frozenset({"medoid_init", "barycenters"})}

#: A per-iteration loss: ``(images [G * ipc, 3, S, S] with grad, iteration) -> (loss, parts)``.
Objective = Callable[[torch.Tensor, int], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


@dataclass
class Resources:
    """What the stage prepared for a method (only what :meth:`RecoverMethod.needs` asked for is set).

    Attributes:
        args: the resolved arguments.
        spec: dataset spec (normalisation, stem).
        input_size: image side in pixels.
        classes: class folder names, class-index order.
        dataset: the real train split (ImageFolder, evaluation transform -> normalised
            ``[3, S, S]`` float32).
        device: where the optimisation runs.
        teacher: :class:`wmdd.models.teacher.Teacher` or ``None``.
        barycenters: the ``barycenters.pt`` dict (``support [K, ipc, D]``, ``weights``) or ``None``.
        experts: :class:`wmdd.models.experts.Experts` (checked against the classes and input size) or ``None``.
    """

    args: argparse.Namespace
    spec: DatasetSpec
    input_size: int
    classes: list[str]
    dataset: Any
    device: torch.device
    teacher: Any = None
    barycenters: dict | None = None
    experts: Any = None


@dataclass(frozen=True)
class Optimisation:
    """How the shared loop optimises the pixels of a method.

    Attributes:
        optimizer: ``"adam"`` (betas 0.5, 0.9; WMDD Tables V-VII, SRe2L) or ``"sgd"``
            (DM family, Zhao & Bilen, WACV 2023).
        momentum: SGD momentum (ignored by Adam).
        schedule: ``"cosine"`` (decay to 0 over the iterations; WMDD Tables V-VII) or
            ``"constant"`` (DM family).

    Every method's pixels are clipped to the valid range after each step: the
    images are stored as 8-bit PNGs, so what is optimised is what is evaluated.
    """

    optimizer: str = "adam"
    momentum: float = 0.0
    schedule: str = "cosine"


class RecoverMethod:
    """Base class of a recover method (see the module docstring).

    Class attributes:
        name: the ``--method`` value.
        summary: one line for ``--help``.
        defaults: value of each option (shared or own) this method uses when the
            command line and the YAML leave it unset.
        optimizes: False for a method that copies its initial images (``--lr`` and
            ``--iterations`` are then unused).
        requires_teacher: the method cannot run without ``--teacher`` (run.sh asks).
        inits: the ``--init`` values (keys of :data:`INITS`) the method accepts.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    optimizes: ClassVar[bool] = True
    requires_teacher: ClassVar[bool] = False
    inits: ClassVar[tuple[str, ...]] = ("noise", "real")

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        """Add this method's own options (``default=None``) to ``group``."""

    @classmethod
    def check(cls, args: argparse.Namespace) -> None:
        """Refuse out-of-range values of this method's options.

        Raises:
            UserError: naming the option, the value and the fix.
        """

    @classmethod
    def needs(cls, args: argparse.Namespace) -> frozenset[str]:
        """What this run of the method needs (keys of :data:`NEEDS`)."""
        return frozenset()

    @classmethod
    def check_resources(cls, res: Resources) -> None:
        """Refuse settings that only the loaded inputs show to be unusable (the input size, the
        experts file); the recover stage calls it before it writes its first file.

        Raises:
            UserError: naming the option, the value and the fix.
        """

    @classmethod
    def optimisation(cls, args: argparse.Namespace) -> Optimisation:
        """Optimiser, schedule and clipping of the shared loop."""
        return Optimisation()

    @classmethod
    def real_per_image(cls, args: argparse.Namespace) -> int:
        """Seeded real images per stored image that ``--init real`` draws (1; with
        multi-formation, :mod:`wmdd.recover.methods.multiformation`: ``factor**2``)."""
        return 1

    def __init__(self, resources: Resources):
        self.res = resources

    def initial_images(self, real: torch.Tensor) -> torch.Tensor:
        """The stored initial images of a class batch from its seeded real images
        ``[G * ipc * real_per_image, 3, S, S]`` (class-major): the real images themselves."""
        return real

    def batch_objective(self, classes: list[int], batch: int) -> Objective | None:
        """The per-iteration loss of the class batch ``classes`` (batch index ``batch``),
        or ``None`` when the method copies its initial images unchanged."""
        raise NotImplementedError

    def manifest_fields(self) -> dict[str, Any]:
        """Resolved settings worth recording in the manifest (e.g. WMDD's jitter)."""
        return {}

    def close(self) -> None:
        """Release hooks or buffers after the last batch."""


_METHODS: dict[str, type[RecoverMethod]] = {}


def register_method(cls: type[RecoverMethod]) -> type[RecoverMethod]:
    """Class decorator: register ``cls`` under ``cls.name``.

    Raises:
        ValueError: the name is empty or already registered (a programming error).
    """
    if not cls.name or cls.name in _METHODS:
        raise ValueError(f"recover method name {cls.name!r} is empty or registered twice")
    _METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)


def get_method(name: str) -> type[RecoverMethod]:
    """The method class registered as ``name``.

    Raises:
        UserError: unknown name (lists the registered ones).
    """
    if name not in _METHODS:
        raise UserError(f"unknown recover method {name!r}: registered methods are {', '.join(method_names())}")
    return _METHODS[name]


def _defining_classes() -> list[type[RecoverMethod]]:
    """Classes (registered methods and their bases) that add options of their own."""
    return sorted({c for m in _METHODS.values() for c in m.__mro__
                   if "add_arguments" in c.__dict__ and c is not RecoverMethod},
                  key=lambda c: (c.name, c.__module__, c.__qualname__))  # base classes share a name


def own_options() -> dict[str, list[str]]:
    """Option ``dest`` -> the methods it applies to (the class that adds it and its subclasses)."""
    owners: dict[str, list[str]] = {}
    for klass in _defining_classes():
        probe = argparse.ArgumentParser(add_help=False)
        klass.add_arguments(probe.add_argument_group())
        users = [n for n, m in sorted(_METHODS.items()) if issubclass(m, klass)]
        for action in probe._actions:
            owners.setdefault(action.dest, []).extend(users)
    return owners


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every registered method's own options to ``parser``, one group per defining class."""
    for klass in _defining_classes():
        users = [n for n, m in sorted(_METHODS.items()) if issubclass(m, klass)]
        klass.add_arguments(parser.add_argument_group(f"options of --method {', '.join(users)}"))


def resolve_method_args(args: argparse.Namespace) -> type[RecoverMethod]:
    """Fill the chosen method's defaults into unset options, refuse other methods'
    options, and run the method's checks.

    Raises:
        UserError: an option of another method was given, ``--init`` is not one of the
            method's :attr:`RecoverMethod.inits`, or :meth:`RecoverMethod.check` failed.
    """
    cls = get_method(args.method)
    for dest, users in own_options().items():
        if cls.name not in users and getattr(args, dest, None) is not None:
            raise UserError(f"--{dest.replace('_', '-')} is an option of --method {', '.join(users)}, "
                            f"not of {cls.name}; drop it")
    for dest, value in cls.defaults.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, value)
    if args.init not in cls.inits:
        raise UserError(f"--init {args.init} does not apply to --method {cls.name} (it accepts "
                        f"{', '.join(cls.inits)}); drop --init or pick one of those")
    cls.check(args)
    return cls
