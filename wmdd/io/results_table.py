"""Reading a results CSV (``wmdd run``'s ``results.csv`` or a benchmark's) for the tools that
score and plot it, with one clear error for every way the file can be unusable."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from wmdd.errors import UserError


def read_results_table(csv: Path, needed: list[str], numeric: list[str], hint: str) -> pd.DataFrame:
    """The rows of ``csv`` with the columns ``needed``, the ``numeric`` ones as numbers.

    Rows whose ``numeric`` values are all present are kept (rows of unfinished runs lack
    them); a value that is present but not a number is an error, not a dropped row.

    Args:
        csv: the results file.
        needed: column names that must exist.
        numeric: columns among ``needed`` that must hold numbers where filled.
        hint: how to produce a good file, appended to "file not found" errors.

    Returns:
        ``csv``'s rows with numeric values, ``numeric`` columns as float64.

    Raises:
        UserError: the file is missing, empty, not parseable as CSV (the parser's line), lacks
            a column, holds no complete row, or holds a non-numeric value (names the row,
            column and value).
    """
    if not csv.is_file():
        raise UserError(f"{csv}: results file not found; {hint}")
    try:
        table = pd.read_csv(csv)
    except pd.errors.EmptyDataError:
        raise UserError(f"{csv}: the file is empty; {hint}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{csv}: not a readable CSV ({str(exc).strip()}); fix that line or {hint}") from None
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise UserError(f"{csv}: needs the columns {needed} (missing: {missing}); {hint}")
    for column in numeric:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() & table[column].notna()
        if bad.any():
            row = int(bad.idxmax())
            raise UserError(f"{csv}: line {row + 2}, column {column}: {table[column][row]!r} is not a number; "
                            "fix or delete that row")
        table[column] = values
    table = table.dropna(subset=numeric)
    if table.empty:
        raise UserError(f"{csv}: no row with {', '.join(numeric)} filled in (no finished run); {hint}")
    return table
