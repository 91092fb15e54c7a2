"""Pseudo-label CSVs: labels for a full real train split from a file.

Columns ``image_path`` (relative to the dataset root, e.g.
``train/airplane/0001.jpg``, or to the train directory, e.g.
``airplane/0001.jpg``, or absolute inside the root) and
``pseudo_label_class_index`` (integer); other columns are ignored. Strict by
default: every train image needs exactly one row. Row numbers in errors count
data rows from 1 (the header is line 1, so row N is line N + 1).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from wmdd.errors import UserError

log = logging.getLogger("wmdd.train")
REQUIRED = ("image_path", "pseudo_label_class_index")
INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")


@dataclass
class PseudoLabels:
    """Parsed CSV.

    Attributes:
        labels: real path of each matched train image -> pseudo label.
        unmatched: train images (real paths) without a row.
        duplicate_rows: rows repeating an image with the same label (ignored).
    """

    labels: dict[str, int]
    unmatched: list[str]
    duplicate_rows: int


def _resolve(raw: str, root: Path, train_dir: Path) -> list[Path]:
    p = Path(raw)
    if p.is_absolute():
        return [p]
    return [root / p, train_dir / p]


def _delimiter(csv_path: Path) -> str:
    """The delimiter among ``,`` ``;`` and tab that splits the header line (quoted or
    not) into the required columns (``,`` when none does; the missing-column error then shows what was read)."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            header = f.readline()
    except UnicodeDecodeError:
        return ","
    for sep in (",", ";", "\t"):
        if set(REQUIRED) <= {c.strip() for c in next(csv.reader([header.rstrip("\r\n")], delimiter=sep), [])}:
            return sep
    return ","


def parse_pseudo_label_csv(csv_path: str | Path, *, dataset_root: str | Path, train_dir: str | Path,
                           train_images: list[str], num_classes: int, allow_unmatched: bool = False) -> PseudoLabels:
    """Read and validate a pseudo-label CSV against the train split.

    Args:
        csv_path: the CSV.
        dataset_root: real dataset root; every path must resolve inside it.
        train_dir: the train split directory.
        train_images: paths of the train split's images.
        num_classes: labels must lie in ``[0, num_classes)``.
        allow_unmatched: train images without a row are dropped instead of an error.

    Raises:
        UserError: naming the CSV and the row number, for a missing column, an
            empty or non-integer label, a label out of range, a path outside
            the dataset root, a missing file, a file that is not a train image,
            or two rows for one image with different labels; or, unless
            ``allow_unmatched``, for train images without a row.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: pseudo-label CSV not found")
    try:
        table = pd.read_csv(csv_path, sep=_delimiter(csv_path), dtype=str, keep_default_na=False,
                            skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{csv_path}: not a readable CSV ({exc})") from None
    table = table.rename(columns=str.strip).apply(lambda column: column.str.strip())
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise UserError(f"{csv_path}: missing column(s) {', '.join(missing)}; the CSV needs {', '.join(REQUIRED)} "
                        f"(its header was read as the columns {list(table.columns)})")
    root = Path(os.path.realpath(dataset_root))
    train_dir = Path(os.path.realpath(train_dir))
    train_set = {os.path.realpath(p) for p in train_images}
    labels: dict[str, int] = {}
    first_row: dict[str, int] = {}
    duplicates = 0
    for i, (raw_path, raw_label) in enumerate(zip(table["image_path"], table["pseudo_label_class_index"]), start=1):
        where = f"{csv_path}: row {i} (line {i + 1})"
        if not INTEGER.match(raw_label):
            raise UserError(f"{where}: pseudo_label_class_index {raw_label!r} is not an integer")
        label = int(raw_label)
        if not 0 <= label < num_classes:
            raise UserError(f"{where}: pseudo_label_class_index {label} is outside [0, {num_classes})")
        if not raw_path.strip():
            raise UserError(f"{where}: empty image_path")
        candidates = [Path(os.path.realpath(c)) for c in _resolve(raw_path, root, train_dir)]
        inside = [c for c in candidates if c == root or root in c.parents]
        if not inside:
            raise UserError(f"{where}: image_path {raw_path!r} resolves outside the dataset root {root}")
        existing = [c for c in inside if c.is_file()]
        if not existing:
            raise UserError(f"{where}: image_path {raw_path!r} does not exist under {root} or {train_dir}")
        path = str(existing[0])
        if path not in train_set:
            raise UserError(f"{where}: image_path {raw_path!r} is not an image of the train split {train_dir}")
        if path in labels:
            if labels[path] != label:
                raise UserError(f"{where}: image_path {raw_path!r} was labelled {labels[path]} in row "
                                f"{first_row[path]} and {label} here")
            duplicates += 1
            continue
        labels[path], first_row[path] = label, i
    unmatched = sorted(train_set - set(labels))
    if unmatched and not allow_unmatched:
        raise UserError(f"{csv_path}: {len(unmatched)} of {len(train_set)} train images have no row "
                        f"(first: {unmatched[0]}); add rows for them or pass --allow-unmatched")
    return PseudoLabels(labels, unmatched, duplicates)


def summarize(parsed: PseudoLabels, true_labels: dict[str, int], num_classes: int) -> str:
    """Matched/unmatched counts, the label histogram and the agreement with the folder labels."""
    hist = Counter(parsed.labels.values())
    agree = sum(1 for p, y in parsed.labels.items() if true_labels.get(p) == y)
    n = max(1, len(parsed.labels))
    return (f"{len(parsed.labels)} train images matched, {len(parsed.unmatched)} unmatched (dropped), "
            f"{parsed.duplicate_rows} duplicate rows; labels per class "
            f"{[hist.get(c, 0) for c in range(num_classes)]}; agreement with folder labels {100.0 * agree / n:.2f}%")
