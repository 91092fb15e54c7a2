"""Range-checked numeric option types: the one place where every stage's numeric
options get their valid range.

Each :class:`Bounded` is an argparse ``type`` (it parses the command-line text and
refuses an out-of-range value with a one-line error naming the option and the
value) and also checks values read from YAML presets
(:func:`wmdd.options.config.config_defaults`), so that ``--lr 0`` and ``lr: 0`` are
refused alike, before a stage writes anything.
"""

from __future__ import annotations

import argparse
import math


def _show(bound: float | None) -> str:
    """A bound as text: whole numbers in full (``2147483647``), others in ``%g`` form."""
    if bound is None:
        return ""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


class Bounded:
    """A numeric option type with an inclusive or exclusive range.

    Args:
        kind: ``int`` or ``float``.
        low, high: bounds (``None``: unbounded on that side).
        low_open, high_open: exclude the bound itself (``> low`` rather than ``>= low``).

    Calling it on command-line text returns the parsed value or raises
    :class:`argparse.ArgumentTypeError` (argparse then prints
    ``argument --lr: ...`` and exits with status 2). :meth:`check` does the same
    for a value already parsed by YAML and raises :class:`ValueError`.
    """

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False):
        if kind not in (int, float):
            raise TypeError(f"Bounded kind must be int or float, got {kind!r}")
        self.kind, self.low, self.high = kind, low, high
        self.low_open, self.high_open = low_open, high_open
        self.__name__ = self.describe()

    def describe(self) -> str:
        """``'a number > 0'``, ``'an integer >= 1'``, ``'a number in [0, 1)'`` and so on."""
        noun = "an integer" if self.kind is int else "a number"
        low, high = _show(self.low), _show(self.high)
        if self.low is not None and self.high is not None:
            return f"{noun} in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {high}"
        return noun

    def contains(self, value: float) -> bool:
        """Whether ``value`` (already of the right kind) lies in the range."""
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def check(self, value: object) -> int | float:
        """``value`` (from YAML: a number, or text such as ``1e-3`` that YAML 1.1 reads as a
        string) as ``kind``, range-checked.

        Raises:
            ValueError: not a number of this kind (``32.5`` for an integer, ``true``,
                ``"thirty-two"``), or out of range; the message says what is expected.
        """
        if isinstance(value, str):
            try:
                return self(value)
            except argparse.ArgumentTypeError as exc:
                raise ValueError(str(exc)) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                self.kind is int and not isinstance(value, int)):
            raise ValueError(f"{value!r} is not {self.describe()}")
        try:
            converted = self.kind(value)
        except OverflowError:
            raise ValueError(f"{value!r} is out of range: expected {self.describe()}") from None
        if not self.contains(converted):
            raise ValueError(f"{value!r} is out of range: expected {self.describe()}")
        return converted

    def __call__(self, text: str) -> int | float:
        try:
            value = self.kind(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.describe()}") from None
        if not self.contains(value):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: expected {self.describe()}")
        return value

    def __repr__(self) -> str:
        return f"Bounded({self.describe()})"


#: Counts of things: epochs, iterations, images, batch sizes, pixels (>= 1).
COUNT = Bounded(int, 1)
#: Zero allowed: DataLoader workers, jitter in pixels.
NON_NEGATIVE_INT = Bounded(int, 0)
#: Random seeds, [0, 2^31 - 1] (what every generator the stages seed accepts).
SEED = Bounded(int, 0, 2**31 - 1)
#: Learning rates, Beta-distribution parameters (> 0).
POSITIVE = Bounded(float, 0, low_open=True)
#: Knowledge-distillation temperatures, >= 0.01: the KD loss is scaled by T^2, which
#: underflows float32 to exactly 0 below about 1e-23 (the student then never learns).
TEMPERATURE = Bounded(float, 0.01)
#: Loss weights and weight decay (>= 0).
NON_NEGATIVE = Bounded(float, 0)
#: Probabilities, [0, 1].
PROBABILITY = Bounded(float, 0, 1)
#: SGD momentum, [0, 1).
MOMENTUM = Bounded(float, 0, 1, high_open=True)
#: Crop scales and fractions of an image or a split, (0, 1].
FRACTION = Bounded(float, 0, 1, low_open=True)
