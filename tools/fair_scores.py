"""``python -m tools.fair_scores OUT``: the fair-score table of a benchmark directory.

``OUT`` holds one directory per distilled set, ``<variant>-ipc<IPC>-s<seed>``, each
with one ``train-<protocol>/results.json`` per evaluation protocol (as written by
``benchmarks/dm_family.sh``). For every variant, protocol and IPC the table gives
the last-epoch top-1 as mean +- std over seeds, the number of seeds, and the
improvement over ``random-real`` under the same protocol: the mean +- std over
seeds of the paired difference (same seed, same IPC, same student budget).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd

from common.cli import run_main
from common.errors import UserError

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


def _mean_std(values: pd.Series) -> str:
    if len(values) < 2:
        return f"{values.mean():.2f} (1 run)"
    return f"{values.mean():.2f} +- {values.std(ddof=1):.2f}"


def fair_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (protocol, ipc, variant): ``top1`` (mean +- std), ``seeds`` and ``vs random real``
    (mean +- std of the per-seed difference to random-real; empty without a baseline run)."""
    base = runs[runs["variant"] == BASELINE].set_index(["protocol", "ipc", "seed"])["top1"]
    rows = []
    for (protocol, ipc, variant), group in runs.groupby(["protocol", "ipc", "variant"], sort=True):
        keys = [(protocol, ipc, s) for s in group["seed"]]
        paired = [(t, base[k]) for t, k in zip(group["top1"], keys) if k in base.index]
        diff = pd.Series([t - b for t, b in paired], dtype=float)
        rows.append({"protocol": protocol, "ipc": ipc, "variant": variant, "top1": _mean_std(group["top1"]),
                     "seeds": len(group), "epochs": int(group["epochs"].iloc[0]),
                     "vs random real": "" if variant == BASELINE or diff.empty else
                     (f"{diff.mean():+.2f}" if len(diff) < 2 else f"{diff.mean():+.2f} +- {diff.std(ddof=1):.2f}")})
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """``table`` as a Markdown table (header, separator, one line per row)."""
    lines = [list(map(str, table.columns)), ["---"] * len(table.columns)] + table.astype(str).values.tolist()
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.fair_scores", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="benchmark output directory")
    args = p.parse_args(argv)
    print(markdown(fair_table(collect(Path(args.out)))))
    return 0


if __name__ == "__main__":
    run_main(main)
