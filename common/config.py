"""Command-line and YAML configuration: CLI > YAML > built-in defaults.

A YAML preset is either flat (``key: value`` for one stage) or has one section
per stage (``pretrain:``, ``recover:``, ``relabel:``, ``train:``); a stage reads
its own section. Keys may use ``-`` or ``_``. An unknown key is an error naming
the file and the key.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from common.errors import UserError
from common.io import atomic_write_bytes
from common.manifest import jsonable

STAGES = ("pretrain", "recover", "relabel", "train")


def stage_parser(stage: str, description: str, *, workers_help: str, channels_last: bool = True
                 ) -> argparse.ArgumentParser:
    """A stage's argument parser with the options every stage shares: ``--config``,
    ``--output-dir``, ``--seed``, ``--device``, ``--workers``, ``--amp`` and (unless
    ``channels_last`` is False) ``--channels-last``."""
    p = argparse.ArgumentParser(prog=f"python -m {stage}", description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML preset (CLI > YAML > defaults), e.g. configs/cifar10.yaml")
    p.add_argument("--output-dir", help="stage output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--workers", type=int, default=2, help=workers_help)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (meant for CUDA)")
    if channels_last:
        p.add_argument("--channels-last", action="store_true", help="channels_last memory format (meant for CUDA)")
    return p


def load_yaml_section(path: str | Path, stage: str) -> dict:
    """The settings for ``stage`` in the YAML file ``path``.

    Raises:
        UserError: missing or unparsable file, or a top-level key that is
            neither a stage section nor (in a flat file) a setting.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of settings at the top level")
    if any(k in STAGES for k in data):
        other = [k for k in data if k not in STAGES]
        if other:
            raise UserError(f"{path}: top-level key {other[0]!r} is not a stage section "
                            f"({', '.join(STAGES)}); move it into a section")
        data = data.get(stage) or {}
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def config_defaults(parser: argparse.ArgumentParser, path: str | Path, stage: str) -> dict:
    """The settings for ``stage`` in the YAML file ``path``, checked against ``parser``.

    Returns:
        ``{dest: value}`` ready for ``parser.set_defaults``.

    Raises:
        UserError: as :func:`load_yaml_section`, or the YAML names a setting the
            parser does not know.
    """
    settings = load_yaml_section(path, stage)
    known = {a.dest for a in parser._actions}
    for key in settings:
        if key not in known or key == "config":
            raise UserError(f"{path}: unknown {stage} setting {key!r}; "
                            f"see `python -m {stage} --help` for the valid options")
    return settings


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None, stage: str) -> argparse.Namespace:
    """Parse ``argv`` with defaults overridden by ``--config FILE.yaml`` when given.

    The parser must define ``--config``. Precedence: command line > YAML > the
    parser's defaults.

    Raises:
        UserError: the YAML names a setting the parser does not know (:func:`config_defaults`).
    """
    pre, _ = parser.parse_known_args(argv)
    if getattr(pre, "config", None):
        parser.set_defaults(**config_defaults(parser, pre.config, stage))
    return parser.parse_args(argv)


def save_resolved_config(args: argparse.Namespace, path: str | Path) -> None:
    """Write the resolved arguments as YAML (atomically)."""
    atomic_write_bytes(path, yaml.safe_dump(jsonable(vars(args)), sort_keys=True).encode())
