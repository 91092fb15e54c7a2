"""``python -m wmdd.tools.plot_results``: plots of ``runs/results.csv`` (matplotlib PNG).

* ``acc_vs_ipc_<dataset>.png``: student top-1 against IPC, one line per
  method variant (mean over rows, error bars = standard deviation over seeds),
  random real as a black dashed line;
* ``methods_<dataset>_ipc<k>.png``: one bar per method variant at each IPC,
  random real's mean as a dashed vertical line and each bar annotated with
  its improvement over random real (:func:`improvements`, the fair score);
* with ``--table``, a markdown table of mean +- std per variant and IPC.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from wmdd.io.results_table import read_results_table  # noqa: E402
from wmdd.options.parsing import StageParser, run_main  # noqa: E402
from wmdd.tools.fair_scores import BASELINE, paired_differences  # noqa: E402

log = logging.getLogger("wmdd.tools")


def aggregate(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and count of top-1 per (dataset, variant, ipc); the
    standard deviation of a single run is NaN (undefined), not 0."""
    return table.groupby(["dataset", "variant", "ipc"])["top1"].agg(["mean", "std", "count"]).reset_index()


def improvements(table: pd.DataFrame) -> pd.DataFrame:
    """Improvement over random real per (dataset, variant, ipc): mean, std and count of
    the paired differences of :func:`wmdd.tools.fair_scores.paired_differences` (same dataset,
    protocol, IPC, student epochs and seed), in points. Empty when ``table`` lacks the
    ``seed``, ``protocol`` or ``epochs`` column (results files older than those columns)."""
    columns = ["dataset", "variant", "ipc", "seed", "protocol", "epochs", "top1"]
    if not set(columns) <= set(table.columns):
        return pd.DataFrame(columns=["dataset", "variant", "ipc", "mean", "std", "count"])
    pairs = paired_differences(table[columns].dropna(subset=["seed"]))
    return pairs.groupby(["dataset", "variant", "ipc"])["difference"].agg(["mean", "std", "count"]).reset_index()


def table_cell(mean: float, std: float, count: int) -> str:
    """``"mean +- std (n)"`` in percent with two decimals, or ``"mean (1 run)"``."""
    if count == 1:
        return f"{mean:.2f} (1 run)"
    return f"{mean:.2f} +- {std:.2f} ({count})"


def markdown_table(stats: pd.DataFrame) -> str:
    """Markdown table per dataset: one row per variant, one column per IPC, cells
    ``mean +- std (n)`` of student top-1 (:func:`table_cell`)."""
    blocks = []
    for dataset, group in stats.groupby("dataset"):
        ipcs = sorted(group["ipc"].unique())
        lines = [f"**{dataset}** (student top-1 %, mean +- std over n runs)", "",
                 "| variant | " + " | ".join(f"IPC {int(i)}" for i in ipcs) + " |",
                 "| --- |" + " --- |" * len(ipcs)]
        for variant, rows in group.groupby("variant"):
            cells = []
            for i in ipcs:
                r = rows[rows["ipc"] == i]
                cells.append("" if r.empty else table_cell(r["mean"].iloc[0], r["std"].iloc[0],
                                                           int(r["count"].iloc[0])))
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def load(csv: Path) -> pd.DataFrame:
    """The rows of ``csv`` that have an IPC and a top-1.

    Raises:
        UserError: the CSV is missing, unreadable, or lacks the needed columns or finished
            rows (:func:`wmdd.io.results_table.read_results_table`).
    """
    return read_results_table(csv, ["dataset", "variant", "ipc", "top1"], ["ipc", "top1"],
                              "pass the results.csv of wmdd run")


def plot(csv: Path, out: Path) -> list[Path]:
    """Write the plots of ``csv`` into ``out``; returns the written files.

    Raises:
        UserError: the CSV is missing, empty or lacks the needed columns.
    """
    table = load(csv)
    stats, gains = aggregate(table), improvements(table)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset, group in stats.groupby("dataset"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, rows in group.groupby("variant"):
            rows = rows.sort_values("ipc")
            style = {"color": "black", "linestyle": "--", "label": "random real (baseline)"} \
                if name == BASELINE else {"label": name}
            ax.errorbar(rows["ipc"], rows["mean"], yerr=rows["std"].fillna(0.0), marker="o", capsize=3, **style)
        ax.set_xscale("log")
        ax.set_xlabel("images per class (IPC)")
        ax.set_ylabel("student top-1 (%)")
        ax.set_title(f"{dataset}: accuracy vs IPC")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = out / f"acc_vs_ipc_{dataset}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
        for ipc, rows in group.groupby("ipc"):
            fig, ax = plt.subplots(figsize=(6, 4))
            rows = rows.sort_values("mean")
            colors = ["tab:gray" if v == BASELINE else "tab:blue" for v in rows["variant"]]
            ax.barh(rows["variant"], rows["mean"], xerr=rows["std"].fillna(0.0), capsize=3, color=colors)
            gain = gains[(gains["dataset"] == dataset) & (gains["ipc"] == ipc)].set_index("variant")["mean"]
            for y, (v, m, sd, n) in enumerate(zip(rows["variant"], rows["mean"], rows["std"].fillna(0.0),
                                                  rows["count"])):
                fair = f", {gain[v]:+.1f} vs random" if v in gain.index else ""
                ax.text(m + sd, y, f" {m:.1f} (n={n}){fair}", va="center", fontsize=8)
            base = rows.loc[rows["variant"] == BASELINE, "mean"]
            if len(base):
                ax.axvline(base.iloc[0], color="black", linestyle="--", linewidth=1, label="random real")
                ax.legend(fontsize=8, loc="lower right")
            ax.set_xlabel("student top-1 (%)")
            ax.set_title(f"{dataset}, IPC {int(ipc)}")
            fig.tight_layout()
            path = out / f"methods_{dataset}_ipc{int(ipc)}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = StageParser(prog="wmdd plot", description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", type=Path, default=Path("runs/results.csv"))
    p.add_argument("--out", type=Path, default=Path("runs/plots"))
    p.add_argument("--table", action="store_true", help="also print a markdown table (mean +- std per IPC)")
    args = p.parse_args(argv)
    if args.table:
        print(markdown_table(aggregate(load(args.csv))))
    for path in plot(args.csv, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    run_main(main)
