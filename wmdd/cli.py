"""The ``wmdd`` command: ``wmdd SUBCOMMAND [options]``, the same as ``python -m wmdd SUBCOMMAND``.

Each subcommand is one module's ``main`` (``wmdd recover`` = ``python -m wmdd.recover``), imported
only when it runs, so ``wmdd --help`` answers at once.
"""

from __future__ import annotations

import importlib
import sys

from wmdd import __version__
from wmdd.options.parsing import run_main

#: subcommand -> (module whose ``main(argv)`` runs it, arguments put first, one-line description)
COMMANDS = {
    "pretrain": ("wmdd.pretrain.__main__", [], "stage 1: train a teacher and record its per-class BN statistics"),
    "recover": ("wmdd.recover.__main__", [], "stage 2: synthesise IPC images per class with a registered method"),
    "relabel": ("wmdd.relabel.__main__", [], "stage 3: FKD soft labels of every student epoch's views"),
    "train": ("wmdd.train.__main__", [], "stage 4: train a student on the distilled images, evaluate it"),
    "run": ("wmdd.run", [], "the whole pipeline with WMDD's run.sh flags (-x -y -d -c -p -n -w -b ...)"),
    "tune": ("wmdd.tune.__main__", [], "choose a recover recipe on a split held out from train (Optuna study)"),
    "demo": ("wmdd.run", ["--demo"], "digits: WMDD beside both random-real baselines (about 15 min on 2 CPU cores)"),
    "run-pseudo": ("wmdd.run_pseudo", [], "a student on a full real split with labels from a pseudo-label CSV"),
    "prepare": ("wmdd.data.prepare", [], "datasets as shipped (archives, CIFAR download, Tiny-ImageNet, digits)"),
    "decode": ("wmdd.tools.decode_images", [], "a multi-formation set written out as ordinary images"),
    "fair-scores": ("wmdd.tools.fair_scores", [], "improvement over random real, paired by seed"),
    "summarize": ("wmdd.tools.summarize_run", [], "one run's summary row, or a table against a baseline"),
    "plot": ("wmdd.tools.plot_results", [], "plots of results.csv"),
    "pseudo-labels": ("wmdd.tools.make_pseudo_labels", [], "a pseudo-label CSV from any checkpoint's features"),
}


def usage() -> str:
    """The text of ``wmdd --help``: every subcommand with one line."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, _, text) in COMMANDS.items()]
    return ("usage: wmdd SUBCOMMAND [options]   (wmdd SUBCOMMAND --help for its options)\n\n"
            "Dataset distillation via the Wasserstein metric (WMDD) and the DM family.\n\nsubcommands:\n"
            + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Dispatch to a subcommand's ``main``; exits 0, or 2 with one ``error:`` line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        print(f"wmdd {__version__}")
        sys.exit(0)
    if argv[0] not in COMMANDS:
        print(f"error: unknown subcommand {argv[0]!r}: expected one of {', '.join(COMMANDS)} (see wmdd --help)",
              file=sys.stderr)
        sys.exit(2)
    module, first, _ = COMMANDS[argv[0]]
    run_main(importlib.import_module(module).main, first + argv[1:])
