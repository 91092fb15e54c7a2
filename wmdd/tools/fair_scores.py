"""``python -m wmdd.tools.fair_scores OUT`` or ``--csv results.csv``: the fair-score table.

``OUT`` holds one directory per distilled set, ``<variant>-ipc<IPC>-s<seed>``, each
with one ``train-<protocol>/results.json`` per evaluation protocol (as written by
``benchmarks/dm_family.sh``); ``--csv`` reads run.sh's ``results.csv`` instead (one
row per experiment, as written by ``benchmarks/distill.sh``; variants as in its
``variant`` column, grouped per dataset). For every variant, protocol, IPC and
student budget the table gives the last-epoch top-1 as mean +- std over seeds,
the number of seeds, and the improvement over ``random-real`` under the same
protocol: the mean +- std over seeds of the paired difference (same seed, same
IPC, same student epochs); ``--baseline`` pairs with another variant instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from wmdd.errors import UserError
from wmdd.io.results_table import read_results_table
from wmdd.options.parsing import StageParser, run_main

RUN = re.compile(r"^(?P<variant>.+)-ipc(?P<ipc>\d+)-s(?P<seed>\d+)$")
BASELINE = "random-real"


def collect(out: Path) -> pd.DataFrame:
    """One row per finished evaluation: variant, ipc, seed, protocol, top1, epochs.

    Raises:
        UserError: ``out`` is not a directory or holds no finished evaluation.
    """
    if not out.is_dir():
        raise UserError(f"{out}: not a directory; pass the benchmark output directory")
    rows = []
    for results in sorted(out.glob("*/train-*/results.json")):
        match = RUN.match(results.parent.parent.name)
        if not match:
            continue
        data = json.loads(results.read_text())
        rows.append({"variant": match["variant"], "ipc": int(match["ipc"]), "seed": int(match["seed"]),
                     "protocol": results.parent.name.removeprefix("train-"), "top1": float(data["top1"]),
                     "epochs": int(data["epochs"])})
    if not rows:
        raise UserError(f"{out}: no <variant>-ipc<N>-s<seed>/train-<protocol>/results.json found")
    return pd.DataFrame(rows)


def from_results_csv(csv: Path) -> pd.DataFrame:
    """The rows of run.sh's ``results.csv`` as :func:`collect` rows, with a ``dataset`` column.

    Raises:
        UserError: the file is missing, unreadable, or lacks the needed columns or finished
            rows (:func:`wmdd.io.results_table.read_results_table`).
    """
    needed = ["dataset", "variant", "ipc", "seed", "protocol", "top1", "epochs"]
    table = read_results_table(csv, needed, ["ipc", "seed", "top1", "epochs"],
                               "pass the results.csv of wmdd run or benchmarks/distill.sh")
    return table[needed].astype({"ipc": int, "seed": int, "epochs": int, "top1": float})


def _keys(runs: pd.DataFrame) -> list[str]:
    """Columns that must agree for two runs to be compared: dataset (when present), protocol,
    IPC and student epochs."""
    return (["dataset"] if "dataset" in runs.columns else []) + ["protocol", "ipc", "epochs"]


def paired_differences(runs: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Each non-baseline run paired with the ``baseline`` run (``random-real`` by default)
    of the same seed and :func:`_keys` (the last such row when there are several).

    Args:
        runs: :func:`collect` or :func:`from_results_csv` rows (``top1`` in percent).
        baseline: the variant every other one is paired with.

    Returns:
        One row per pair: the key columns, ``variant``, ``seed``, ``top1``, ``baseline``
        (the baseline's top-1) and ``difference`` (``top1 - baseline``, points);
        runs without a baseline run are left out.
    """
    keys = _keys(runs) + ["seed"]
    base = runs[runs["variant"] == baseline].drop_duplicates(keys, keep="last")
    base = base[keys + ["top1"]].rename(columns={"top1": "baseline"})
    pairs = runs[runs["variant"] != baseline].merge(base, on=keys, how="inner")
    pairs["difference"] = pairs["top1"] - pairs["baseline"]
    return pairs


def _mean_std(values: pd.Series, signed: bool = False) -> str:
    """``"mean +- std"`` (sample std) with two decimals; one value: ``"mean (1 run)"``, or
    the bare signed mean for differences (``signed``)."""
    mean = f"{values.mean():+.2f}" if signed else f"{values.mean():.2f}"
    if len(values) < 2:
        return mean if signed else f"{mean} (1 run)"
    return f"{mean} +- {values.std(ddof=1):.2f}"


def fair_table(runs: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Per (dataset when present, protocol, ipc, epochs, variant): ``top1`` (mean +- std),
    ``seeds``, ``epochs`` and ``vs <baseline>`` (``vs random real`` by default: mean +- std
    over seeds of :func:`paired_differences`; empty for the baseline itself and without a
    baseline run)."""
    keys = _keys(runs) + ["variant"]
    column = "vs random real" if baseline == BASELINE else f"vs {baseline}"
    diffs = {k: g["difference"] for k, g in paired_differences(runs, baseline).groupby(keys, sort=False)}
    rows = []
    for values, group in runs.groupby(keys, sort=True):
        key = dict(zip(keys, values))
        diff = diffs.get(values)
        rows.append({**{k: v for k, v in key.items() if k not in ("epochs", "variant")}, "variant": key["variant"],
                     "top1": _mean_std(group["top1"]), "seeds": len(group), "epochs": key["epochs"],
                     column: "" if diff is None else _mean_std(diff, signed=True)})
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """``table`` as a Markdown table (header, separator, one line per row)."""
    lines = [list(map(str, table.columns)), ["---"] * len(table.columns)] + table.astype(str).values.tolist()
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def main(argv: list[str] | None = None) -> int:
    p = StageParser(prog="wmdd fair-scores", description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", type=Path, help="benchmark output directory (dm_family.sh layout)")
    p.add_argument("--csv", type=Path, help="run.sh's results.csv instead of a benchmark directory")
    p.add_argument("--baseline",
                   help="variant the others are paired with [random-real]; e.g. random-real-f2, random real at a "
                        "multi-formation method's pixel budget")
    args = p.parse_args(argv)
    if (args.out is None) == (args.csv is None):
        raise UserError("pass either a benchmark output directory or --csv results.csv (one of them)")
    runs = from_results_csv(args.csv) if args.csv else collect(args.out)
    if args.baseline is not None and args.baseline not in set(runs["variant"]):
        raise UserError(f"--baseline {args.baseline}: no such variant among the runs "
                        f"({', '.join(sorted(set(runs['variant'])))})")
    print(markdown(fair_table(runs, args.baseline or BASELINE)))
    return 0


if __name__ == "__main__":
    run_main(main)
