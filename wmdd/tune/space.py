"""The search space of ``wmdd tune``: which recover options a study varies, over which ranges.

A parameter is written ``NAME=LOW:HIGH`` (floats), ``NAME=LOW:HIGH:log`` (floats, log-uniform),
``NAME=LOW:HIGH:int`` or ``NAME=LOW:HIGH:intlog`` (integers) or ``NAME=A,B,...`` (a choice;
integers stay integers). ``NAME`` is a recover option (``lr``, ``iterations``, ``r_bn``,
``factor``, ``init``, ...). :func:`default_space` centres the ranges on the method's resolved
values (its defaults, then the preset's), so the same command tunes any registered method.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from wmdd.errors import UserError

#: The parameters :func:`default_space` searches when the method has them.
TUNABLE = ("lr", "iterations", "r_bn", "factor", "init")
KINDS = ("float", "log", "int", "intlog")


@dataclass(frozen=True)
class Param:
    """One searched recover option.

    Attributes:
        name: the option's ``dest`` (``r_bn`` for ``--r-bn``).
        kind: ``float``, ``log``, ``int``, ``intlog`` (a range) or ``choice``.
        low, high: the range's ends (inclusive; unused for ``choice``).
        choices: the values of a ``choice``.
    """

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()

    @property
    def flag(self) -> str:
        """The recover option, e.g. ``--r-bn``."""
        return "--" + self.name.replace("_", "-")

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution the sampler draws this parameter from."""
        if self.kind == "choice":
            return CategoricalDistribution(self.choices)
        if self.kind in ("int", "intlog"):
            return IntDistribution(int(self.low), int(self.high), log=self.kind == "intlog")
        return FloatDistribution(self.low, self.high, log=self.kind == "log")

    def corners(self) -> list:
        """The values that bound what a trial may be given (both ends, or every choice): each is
        checked by the recover parser before the study starts."""
        if self.kind == "choice":
            return list(self.choices)
        distribution = self.distribution()
        return [distribution.low, distribution.high]

    def contains(self, value) -> bool:
        """Whether a trial may be given ``value`` (one of the choices, or inside the range; an
        integer for an integer range)."""
        if self.kind == "choice":
            return value in self.choices
        if self.kind in ("int", "intlog") and value != int(value):
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        """``NAME=...`` as :func:`parse_param` reads it."""
        if self.kind == "choice":
            return f"{self.name}={','.join(map(str, self.choices))}"
        fmt = (lambda v: str(int(v))) if self.kind in ("int", "intlog") else (lambda v: f"{v:g}")
        return f"{self.name}={fmt(self.low)}:{fmt(self.high)}:{self.kind}"


def _number(text: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--space {spec}: {text!r} is not a number; write NAME=LOW:HIGH[:log|int|intlog] or "
                        "NAME=A,B,...") from None


def _choice(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def parse_param(spec: str) -> Param:
    """One ``--space`` value as a :class:`Param`.

    Raises:
        UserError: no ``=``, an unknown kind, a bound that is not a number, ``LOW > HIGH``, a log range
            that is not positive, or a non-integer bound of an integer range.
    """
    name, sep, body = spec.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name or not body:
        raise UserError(f"--space {spec}: write NAME=LOW:HIGH[:log|int|intlog] or NAME=A,B,... (e.g. lr=0.01:0.5:log)")
    if ":" not in body:
        choices = tuple(_choice(c.strip()) for c in body.split(",") if c.strip())
        if len(set(choices)) != len(choices) or not choices:
            raise UserError(f"--space {spec}: give distinct, non-empty choices, e.g. factor=1,2")
        return Param(name, "choice", choices=choices)
    parts = body.split(":")
    kind = parts[2] if len(parts) == 3 else "float"
    if len(parts) not in (2, 3) or kind not in KINDS:
        raise UserError(f"--space {spec}: a range is LOW:HIGH or LOW:HIGH:KIND with KIND one of {', '.join(KINDS)}")
    low, high = _number(parts[0], spec), _number(parts[1], spec)
    if low > high:
        raise UserError(f"--space {spec}: LOW {low:g} is above HIGH {high:g}; swap them")
    if kind in ("log", "intlog") and low <= 0:
        raise UserError(f"--space {spec}: a log range needs LOW > 0, got {low:g}")
    if kind in ("int", "intlog") and (low != int(low) or high != int(high)):
        raise UserError(f"--space {spec}: an integer range needs integer bounds")
    return Param(name, kind, low, high)


def default_space(resolved: argparse.Namespace, inits: tuple[str, ...], owned: set[str]) -> dict[str, Param]:
    """The default search around a method's resolved recipe ``resolved`` (recover's parsed
    arguments): ``lr`` log-uniform over [value / 5, value x 5]; ``iterations`` log-uniform integers
    over [value / 4, value x 2]; ``r_bn`` log-uniform over [value / 10, value x 10] when the method
    has a BN term (and it is not 0); ``factor`` in {1, 2} when the method offers multi-formation;
    ``init`` over the method's ``inits`` when it accepts more than one.

    Args:
        resolved: recover's arguments after the method's defaults and the preset were applied.
        inits: the method's accepted ``--init`` values.
        owned: the method's own option names (``r_bn``, ``factor``, ...).

    Returns:
        Name -> :class:`Param`, in the order of :data:`TUNABLE`.
    """
    space = {}
    lr, iterations = resolved.lr, resolved.iterations
    space["lr"] = Param("lr", "log", lr / 5, lr * 5)
    space["iterations"] = Param("iterations", "intlog", max(1, iterations // 4), max(2, iterations * 2))
    if "r_bn" in owned and getattr(resolved, "r_bn", None):
        space["r_bn"] = Param("r_bn", "log", resolved.r_bn / 10, resolved.r_bn * 10)
    if "factor" in owned:
        space["factor"] = Param("factor", "choice", choices=(1, 2))
    if len(inits) > 1:
        space["init"] = Param("init", "choice", choices=tuple(inits))
    return space


def recipe_values(resolved: argparse.Namespace, space: dict[str, Param]) -> dict | None:
    """The method's own recipe as a trial: the resolved value of every searched parameter
    (``factor`` unset = 1), or ``None`` when one of them lies outside its range (a ``--space``
    that excludes the recipe as it stands)."""
    values = {}
    for name, param in space.items():
        value = getattr(resolved, name, None)
        if name == "factor" and value is None:
            value = 1
        if value is None or not param.contains(value):
            return None
        values[name] = int(value) if param.kind in ("int", "intlog") else value
    return values


def trial_argv(params: dict) -> list[str]:
    """The recover options of one trial's values: ``{"lr": 0.1, "factor": 2}`` ->
    ``["--lr", "0.1", "--factor", "2"]``."""
    argv = []
    for name, value in params.items():
        argv += ["--" + name.replace("_", "-"), repr(value) if isinstance(value, float) else str(value)]
    return argv
