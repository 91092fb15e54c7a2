"""Command-line and YAML configuration: CLI > YAML > built-in defaults.

A YAML preset is either flat (``key: value`` for one stage) or has one section
per stage (``pretrain:``, ``recover:``, ``relabel:``, ``train:``); a stage reads
its own section. Keys may use ``-`` or ``_``. An unknown key is an error naming
the file and the key.

A stage whose settings depend on a choice (recover's ``--method``) may hold one
sub-section per choice inside its section::

    recover:
      batch_size: 100          # every method
      wmdd: {lr: 0.25, r_bn: 0.01}
      dm: {lr: 1.0, iterations: 20000}

The sub-section of the chosen value overrides the section's plain keys.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from wmdd.errors import UserError
from wmdd.io.files import atomic_write_bytes
from wmdd.io.manifest import jsonable
from wmdd.options.bounds import NON_NEGATIVE_INT, SEED, Bounded
from wmdd.options.parsing import StageParser
from wmdd.runtime.distributed import resolve_device

STAGES = ("pretrain", "recover", "relabel", "train")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` except for options whose default is ``None`` (unset,
    resolved later, e.g. by the recover method; their help states the value)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def stage_parser(stage: str, description: str, *, workers_help: str, channels_last: bool = True
                 ) -> argparse.ArgumentParser:
    """A stage's argument parser with the options every stage shares: ``--config``,
    ``--output-dir``, ``--seed``, ``--device``, ``--workers``, ``--amp`` and (unless
    ``channels_last`` is False) ``--channels-last``; the last two default to ``None``, which
    :func:`resolve_precision` turns into on with CUDA, off on the CPU."""
    p = StageParser(prog=f"wmdd {stage}", description=description, formatter_class=_HelpFormatter)
    p.add_argument("--config", help="YAML preset (CLI > YAML > defaults), e.g. wmdd/configs/cifar10.yaml")
    p.add_argument("--output-dir", help="stage output directory")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--workers", type=NON_NEGATIVE_INT, default=2, help=workers_help)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction,
                   help="bf16 autocast [on when the stage runs on CUDA, off on the CPU]")
    if channels_last:
        p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                       help="channels_last memory format [on when the stage runs on CUDA, off on the CPU]")
    return p


def resolve_precision(args: argparse.Namespace) -> argparse.Namespace:
    """Set ``--amp`` and ``--channels-last`` where they were left unset: on when ``--device``
    resolves to CUDA, off on the CPU. Called by each stage's ``main`` before it records its
    arguments (never by the parsers, which ``wmdd run`` also calls: asking whether CUDA is
    there initialises it, and the orchestrator must not). Returns ``args``.

    Raises:
        UserError: ``--device cuda`` on a machine without CUDA.
    """
    cuda = resolve_device(args.device).type == "cuda"
    for name in ("amp", "channels_last"):
        if getattr(args, name, False) is None:
            setattr(args, name, cuda)
    return args


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


def add_classes_option(p: argparse.ArgumentParser) -> None:
    """``--classes N|FILE``: train and evaluate on a class subset (:func:`wmdd.data.folders.resolve_classes`)."""
    p.add_argument("--classes", metavar="N|FILE",
                   help="use a class subset: the first N class folders in sorted order, or the class folder names "
                        "listed in FILE (one per line); recorded in the manifest, and every later stage must use "
                        "the same subset [all classes]")


def checked_value(action: argparse.Action, value: object, where: str) -> object:
    """A YAML ``value`` for the option ``action``, checked as the command line would check it:
    a :class:`~wmdd.options.bounds.Bounded` type's kind and range, the option's choices, and
    true/false for a switch.

    Args:
        where: ``"FILE: section setting 'key'"``, put at the front of the message.

    Raises:
        UserError: naming ``where``, the value and what is expected.
    """
    if value is None and action.default is None:
        return None  # YAML null: leave the option unset, as when the key is absent
    if isinstance(action.type, Bounded):
        try:
            return action.type.check(value)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise UserError(f"{where}: {exc}") from None
    if action.choices is not None and value not in action.choices:
        raise UserError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)) \
            and not isinstance(value, bool):
        raise UserError(f"{where}: {value!r} is not true or false")
    return value


def _variant_keys(parser: argparse.ArgumentParser, dest: str | None) -> dict[str, str]:
    """``{YAML key: value}`` of the ``choices`` of the option stored in ``dest`` (the key with
    ``_`` for ``-``, as YAML keys are read); empty when there is none."""
    return {str(c).replace("-", "_"): str(c) for a in parser._actions if dest is not None and a.dest == dest
            for c in a.choices or []}


def config_defaults(parser: argparse.ArgumentParser, path: str | Path, stage: str,
                    variant: str | None = None, chosen: str | None = None, refuse_unmatched: bool = False,
                    owners: dict[str, list[str]] | None = None) -> dict:
    """The settings for ``stage`` in the YAML file ``path``, checked against ``parser``.

    Args:
        variant: ``dest`` of the option whose choices may have sub-sections
            (recover: ``"method"``); ``None`` for none.
        chosen: the value of that option for this run; its sub-section's keys
            override the plain keys. Every sub-section is checked either way.
        refuse_unmatched: refuse a section whose settings are all in sub-sections of other
            values than ``chosen`` (recover: a ``dm:`` sub-section alone under ``--method
            wmdd``, a likely mistake); train's presets hold an ``fkd:`` sub-section alone on
            purpose (the DSA protocols keep their own settings).
        owners: option ``dest`` -> the ``variant`` values that accept it (options missing
            from it apply to every value): a plain setting that ``chosen`` does not accept is
            refused by its YAML key (not blamed on a command-line flag).

    Returns:
        ``{dest: value}`` ready for ``parser.set_defaults``.

    Raises:
        UserError: as :func:`load_yaml_section`, the YAML names a setting the
            parser does not know, a sub-section is not a mapping, a value is
            of the wrong kind or out of range (:func:`checked_value`), or the section
            holds only sub-sections of other ``variant`` values than ``chosen`` (with
            ``refuse_unmatched``).
    """
    settings = load_yaml_section(path, stage)
    known = {a.dest for a in parser._actions}
    sections = {}
    names = _variant_keys(parser, variant)
    for key in list(settings):
        if key in names:
            sections[key] = settings.pop(key) or {}
            if not isinstance(sections[key], dict):
                raise UserError(f"{path}: {stage} sub-section {key!r} must be a mapping of settings")
    for where, items in [(stage, settings)] + [(f"{stage}.{k}", v) for k, v in sections.items()]:
        for key in items:
            if str(key).replace("-", "_") not in known or key == "config":
                raise UserError(f"{path}: unknown {where} setting {key!r}; "
                                f"see `wmdd {stage} --help` for the valid options")
    actions: dict[str, argparse.Action] = {}
    for a in parser._actions:  # of several options sharing a dest (--cos), the one that checks values
        if a.dest not in actions or isinstance(a.type, Bounded) or a.choices is not None:
            actions[a.dest] = a
    for where, items in [(stage, settings)] + [(f"{stage}.{k}", v) for k, v in sections.items()]:
        for key, value in list(items.items()):
            dest = str(key).replace("-", "_")
            items[key] = checked_value(actions[dest], value, f"{path}: {where} setting {key!r}")
    if chosen is not None:
        own = str(chosen).replace("-", "_")
        flag = next((a.option_strings[-1] for a in parser._actions if a.dest == variant), variant)
        for key in settings:
            users = (owners or {}).get(str(key).replace("-", "_"))
            if users and str(chosen) not in users:
                raise UserError(f"{path}: {stage} setting {key!r} is an option of {flag} {', '.join(users)}, not of "
                                f"{flag} {chosen}; move it into a sub-section of one of those, or drop it")
        if refuse_unmatched and sections and not settings and own not in sections:
            raise UserError(f"{path}: the {stage} section holds settings only for {flag} "
                            f"{', '.join(names[k] for k in sections)}, none apply to {flag} {chosen}; add a "
                            f"{chosen!r} sub-section or pick one of those")
        settings.update({str(k).replace("-", "_"): v for k, v in sections.get(own, {}).items()})
    return settings


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None, stage: str,
                      variant: str | None = None, variant_defaults: dict[str, dict] | None = None,
                      refuse_unmatched: bool = False, owners: dict[str, list[str]] | None = None
                      ) -> argparse.Namespace:
    """Parse ``argv`` with defaults overridden by ``--config FILE.yaml`` when given.

    The parser must define ``--config``. Precedence: command line > the YAML
    sub-section of the chosen ``variant`` value > the YAML section >
    ``variant_defaults[chosen]`` (e.g. train's ``--protocol dsa`` settings) > the
    parser's defaults.

    Raises:
        UserError: the YAML names a setting the parser does not know or one that the chosen
            variant does not accept (``owners``), or (with ``refuse_unmatched``) holds settings
            only for other variants (:func:`config_defaults`).
    """
    pre, _ = parser.parse_known_args(argv)
    path = getattr(pre, "config", None)
    plain = config_defaults(parser, path, stage, variant) if path else {}
    parser.set_defaults(**plain)
    chosen = getattr(parser.parse_known_args(argv)[0], variant) if variant else None
    parser.set_defaults(**(variant_defaults or {}).get(chosen, {}))
    if path:
        parser.set_defaults(**config_defaults(parser, path, stage, variant, chosen, refuse_unmatched, owners))
    return parser.parse_args(argv)


def save_resolved_config(args: argparse.Namespace, path: str | Path) -> None:
    """Write the resolved arguments as YAML (atomically)."""
    atomic_write_bytes(path, yaml.safe_dump(jsonable(vars(args)), sort_keys=True).encode())
