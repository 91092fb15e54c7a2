"""The YAML preset that ``wmdd tune`` writes: the base preset with the chosen recipe in the
method's recover sub-section (``recover: {<method>: {lr: ..., iterations: ...}}``), taken by
``wmdd run --config`` and by every stage's ``--config``."""

from __future__ import annotations

from pathlib import Path

import yaml

from wmdd.errors import UserError
from wmdd.io.files import atomic_write_bytes
from wmdd.options.config import STAGES


def load_sectioned(path: str | Path) -> dict:
    """A preset with one section per stage (``pretrain:``, ``recover:``, ...), as a dict.

    Raises:
        UserError: unreadable YAML, not a mapping, or a flat (single-stage) preset.
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read the preset ({exc}); give a YAML file like wmdd/configs/cifar10.yaml") \
            from None
    if not isinstance(data, dict) or not set(data) <= set(STAGES):
        raise UserError(f"{path}: not a preset with one section per stage ({', '.join(STAGES)}); give one like "
                        "wmdd/configs/cifar10.yaml")
    return data


def tuned_preset(base: dict, method: str, params: dict) -> dict:
    """``base`` with ``params`` set in ``recover.<method>`` (other methods' sub-sections, even ones
    that shared a YAML anchor with it, keep their values).

    Args:
        base: a sectioned preset (:func:`load_sectioned`).
        method: the recover method the recipe is for.
        params: recover option ``dest`` -> value, e.g. ``{"lr": 0.1, "iterations": 300}``.
    """
    recover = dict(base.get("recover") or {})
    recover[method] = {**(recover.get(method) or {}), **params}
    return {**base, "recover": recover}


class _PlainDumper(yaml.SafeDumper):
    """Writes a mapping used twice (a YAML anchor in the base preset) out in full both times."""

    def ignore_aliases(self, data) -> bool:
        return True


def write_preset(path: str | Path, preset: dict, comments: list[str]) -> None:
    """Write ``preset`` as YAML to ``path`` (atomically), after ``comments`` as ``#`` lines."""
    header = "".join(f"# {line}\n" for line in comments)
    body = yaml.dump(preset, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False)
    atomic_write_bytes(path, (header + body).encode())
