"""One mechanism for a stage's variants: which option belongs to which variant.

A variant is one choice of a stage (train's ``--protocol fkd|dsa|dance``, its label source, pretrain's
``--experts``). It brings default values for options and owns options that mean nothing elsewhere.
Owned options default to ``None`` in the parser, so an owned option that is set was given by the user
(command line or YAML) or by the chosen variant's defaults; :meth:`VariantRegistry.refuse_foreign`
refuses one that belongs only to other variants. Recover methods use the same rule through their own
registry (:func:`wmdd.recover.methods.registry.resolve_method_args`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from wmdd.errors import UserError


@dataclass(frozen=True)
class Variant:
    """One registered variant.

    Attributes:
        name: its value on the command line (``"dsa"``).
        defaults: ``{dest: value}`` the variant sets unless the command line or YAML gives them.
        options: dests of the options only this variant (and others that list them) accepts.
        help: one line for ``--help`` and docs.
    """

    name: str
    defaults: dict = field(default_factory=dict)
    options: tuple[str, ...] = ()
    help: str = ""


class VariantRegistry:
    """Variants of one option (``flag``, e.g. ``"--protocol"``), in registration order."""

    def __init__(self, flag: str):
        self.flag = flag
        self._variants: dict[str, Variant] = {}

    def register(self, variant: Variant) -> Variant:
        """Add ``variant``; returns it.

        Raises:
            ValueError: a variant of that name is registered already (a programming error).
        """
        if variant.name in self._variants:
            raise ValueError(f"{self.flag} {variant.name} is registered twice")
        self._variants[variant.name] = variant
        return variant

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._variants)

    def __getitem__(self, name: str) -> Variant:
        return self._variants[name]

    def defaults(self) -> dict[str, dict]:
        """``{name: defaults}`` for :func:`wmdd.options.config.parse_with_config`'s ``variant_defaults``."""
        return {name: dict(v.defaults) for name, v in self._variants.items()}

    def owners(self, dest: str) -> list[str]:
        """Names of the variants that own option ``dest`` (empty: every variant accepts it)."""
        return [name for name, v in self._variants.items() if dest in v.options]

    def owner_map(self) -> dict[str, list[str]]:
        """``{dest: owners}`` of every option some variant owns (for
        :func:`wmdd.options.config.parse_with_config`'s ``owners``)."""
        return {d: self.owners(d) for v in self._variants.values() for d in v.options}

    def refuse_foreign(self, args: argparse.Namespace, chosen: str, fix: str = "") -> None:
        """Refuse an option that is set in ``args`` but owned only by variants other than ``chosen``.

        Raises:
            UserError: ``--OPTION is an option of FLAG A, B; drop it`` (plus ``fix``).
        """
        for dest in dict.fromkeys(d for v in self._variants.values() for d in v.options):
            owners = self.owners(dest)
            value = getattr(args, dest, None)
            if chosen not in owners and value is not None and value is not False:
                raise UserError(f"--{dest.replace('_', '-')} is an option of {self.flag} {', '.join(owners)}, not "
                                f"of {self.flag} {chosen}; drop it{fix}")
