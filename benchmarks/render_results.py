"""The accuracy tables of the documentation, rendered from ``benchmarks/results/*.csv``.

Every accuracy quoted in a table of ``README.md``, ``docs/*.md`` and ``benchmarks/RESULTS.md`` has one
source: a per-seed row of a CSV file under ``benchmarks/results/`` (transcribed from the runs that
``benchmarks/RESULTS.md`` records with their commands). This module renders each table declared in
:data:`TABLES` as Markdown, mean +- sample std over seeds and the paired difference to a baseline set by
seed, and keeps the Markdown files in step with the CSVs::

    python -m benchmarks.render_results            # rewrite every marked table in the default files
    python -m benchmarks.render_results --check    # exit 1, naming file and table, where one differs
    python -m benchmarks.render_results --list     # the declared tables and where they appear

A table lives in a Markdown file between two marker comments, each alone on its line; the renderer owns
the lines between them::

    <!-- results:cifar10-ipc10-fkd -->
    | set | ... |
    <!-- /results:cifar10-ipc10-fkd -->

CSV columns (one row per set and seed): ``dataset, ipc, labels`` (``fkd``: the teacher's soft labels on
recorded views; ``dsa``: hard labels under the DSA protocol; ``hard``: hard labels on the FKD views),
``student_epochs, teacher, teacher_top1`` (the teacher that made the set or its labels, blank where none),
``set`` (the method or baseline, as ``benchmarks/distill.sh`` and ``benchmarks/dm_family.sh`` name it,
with a suffix for probes), ``iterations`` (recover iterations, blank without optimisation),
``images_per_class`` (training images per class after decoding), ``seed, top1`` (student top-1 in %, last
epoch, as RESULTS.md prints it, two decimals), ``eval_images`` (the size of the evaluation split: 10,000
CIFAR-10 test images, 3,925 Imagenette val images, 360 digits), ``source`` (the section of
``benchmarks/RESULTS.md``) and ``note``.

Means, standard deviations and paired differences are computed from the per-seed values as printed (two
decimals), so that every rendered table can be checked by hand from its own seed columns. ``eval_images``
serves as a transcription check: a top-1 must be a whole number of correct images over it.

Pure pandas: no torch import, so the check is fast enough for the test suite.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
COLUMNS = ["dataset", "ipc", "labels", "student_epochs", "teacher", "teacher_top1", "set", "iterations",
           "images_per_class", "seed", "top1", "eval_images", "source", "note"]
#: the columns that, with ``seed``, identify one measurement
KEY = ["dataset", "ipc", "labels", "student_epochs", "teacher", "set"]
#: a marked table: the two marker comments, each alone on its line, and the lines between them
MARKER = re.compile(r"^<!-- results:(?P<name>[A-Za-z0-9_.-]+) -->\n(?P<body>(?:.*\n)*?)<!-- /results:(?P=name) -->$",
                    re.MULTILINE)
OPEN_MARKER = re.compile(r"^<!-- results:([A-Za-z0-9_.-]+) -->$", re.MULTILINE)


def default_files(repo: Path = REPO) -> list[Path]:
    """The Markdown files whose marked tables are checked: README, docs/*.md, benchmarks/RESULTS.md."""
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md")), repo / "benchmarks" / "RESULTS.md"]


# --------------------------------------------------------------------------- data


def load_results(folder: Path = RESULTS_DIR) -> pd.DataFrame:
    """Every ``*.csv`` under ``folder`` as one frame (keys as strings, ``top1`` as float).

    Raises:
        ValueError: a file lacks a column, a top-1 is outside [0, 100], or one set has two rows for a seed.
    """
    frames = []
    for path in sorted(folder.glob("*.csv")):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}")
        frame["file"] = path.name
        frames.append(frame)
    if not frames:
        raise ValueError(f"no results CSV files in {folder}")
    data = pd.concat(frames, ignore_index=True)
    data["seed"] = data["seed"].astype(int)
    data["top1"] = data["top1"].astype(float)
    bad = data[(data["top1"] < 0) | (data["top1"] > 100)]
    if len(bad):
        raise ValueError(f"top-1 outside [0, 100]: {bad[['file', 'set', 'seed', 'top1']].to_dict('records')}")
    images = data["eval_images"].astype(int)
    correct = (data["top1"] * images / 100).round()
    exact = correct / images * 100
    bad = data[(exact - data["top1"]).abs() > 0.005 + 1e-9]
    if len(bad):
        raise ValueError("top-1 that is no count of correct images over eval_images: "
                         f"{bad[['file', 'set', 'seed', 'top1', 'eval_images']].to_dict('records')}")
    dup = data[data.duplicated(KEY + ["seed"], keep=False)]
    if len(dup):
        raise ValueError(f"two rows for one set and seed: {dup[['file'] + KEY + ['seed']].to_dict('records')}")
    return data


# --------------------------------------------------------------------------- table declarations


@dataclass(frozen=True)
class Group:
    """A block of columns: one setting (a filter on the CSV rows), its per-seed values, mean +- std and
    the paired differences to baseline sets of the same setting."""

    where: Mapping[str, object]
    title: str = ""
    seeds: bool = False
    mean: bool = True
    vs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    """One set of a table. ``where`` narrows this row's own cells further (e.g. ``labels: hard`` for a
    probe); its baselines are still looked up under the group's filter."""

    set: str
    label: str
    where: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    name: str
    groups: tuple[Group, ...]
    rows: tuple[Row, ...]
    images: bool = False  # a "training images per class" column
    missing: str = ""  # the text of a cell whose set has no run in that group


@dataclass(frozen=True)
class Cell:
    """One setting of a :class:`Target` table: a filter on the CSV rows and the sets it weighs there
    (each row's ``where`` narrows its own cells, e.g. to the teacher that made the set)."""

    title: str
    where: Mapping[str, object]
    sets: tuple[Row, ...]


@dataclass(frozen=True)
class Target:
    """A table with one line per setting: both random baselines, and which sets beat both of them
    (:func:`beats_both`), or, where none does, the nearest."""

    name: str
    cells: tuple[Cell, ...]


#: How a baseline set is named in a column header.
BASELINE_TITLES = {"random-real": "random real", "random-real-f2": "random-real-f2", "dm": "dm",
                   "medoids": "medoids", "medoids-f2": "medoids-f2"}

C10 = {"dataset": "cifar10", "ipc": 10}
C10_FKD3 = {**C10, "labels": "fkd", "student_epochs": 200, "teacher": "convnet-3ep"}
C10_DSA = {**C10, "labels": "dsa", "student_epochs": 100}
#: hard labels on the sets that need no teacher or that the 3-epoch teacher made
C10_DSA3 = {**C10_DSA, "teacher": ("", "convnet-3ep")}
#: soft labels of the first 30-epoch CIFAR-10 teacher build (84.25 %, issue 34)
C10_FKD30 = {**C10, "labels": "fkd", "student_epochs": 200, "teacher": "convnet-30ep"}
#: hard labels with the rebuilt 30-epoch CIFAR-10 teacher (the first build's files were lost)
C10_DSA30R = {**C10_DSA, "teacher": ("", "convnet-30ep-rebuilt")}
#: soft labels of the rebuilt 30-epoch teacher (84.72 %) on the same sets as C10_DSA30R (issue 34)
C10_FKD30R = {**C10, "labels": "fkd", "student_epochs": 200, "teacher": "convnet-30ep-rebuilt"}
C50_FKD3 = {"dataset": "cifar10", "ipc": 50, "labels": "fkd", "student_epochs": 200, "teacher": "convnet-3ep"}
C50_DSA = {"dataset": "cifar10", "ipc": 50, "labels": "dsa", "student_epochs": 100}
#: hard labels at IPC 50 on the sets that need no teacher or that the 3-epoch teacher made
C50_DSA3 = {**C50_DSA, "teacher": ("", "convnet-3ep")}
#: the same with the rebuilt 30-epoch teacher (84.72 %, issue 34)
C50_DSA30R = {**C50_DSA, "teacher": ("", "convnet-30ep-rebuilt")}
NETTE = {"dataset": "imagenette", "ipc": 10}
NETTE_FKD = {**NETTE, "labels": "fkd", "student_epochs": 200, "teacher": "convnet32-20ep-rebuilt"}
#: hard labels on the sets that need no teacher or that the rebuilt 20-epoch teacher made
NETTE_DSA = {**NETTE, "labels": "dsa", "student_epochs": 100, "teacher": ("", "convnet32-20ep-rebuilt")}
#: Imagenette-32 with the converged 60-epoch teacher of benchmarks/teachers.sh (issue 34)
NETTE60 = {**NETTE, "labels": "fkd", "student_epochs": 200, "teacher": "convnet32-60ep"}
#: hard labels on that table's sets (its random-real sets re-measured beside them)
NETTE60_DSA = {**NETTE, "labels": "dsa", "student_epochs": 100, "teacher": "convnet32-60ep"}
DIGITS = {"dataset": "digits", "ipc": 10, "labels": "fkd", "student_epochs": 60, "teacher": "convnet-6ep"}
#: digits with the demo's converged 30-epoch teacher (98.89 %, issue 34)
DIGITS30 = {**DIGITS, "teacher": "convnet-30ep"}
RR, F2 = "random-real", "random-real-f2"

WMDD = Row("wmdd", "`wmdd` (the toolkit's recipe: medoid start, factor 2, 200 iterations)")
WMDD_PAPER = Row("wmdd-paper", "`wmdd-paper`, earlier objective (see above), 200 of its 2,000 iterations")
#: the published recipe at its own budget, with the objective of the authors' code (issue 35)
WMDD_PAPER_2000 = Row("wmdd-paper", "`wmdd-paper` (the published recipe: noise init, lr 0.25, 2,000 iterations)")
MEDOIDS_F2 = Row("medoids-f2", "`medoids --factor 2` (the recipe's start, no optimisation)")
RR_F2 = Row(F2, "`random-real --factor 2`")
#: the hard-label recipe wmdd tune chose for the converged Imagenette-32 teacher (issue 34)
WMDD_TUNED_DSA = Row("wmdd-tuned-dsa", "`wmdd`, hard-label preset of `wmdd tune` (lr 0.018, 68 iterations)")
RANDOM = Row(RR, "random real")
#: the digits preset since 2026-12-08, chosen by wmdd tune on held-out train digits (issue 34)
WMDD_DIGITS_TUNED = Row("wmdd-tuned", "`wmdd`, the digits preset of `wmdd tune` (real start, factor 2, lr 0.0122, "
                        "r_bn 0.0775, 49 iterations)")
#: Imagenette-32's hard-label preset (chosen there by wmdd tune on held-out train images) on CIFAR-10
WMDD_NETTE_DSA = Row("wmdd-nette-preset-dsa", "`wmdd` with Imagenette-32's hard-label preset (lr 0.018, "
                                              "68 iterations; chosen on Imagenette's held-out train images)")
DANCE_R = Row("dance-rebuilt", "`dance` (60 iterations, 5 experts rebuilt 2026-12-03)")
DANCE = Row("dance", "`dance` (60 iterations, 5 experts of 2026-12-02)")
DM = Row("dm", "`dm` (60 iterations)")
#: DANCE on Imagenette-32: its own experts (no teacher under hard labels; the 60-epoch teacher's soft
#: labels under FKD), paired with the random sets of the 60-epoch table
DANCE_NETTE = Row("dance", "`dance` (60 iterations, 5 experts)", where={"teacher": ("", "convnet32-60ep")})
DDM = Row("ddm", "`ddm` (60 iterations)")

_TABLES = [
    # README: the headline, every method of the toolkit beside random real under identical labels
    Table("headline-ipc10", (
        Group({**C10_FKD3}, "CIFAR-10 soft labels", vs=(RR,)),
        Group({**C10_DSA3}, "CIFAR-10 hard labels", vs=(RR,)),
        Group({**NETTE_FKD}, "Imagenette soft labels", vs=(RR,)),
        Group({**NETTE_DSA}, "Imagenette hard labels", vs=(RR,)),
    ), (
        Row("wmdd", "`wmdd` (toolkit recipe)"),
        Row("wmdd-paper", "`wmdd-paper`, earlier objective, 200 of 2,000 iterations"),
        Row("medoids-f2", "`medoids --factor 2`"),
        Row("dance-rebuilt", "`dance`"),
        Row("ddm", "`ddm`"),
        Row("dm", "`dm`"),
        Row(F2, "`random-real --factor 2`"),
        Row(RR, "random real"),
    ), images=True, missing="not run"),
    # CIFAR-10 IPC 10, 3-epoch teacher (70.19 %), soft labels: every set
    Table("cifar10-ipc10-fkd", (Group(C10_FKD3, seeds=True, vs=(RR, F2)),), (
        WMDD, RR_F2, MEDOIDS_F2, Row("medoids", "`medoids` (factor 1)"), WMDD_PAPER, DANCE_R, DM, DDM, RANDOM,
    ), images=True),
    Table("cifar10-ipc10-fkd-recipe", (Group(C10_FKD3, seeds=True, vs=(RR, F2)),), (
        WMDD, RR_F2, MEDOIDS_F2, WMDD_PAPER, RANDOM), images=True),
    Table("cifar10-ipc10-fkd-dm", (Group(C10_FKD3, seeds=True, vs=(RR,)),), (DM, DDM, RANDOM, WMDD)),
    Table("cifar10-ipc10-fkd-medoids", (Group(C10_FKD3, seeds=True, vs=(RR,)),), (
        RANDOM, Row("medoids", "`medoids` (barycenter-medoid coreset)"),
        Row("wmdd-paper-i500", "probe: `wmdd-paper`, 500 iterations (noise init, lr 0.25)"),
        Row("wmdd-paper-i500-medoid-lr0.05", "probe: `wmdd-paper --init medoid --lr 0.05`, 500 iterations"),
    )),
    Table("cifar10-ipc10-fkd-f2", (Group(C10_FKD3, seeds=True, vs=(RR, F2)),), (
        RANDOM, RR_F2, MEDOIDS_F2), images=True),
    # CIFAR-10 IPC 10, hard labels (DSA protocol, 100 epochs)
    Table("cifar10-ipc10-dsa", (Group(C10_DSA3, seeds=True, vs=(RR, F2)),), (
        DANCE, DANCE_R, RR_F2, DDM, DM, WMDD, WMDD_PAPER, RANDOM), images=True),
    Table("cifar10-ipc10-dsa-dm", (Group(C10_DSA3, seeds=True, vs=(RR,)),), (DDM, DM, RANDOM)),
    Table("cifar10-ipc10-ddm-ablation", (Group(C10_DSA3, seeds=True, vs=(RR, "dm")),), (
        Row("ddm-style", "`ddm-style` (style: MM + CM post-norm, no ICD: `--icd-weight 0`)"),
        Row("ddm-icd", "`ddm-icd` (ICD, no style: `--style none`)"),
        Row("ddm-mm-pre", "`ddm-mm-pre` (MM alone on pre-norm maps: `--style mm --style-features pre-norm "
                          "--mm-weight 0.01 --icd-weight 0`)"),
        Row("ddm", "`ddm` (style MM + CM post-norm, ICD 10: the default)"),
        DM, RANDOM)),
    Table("cifar10-ipc10-dsa-dance", (Group(C10_DSA3, seeds=True, vs=(RR, F2)),), (
        DANCE, DDM, DM, RR_F2, RANDOM), images=True),
    Table("cifar10-ipc10-dsa-recipe", (Group(C10_DSA3, seeds=True, vs=(RR, F2)),), (
        DANCE, RR_F2, DDM, DM, WMDD, WMDD_PAPER, RANDOM)),
    Table("cifar10-ipc10-dance-protocols", (
        Group(C10_FKD3, "soft labels (FKD)", seeds=True, vs=(RR, F2)),
        Group(C10_DSA3, "hard labels (DSA)", seeds=True, vs=(RR, F2)),
    ), (DANCE_R, DANCE, WMDD, RR_F2, RANDOM), images=True),
    Table("cifar10-ipc10-dsa-1000", (Group({**C10, "labels": "dsa", "student_epochs": 1000}, seeds=True),), (
        Row(RR, "random real, DSA protocol, 1,000 epochs (one H200)"),)),
    # Imagenette IPC 10 at 32 px, rebuilt teacher (75.21 %)
    Table("imagenette-ipc10-fkd", (Group(NETTE_FKD, seeds=True, vs=(RR, F2)),), (
        WMDD, RR_F2, MEDOIDS_F2, WMDD_PAPER, RANDOM), images=True),
    Table("imagenette-ipc10-dsa", (Group(NETTE_DSA, seeds=True, vs=(RR, F2)),), (
        WMDD, RR_F2, MEDOIDS_F2, WMDD_PAPER, RANDOM), images=True),
    # CIFAR-10 IPC 50, 3-epoch teacher
    Table("cifar10-ipc50-fkd", (Group(C50_FKD3, seeds=True, vs=(RR, F2)),), (
        Row("wmdd", "`wmdd` (the toolkit's recipe)"), RR_F2, RANDOM), images=True),
    Table("cifar10-ipc50-dsa", (Group(C50_DSA3, seeds=True, vs=(RR, F2, "medoids-f2")),), (
        Row("wmdd", "`wmdd` (the toolkit's recipe; the soft-label table's sets)"), RR_F2, MEDOIDS_F2, RANDOM),
        images=True),
    # CIFAR-10 IPC 10, soft labels, the converged 30-epoch teacher (84.25 %, issue 34)
    Table("cifar10-ipc10-teacher30", (
        Group(C10_FKD30, "soft labels (FKD)", seeds=True, vs=(RR, F2)),
        Group({**C10_DSA, "teacher": ("", "convnet-30ep")}, "hard labels (DSA)", seeds=True, vs=(RR, F2)),
    ), (WMDD, RR_F2, RANDOM), images=True, missing="not run"),
    # CIFAR-10 IPC 10, the rebuilt 30-epoch teacher (84.72 %), both label regimes on the same sets (issue 34)
    Table("cifar10-ipc10-teacher30-rebuilt", (
        Group(C10_FKD30R, "soft labels (FKD)", seeds=True, vs=(RR, F2)),
        Group(C10_DSA30R, "hard labels (DSA)", seeds=True, vs=(RR, F2)),
    ), (DANCE_R, WMDD, WMDD_NETTE_DSA, MEDOIDS_F2, WMDD_PAPER_2000, RR_F2, RANDOM), images=True, missing="not run"),
    # CIFAR-10 IPC 50, hard labels, the rebuilt 30-epoch teacher (issue 34)
    Table("cifar10-ipc50-teacher30-rebuilt-dsa", (Group(C50_DSA30R, seeds=True, vs=(RR, F2)),), (
        MEDOIDS_F2, RR_F2, RANDOM), images=True, missing="not run"),
    # Imagenette-32 IPC 10, soft labels, the converged 60-epoch teacher (issue 34)
    Table("imagenette-ipc10-teacher60", (
        Group(NETTE60, "soft labels (FKD)", seeds=True, vs=(RR, F2)),
        Group(NETTE60_DSA, "hard labels (DSA)", seeds=True, vs=(RR, F2)),
    ), (WMDD, WMDD_TUNED_DSA, MEDOIDS_F2, DANCE_NETTE, RR_F2, RANDOM), images=True, missing="not run"),
    # The published recipe at 500 iterations, 15-epoch CIFAR-10 teacher (82.30 %) and the first
    # Imagenette teacher (75.13 %), with the single-seed probes of the same setting
    Table("cifar10-ipc10-teacher15", (Group({**C10, "labels": "fkd", "student_epochs": 200,
                                             "teacher": "convnet-15ep"}, seeds=True, vs=(RR,)),), (
        RANDOM,
        Row("sre2l", "`sre2l` (no barycenter, global BN, CE 1)"),
        Row("wmdd-paper-global-bn", "`wmdd-paper --no-per-class-bn` (run as `-w`)"),
        Row("wmdd-paper", "`wmdd-paper` (run as `-w -n`)"),
        Row("wmdd-paper-rbn1", "probe: `wmdd-paper`, r_bn 1.0"),
        Row("wmdd-paper-no-crop-flip", "probe: `wmdd-paper --no-random-crop --no-flip`"),
        Row("wmdd-paper-i2000", "probe: `wmdd-paper`, 2,000 iterations"),
        Row("wmdd-paper-top3", "probe: `wmdd-paper`, relabel `--top-k 3`"),
        Row("random-real-batch25", "probe: random real, batch 25 (800 student steps)"),
        Row("wmdd-paper-batch25", "probe: `wmdd-paper`, batch 25 (800 student steps)"),
        Row(RR, "probe: random real, hard labels (`--hard-labels`)", where={"labels": "hard"}),
    )),
    Table("cifar10-ipc50-teacher15", (Group({"dataset": "cifar10", "ipc": 50, "labels": "fkd",
                                             "student_epochs": 200, "teacher": "convnet-15ep"},
                                            seeds=True, vs=(RR,)),), (
        RANDOM,
        Row("sre2l", "`sre2l` (no barycenter, global BN, CE 1)"),
        Row("wmdd-paper-global-bn", "`wmdd-paper --no-per-class-bn` (run as `-w`)"),
        Row("wmdd-paper", "`wmdd-paper` (run as `-w -n`)"),
    )),
    Table("imagenette-ipc10-teacher7513", (Group({**NETTE, "labels": "fkd", "student_epochs": 200,
                                                  "teacher": "convnet32-20ep"}, seeds=True, vs=(RR,)),), (
        RANDOM,
        Row("sre2l", "`sre2l` (no barycenter, global BN, CE 1)"),
        Row("wmdd-paper-global-bn", "`wmdd-paper --no-per-class-bn` (run as `-w`)"),
        Row("wmdd-paper", "`wmdd-paper` (run as `-w -n`)"),
        Row("wmdd-paper-rbn0.01", "probe: `wmdd-paper`, r_bn 0.01 instead of 10"),
    )),
    # digits, the demo's teacher and budgets
    Table("digits-ipc10", (Group(DIGITS, seeds=True, vs=(RR, F2)),), (
        RANDOM,
        Row("medoids", "`medoids`"),
        Row("wmdd-paper", "`wmdd-paper` (noise init, lr 0.1)"),
        Row("wmdd-paper-medoid-lr0.1", "`wmdd-paper --init medoid`, lr 0.1"),
        Row("wmdd-paper-medoid-lr0.02", "`wmdd-paper --init medoid`, lr 0.02"),
        Row("wmdd-paper-medoid-lr0.005", "`wmdd-paper --init medoid`, lr 0.005"),
        RR_F2,
        Row("medoids-f2", "`medoids --factor 2`"),
        Row("wmdd", "`wmdd` (medoid start, factor 2, lr 0.005: the digits preset)"),
        Row("wmdd-paper-f2", "probe: `wmdd-paper --factor 2` (noise init, lr 0.1)"),
    ), images=True),
    Table("digits-ipc10-init", (Group(DIGITS, seeds=True, vs=(RR,)),), (
        RANDOM,
        Row("medoids", "`medoids` (barycenter-medoid coreset, no optimisation)"),
        Row("wmdd-paper", "WMDD, noise init, lr 0.1 (then the demo's WMDD, now `wmdd-paper`)"),
        Row("wmdd-paper-medoid-lr0.1", "WMDD, medoid init, lr 0.1"),
        Row("wmdd-paper-medoid-lr0.02", "WMDD, medoid init, lr 0.02"),
        Row("wmdd-paper-medoid-lr0.005", "WMDD, medoid init, lr 0.005"),
    )),
    Table("digits-ipc10-teacher30", (Group(DIGITS30, seeds=True, vs=(RR, F2)),), (
        WMDD_DIGITS_TUNED, Row("wmdd", "`wmdd` (medoid start, factor 2, lr 0.005: the digits preset until 2026-12-08)"),
        RR_F2, RANDOM), images=True),
    Table("digits-ipc10-f2", (Group(DIGITS, seeds=True, vs=(RR, F2)),), (
        RANDOM, RR_F2,
        Row("medoids-f2", "`medoids --factor 2`"),
        Row("wmdd", "WMDD, medoid init, lr 0.005, factor 2 (now `wmdd`)"),
        Row("wmdd-paper-f2", "probe: WMDD, noise init, lr 0.1, factor 2"),
    ), images=True),
]
#: Sets whose rows are seeds of one setting, in the target table's cells.
_C10_FKD3_SETS = (WMDD, MEDOIDS_F2, Row("medoids", "`medoids`"), WMDD_PAPER, Row("dance-rebuilt", "`dance`"), DM, DDM)
_TARGETS = [
    # The question of issue 34: which registered sets beat random real and random-real-f2, paired by seed,
    # by more than the larger standard deviation, in each setting (3 seeds; fewer: not judged)
    Target("target", (
        Cell("CIFAR-10 IPC 10, soft labels", C10_FKD3, _C10_FKD3_SETS),
        Cell("CIFAR-10 IPC 10, soft labels", C10_FKD30, (WMDD,)),
        Cell("CIFAR-10 IPC 10, soft labels", C10_FKD30R, (WMDD, MEDOIDS_F2, WMDD_PAPER_2000)),
        Cell("CIFAR-10 IPC 10, hard labels", C10_DSA, (
            DANCE, DDM, DM, Row("wmdd", WMDD.label, where={"teacher": "convnet-3ep"}),
            Row("wmdd-paper", WMDD_PAPER.label, where={"teacher": "convnet-3ep"}))),
        Cell("CIFAR-10 IPC 10, hard labels", C10_DSA30R, (DANCE_R, WMDD, WMDD_NETTE_DSA, MEDOIDS_F2, WMDD_PAPER_2000)),
        Cell("CIFAR-10 IPC 50, soft labels", C50_FKD3, (WMDD,)),
        Cell("CIFAR-10 IPC 50, hard labels", C50_DSA3, (WMDD, MEDOIDS_F2)),
        Cell("CIFAR-10 IPC 50, hard labels", C50_DSA30R, (MEDOIDS_F2,)),
        Cell("Imagenette-32 IPC 10, soft labels", NETTE_FKD, (WMDD, MEDOIDS_F2, WMDD_PAPER)),
        Cell("Imagenette-32 IPC 10, soft labels", NETTE60, (WMDD, DANCE_NETTE)),
        Cell("Imagenette-32 IPC 10, hard labels", NETTE_DSA, (WMDD, MEDOIDS_F2, WMDD_PAPER)),
        Cell("Imagenette-32 IPC 10, hard labels", NETTE60_DSA, (DANCE_NETTE, WMDD, WMDD_TUNED_DSA, MEDOIDS_F2)),
        Cell("digits IPC 10, soft labels", DIGITS, (
            WMDD, MEDOIDS_F2, Row("medoids", "`medoids`"), WMDD_PAPER)),
        Cell("digits IPC 10 (the demo), soft labels", DIGITS30, (WMDD_DIGITS_TUNED, WMDD)),
    )),
]
TABLES: dict[str, Table | Target] = {t.name: t for t in [*_TABLES, *_TARGETS]}


# --------------------------------------------------------------------------- rendering


def _rows(data: pd.DataFrame, where: Mapping[str, object], set_name: str) -> pd.DataFrame:
    """The CSV rows of ``set_name`` under ``where`` (one setting; empty when the set was not run there). A
    tuple value in ``where`` matches any of its values (e.g. ``teacher: ("", "convnet-3ep")``).

    Raises:
        ValueError: the filter matches rows of several settings (a table declaration too loose).
    """
    mask = data["set"] == set_name
    for column, value in where.items():
        if isinstance(value, tuple):
            mask &= data[column].isin([str(v) for v in value])
        else:
            mask &= data[column] == (value if column in ("seed", "top1") else str(value))
    rows = data[mask]
    settings = rows[KEY].drop_duplicates()
    if len(settings) > 1:
        raise ValueError(f"set {set_name!r} under {dict(where)} matches several settings: "
                         f"{settings.to_dict('records')}")
    return rows


def _select(data: pd.DataFrame, where: Mapping[str, object], set_name: str) -> pd.Series:
    """top-1 by seed of ``set_name`` under ``where`` (empty when the set was not run there)."""
    return _rows(data, where, set_name).set_index("seed")["top1"].sort_index()


def _fmt(value: float) -> str:
    return f"{value:.2f}"


def _summary(values: pd.Series, signed: bool = False) -> str:
    """mean +- sample std over seeds; one seed: the value and its seed."""
    if values.empty:
        return ""
    mean = values.mean()
    sign = "+" if signed and round(mean, 2) != 0 else ""
    mean = 0.0 if round(mean, 2) == 0 else mean  # no "-0.00"
    if len(values) == 1:
        return f"{mean:{sign}.2f} (seed {values.index[0]})"
    return f"{mean:{sign}.2f} +- {values.std(ddof=1):.2f}"


def _paired(values: pd.Series, baseline: pd.Series) -> str:
    """The difference to the baseline by seed (seeds both have), mean +- sample std."""
    common = values.index.intersection(baseline.index)
    return _summary(values[common] - baseline[common], signed=True)


#: Seeds a set and a baseline must share before :func:`beats_both` judges them.
MIN_SEEDS = 3


def margin(values: pd.Series, baseline: pd.Series) -> tuple[float, float] | None:
    """``(mean paired difference, the larger of the two sets' sample std)`` over the seeds both have,
    in points of top-1; ``None`` with fewer than :data:`MIN_SEEDS` shared seeds."""
    common = values.index.intersection(baseline.index)
    if len(common) < MIN_SEEDS:
        return None
    a, b = values[common], baseline[common]
    return float((a - b).mean()), float(max(a.std(ddof=1), b.std(ddof=1)))


def beats_both(values: pd.Series, baselines: Iterable[pd.Series]) -> bool | None:
    """Whether ``values`` beats every baseline, paired by seed, by more than the larger standard
    deviation (:func:`margin`); ``None`` when a pair shares fewer than :data:`MIN_SEEDS` seeds."""
    margins = [margin(values, b) for b in baselines]
    if any(m is None for m in margins):
        return None
    return all(diff > spread for diff, spread in margins)


def _teachers(data: pd.DataFrame, cell: Cell) -> str:
    """The top-1 of the teachers behind a cell's sets (``-`` where no set has one)."""
    tops = set()
    for row in cell.sets:
        tops |= {t for t in _rows(data, {**cell.where, **row.where}, row.set)["teacher_top1"] if t}
    return " / ".join(f"{float(t):.2f} %" for t in sorted(tops, key=float)) or "-"


def render_target(target: Target, data: pd.DataFrame) -> str:
    """The Markdown of a :class:`Target` table: per cell the teacher, both baselines (mean +- std),
    the sets that beat both with their paired differences, else the nearest and by how much it misses."""
    lines = ["| setting | teacher top-1 | random real | random-real-f2 | beats both (vs random real / vs "
             "random-real-f2) | none beats both: nearest |", "|" + " --- |" * 6]
    for cell in target.cells:
        baselines = [_select(data, cell.where, b) for b in (RR, F2)]
        winners, nearest = [], None
        for row in cell.sets:
            values = _select(data, {**cell.where, **row.where}, row.set)
            margins = [margin(values, b) for b in baselines]
            if any(m is None for m in margins):
                continue
            shown = f"{row.label.split(' (')[0]} {' / '.join(_paired(values, b) for b in baselines)}"
            if beats_both(values, baselines):
                winners.append(shown)
            gap = min(diff - spread for diff, spread in margins)
            if nearest is None or gap > nearest[0]:
                nearest = (gap, shown)
        judged = "; ".join(winners) if winners else "none"
        miss = "" if winners else (nearest[1] if nearest else f"fewer than {MIN_SEEDS} seeds")
        lines.append(f"| {cell.title} | {_teachers(data, cell)} | {_summary(baselines[0])} | "
                     f"{_summary(baselines[1])} | {judged} | {miss} |")
    return "\n".join(lines)


def render_table(table: Table | Target | str, data: pd.DataFrame | None = None) -> str:
    """The Markdown of one declared table (header, separator, one line per row; no trailing newline)."""
    table = TABLES[table] if isinstance(table, str) else table
    data = load_results() if data is None else data
    if isinstance(table, Target):
        return render_target(table, data)
    cells: list[list[list[str]]] = []  # per row, per group: the group's cells
    seeds_of: list[list[int]] = []
    for group in table.groups:
        seeds: set[int] = set()
        for row in table.rows:
            seeds |= set(_select(data, {**group.where, **row.where}, row.set).index)
        seeds_of.append(sorted(seeds))
    images: list[str] = []
    for row in table.rows:
        row_cells, row_images = [], ""
        for group, seeds in zip(table.groups, seeds_of):
            where = {**group.where, **row.where}
            values = _select(data, where, row.set)
            group_cells: list[str] = []
            if values.empty:
                width = (len(seeds) if group.seeds else 0) + int(group.mean) + len(group.vs)
                row_cells.append([table.missing] + [""] * (width - 1) if width else [])
                continue
            if not row_images:
                row_images = "/".join(sorted(set(_rows(data, where, row.set)["images_per_class"])))
            if group.seeds:
                group_cells += [_fmt(values[s]) if s in values.index else "" for s in seeds]
            if group.mean:
                group_cells.append(_summary(values))
            for baseline in group.vs:
                group_cells.append("" if baseline == row.set and not row.where
                                   else _paired(values, _select(data, group.where, baseline)))
            row_cells.append(group_cells)
        cells.append(row_cells)
        images.append(row_images)

    header = ["set"] + (["training images per class"] if table.images else [])
    for group, seeds in zip(table.groups, seeds_of):
        titled = bool(group.title)
        if group.seeds:
            names = [f"s{s}" if titled else f"seed {s}" for s in seeds]
            if titled:
                names[0] = f"{group.title} {names[0]}"
            header += names
        if group.mean:
            header.append("mean +- std" if group.seeds or not titled else group.title)
        header += [f"vs {BASELINE_TITLES.get(b, b)}" for b in group.vs]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row, row_cells, row_images in zip(table.rows, cells, images):
        line = [row.label] + ([row_images] if table.images else [])
        for group_cells in row_cells:
            line += group_cells
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- Markdown files


@dataclass(frozen=True)
class Problem:
    path: Path
    table: str
    message: str

    def __str__(self) -> str:
        try:
            shown = Path(self.path).resolve().relative_to(Path.cwd())
        except ValueError:
            shown = self.path
        return f"{shown}: table {self.table!r}: {self.message}"


def _blocks(text: str) -> list[re.Match]:
    return list(MARKER.finditer(text))


def _rendered_block(name: str, data: pd.DataFrame) -> str:
    """The lines a marked table holds between its markers (each ending in a newline)."""
    return render_table(name, data) + "\n"


def check_text(text: str, path: Path, data: pd.DataFrame | None = None) -> list[Problem]:
    """Every marked table of one Markdown text against its rendering; unknown and unclosed markers too."""
    data = load_results() if data is None else data
    problems = []
    closed = {m.start() for m in _blocks(text)}
    for opened in OPEN_MARKER.finditer(text):
        if opened.start() not in closed:
            problems.append(Problem(path, opened.group(1), "marker not closed by <!-- /results:NAME -->"))
    for match in _blocks(text):
        name = match.group("name")
        if name not in TABLES:
            problems.append(Problem(path, name, f"no such table (declared: {', '.join(TABLES)})"))
            continue
        expected = _rendered_block(name, data)
        if match.group("body") != expected:
            held = match.group("body").splitlines()
            want = expected.splitlines()
            first = next((i for i, (a, b) in enumerate(zip(held, want)) if a != b), min(len(held), len(want)))
            line = text.count("\n", 0, match.start("body")) + 1 + first
            if first < len(held) and first < len(want):
                detail = f"line {line} holds {held[first]!r}, the rendering gives {want[first]!r}"
            elif first < len(want):
                detail = f"line {line}: the rendering has {len(want) - first} more line(s), from {want[first]!r}"
            else:
                detail = f"line {line}: {len(held) - first} line(s) more than the rendering, from {held[first]!r}"
            problems.append(Problem(path, name, "differs from its rendering from benchmarks/results/*.csv ("
                                    + detail + "); run python -m benchmarks.render_results"))
    return problems


def check_files(paths: Iterable[Path], data: pd.DataFrame | None = None) -> list[Problem]:
    """:func:`check_text` over files (a missing file is a problem)."""
    data = load_results() if data is None else data
    problems = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            problems.append(Problem(path, "-", "file not found"))
            continue
        problems += check_text(path.read_text(encoding="utf-8"), path, data)
    return problems


def rewrite_text(text: str, data: pd.DataFrame) -> str:
    """The text with every marked table replaced by its rendering (unknown names left alone)."""
    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in TABLES:
            return match.group(0)
        return f"<!-- results:{name} -->\n{_rendered_block(name, data)}<!-- /results:{name} -->"
    return MARKER.sub(replace, text)


def rewrite_files(paths: Iterable[Path], data: pd.DataFrame | None = None) -> list[Path]:
    """Rewrite the marked tables in place; returns the files that changed."""
    data = load_results() if data is None else data
    changed = []
    for path in map(Path, paths):
        text = path.read_text(encoding="utf-8")
        new = rewrite_text(text, data)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


def used_tables(paths: Iterable[Path]) -> dict[str, list[str]]:
    """Table name -> the files that hold it."""
    where: dict[str, list[str]] = {name: [] for name in TABLES}
    for path in map(Path, paths):
        if path.is_file():
            for match in _blocks(path.read_text(encoding="utf-8")):
                where.setdefault(match.group("name"), []).append(str(path))
    return where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.render_results", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path,
                        help="Markdown files [README.md, docs/*.md, benchmarks/RESULTS.md]")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a marked table differs")
    parser.add_argument("--list", action="store_true", help="print every declared table and the files holding it")
    parser.add_argument("--print", metavar="TABLE", help="print one table's Markdown")
    args = parser.parse_args(argv)
    files = args.files or default_files()
    data = load_results()
    if args.print:
        print(render_table(args.print, data))
        return 0
    if args.list:
        for name, holders in used_tables(files).items():
            shown = [str(Path(h).resolve().relative_to(REPO)) if Path(h).resolve().is_relative_to(REPO) else h
                     for h in holders]
            print(f"{name}: {', '.join(shown) if shown else '(not used)'}")
        return 0
    if args.check:
        problems = check_files(files, data)
        for problem in problems:
            print(problem, file=sys.stderr)
        if not problems:
            print(f"{sum(len(v) for v in used_tables(files).values())} marked tables agree with benchmarks/results/")
        return 1 if problems else 0
    for path in rewrite_files(files, data):
        print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
