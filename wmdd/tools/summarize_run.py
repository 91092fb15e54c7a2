"""``python -m wmdd.tools.summarize_run``: print the summary of one run.sh experiment
and append it as one row to ``results.csv`` (``append``), or compare
experiments already there (``table``, with ``--baseline`` the improvement of
each over a baseline experiment such as random real: the fair score).

Reads the manifests of the teacher and of the experiment's stages (any stage
may be absent, e.g. for pseudo-label runs) and ``train/results.json``.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pandas as pd

from wmdd.errors import UserError
from wmdd.io.files import atomic_write_bytes
from wmdd.options.parsing import StageParser, run_main

COLUMNS = ["finished_at", "experiment", "dataset", "variant", "method", "ipc", "seed", "teacher_model",
           "student_model", "teacher_top1", "top1", "top5", "wb", "per_class_bn", "r_bn", "r_ce", "recover_lr",
           "iterations", "epochs", "input_size", "num_images", "images_bytes", "soft_label_bytes",
           "pretrain_s", "recover_s", "relabel_s", "train_s", "train_dir", "protocol"]


def _manifest(stage_dir: Path | None) -> dict:
    path = stage_dir / "manifest.json" if stage_dir else None
    return json.loads(path.read_text()) if path and path.is_file() else {}


def variant(method: str | None, wb: bool | None, per_class_bn: bool | None, r_ce: float | None,
            init: str | None = None, factor: int | None = None) -> str:
    """Readable method variant, e.g. ``"wmdd: WB, per-class BN"``, ``"wmdd: WB, per-class BN,
    medoid init, factor 2"``, ``"random-real"``, ``"random-real: factor 2"`` or ``"dm"``
    (``init`` is named when it is not noise, the multi-formation ``factor`` when above 1,
    so that a set at another pixel layout is never pooled with, or paired as, the plain one)."""
    if method is None:
        return "pseudo-label"
    parts = []
    if method in ("wmdd", "wmdd-paper", "sre2l"):
        parts = ["WB" if wb else "no WB", "per-class BN" if per_class_bn else "global BN"]
        if r_ce:
            parts.append("CE")
        if init not in (None, "noise"):
            parts.append(f"{init} init")
    if factor and factor > 1:
        parts.append(f"factor {factor}")
    return f"{method}: {', '.join(parts)}" if parts else method


def dir_bytes(path: Path) -> int:
    """Total size of the files under ``path`` in bytes (0 if missing)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def summarize(teacher_dir: Path | None, experiment_dir: Path, experiment: str, timings: dict[str, float]) -> dict:
    """One results row from the stage directories ``experiment_dir/{recover,relabel,train}``
    (the :data:`COLUMNS` of ``results.csv``, plus ``training_images``, which only
    :func:`format_summary` prints).

    Raises:
        UserError: the train stage did not finish.
    """
    results_path = experiment_dir / "train" / "results.json"
    if not results_path.is_file():
        raise UserError(f"{results_path}: missing; the train stage did not finish")
    results = json.loads(results_path.read_text())
    teacher, recover = _manifest(teacher_dir), _manifest(experiment_dir / "recover")
    relabel, train = _manifest(experiment_dir / "relabel"), _manifest(experiment_dir / "train")
    rargs = recover.get("args", {})
    row = {
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "experiment": experiment, "dataset": (train.get("dataset") or {}).get("name"),
        "variant": variant(rargs.get("method"), rargs.get("wb"), rargs.get("per_class_bn"), rargs.get("r_ce"),
                           rargs.get("init"), recover.get("factor")),
        "method": rargs.get("method"), "ipc": recover.get("ipc"), "seed": rargs.get("seed"),
        "teacher_model": teacher.get("model"), "student_model": results["model"],
        "teacher_top1": (teacher.get("val") or {}).get("top1"), "top1": results["top1"], "top5": results["top5"],
        "wb": rargs.get("wb"), "per_class_bn": rargs.get("per_class_bn"), "r_bn": rargs.get("r_bn"),
        "r_ce": rargs.get("r_ce"), "recover_lr": rargs.get("lr"), "iterations": rargs.get("iterations"),
        "epochs": results["epochs"], "input_size": recover.get("input_size"), "num_images": results["num_images"],
        "training_images": results.get("training_images", results["num_images"]),
        "images_bytes": dir_bytes(experiment_dir / "recover" / "images"), "soft_label_bytes": relabel.get("bytes"),
        "train_dir": str(experiment_dir / "train"), "protocol": train.get("args", {}).get("protocol", "fkd"),
    }
    for stage in ("pretrain", "recover", "relabel", "train"):
        row[f"{stage}_s"] = round(timings[stage], 1) if stage in timings else None
    return row


def read_results(csv: Path) -> pd.DataFrame | None:
    """The rows of the results file ``csv`` (``None`` when it does not exist yet).

    Raises:
        UserError: not a readable CSV, or other columns than this toolkit's (names the file).
    """
    if not csv.is_file():
        return None
    try:
        old = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{csv}: not a readable results file ({str(exc).strip()}); fix or move it away, then "
                        "rerun the same command (finished stages are skipped)") from None
    if list(old.columns) == COLUMNS[:-1]:
        old["protocol"] = "fkd"  # written before the DSA protocol existed
    if list(old.columns) != COLUMNS:
        raise UserError(f"{csv}: has columns {list(old.columns)[:5]}... not this toolkit's; move it away")
    return old


def append_row(csv: Path, row: dict) -> None:
    """Append ``row`` to ``csv`` (created with a header when missing); a row of the
    same train directory (a re-run of a finished experiment) is replaced, not repeated,
    and keeps the earlier row's wall time of every stage that did not run this time
    (``row[f"{stage}_s"]`` is ``None``: the stage was already finished).

    Raises:
        UserError: as :func:`read_results`; nothing is written.
    """
    table = pd.DataFrame([row], columns=COLUMNS)
    old = read_results(csv)
    if old is not None:
        earlier = old[old["train_dir"] == row["train_dir"]]
        for stage in ("pretrain", "recover", "relabel", "train"):
            if row[f"{stage}_s"] is None and len(earlier):
                table[f"{stage}_s"] = earlier[f"{stage}_s"].iloc[-1]
        old = old[old["train_dir"] != row["train_dir"]]
        table = pd.concat([old, table], ignore_index=True) if len(old) else table
    atomic_write_bytes(csv, table.to_csv(index=False).encode())


def format_summary(row: dict) -> str:
    """Human-readable block for the end of run.sh."""
    def pct(v):
        return "n/a" if v is None or v != v else f"{v:.2f}%"

    def mib(v):
        return "n/a" if not v else f"{v / 2 ** 20:.2f} MiB"

    decoded = row.get("training_images", row["num_images"])
    images = f"{row['num_images']} images" if decoded == row["num_images"] else \
        f"{decoded} images decoded from {row['num_images']} stored"
    times = "  ".join(f"{s} {row[f'{s}_s']:.0f}s" for s in ("pretrain", "recover", "relabel", "train")
                      if row.get(f"{s}_s") is not None)
    return "\n".join([
        f"experiment {row['experiment']}: {row['dataset']}, {row['variant']}, IPC {row['ipc']}",
        f"  teacher {row['teacher_model']}: top-1 {pct(row['teacher_top1'])}",
        f"  student {row['student_model']}: top-1 {pct(row['top1'])}  top-5 {pct(row['top5'])}"
        f"  ({row['epochs']} epochs on {images})",
        f"  wall time: {times}",
        f"  sizes: images {mib(row['images_bytes'])}, soft labels {mib(row['soft_label_bytes'])}",
        f"  outputs: {row['train_dir']}",
    ])


#: Settings a baseline run must share with an experiment for their difference to be a fair score.
FAIR_KEYS = ["dataset", "ipc", "seed", "teacher_model", "student_model", "epochs", "protocol"]


def fair_difference(row: pd.Series, base: pd.Series) -> str:
    """``row``'s student top-1 minus ``base``'s in points (``"+1.25"``), or why they are not
    comparable (``"n/a: ipc 10 vs 50"``) when a setting of :data:`FAIR_KEYS` differs."""
    differ = [f"{k} {row[k]} vs {base[k]}" for k in FAIR_KEYS
              if k in row.index and not (pd.isna(row[k]) and pd.isna(base[k])) and row[k] != base[k]]
    if differ:
        return "n/a: " + ", ".join(differ)
    return f"{row['top1'] - base['top1']:+.2f}"


def comparison_table(csv: Path, experiments: list[str], baseline: str | None = None) -> str:
    """The last row of each experiment in ``csv`` as a small text table; with ``baseline``
    (an experiment name, added at the end when not listed) a column ``vs <baseline>``: the
    fair score, :func:`fair_difference` of each experiment's top-1 to the baseline's.

    Raises:
        UserError: ``csv`` is missing or unreadable (:func:`read_results`), or an
            experiment or the baseline has no row.
    """
    table = read_results(csv)
    if table is None:
        raise UserError(f"{csv}: no results file; run the experiments first")
    names = experiments + ([baseline] if baseline and baseline not in experiments else [])
    rows = {}
    for name in names:
        found = table[table["experiment"] == name]
        if found.empty:
            raise UserError(f"{csv}: no row for experiment {name!r}"
                            + ("; run it first (the --baseline)" if name == baseline else ""))
        rows[name] = found.iloc[-1]
    width = max(22, *map(len, names))
    vwidth = max(28, *(len(str(rows[n]["variant"])) for n in names))
    head = f"{'experiment':<{width}} {'variant':<{vwidth}} {'IPC':>4} {'teacher top-1':>14} {'student top-1':>14}"
    lines = [head + (f"  vs {baseline}" if baseline else "")]
    for name in names:
        r = rows[name]
        line = (f"{name:<{width}} {r['variant']:<{vwidth}} {int(r['ipc']):>4} {r['teacher_top1']:>13.2f}% "
                f"{r['top1']:>13.2f}%")
        if baseline:
            line += "  " + ("(baseline)" if name == baseline else fair_difference(r, rows[baseline]))
        lines.append(line)
    if baseline:
        lines.append(f"vs {baseline}: student top-1 minus the baseline's, in points (the fair score: same dataset, "
                     "IPC, seed, teacher, student and budget)")
    return "\n".join(lines)


def verdict(csv: Path, candidate: str, baselines: list[str]) -> str:
    """One line naming the stronger of ``baselines`` (highest student top-1 in its last row of
    ``csv``) and whether ``candidate`` beats every baseline, with its margin to the stronger.

    Raises:
        UserError: as :func:`comparison_table` (a missing file or row), or rows not comparable
            (a setting of :data:`FAIR_KEYS` differs).
    """
    table = read_results(csv)
    if table is None:
        raise UserError(f"{csv}: no results file; run the experiments first")
    rows = {}
    for name in [candidate, *baselines]:
        found = table[table["experiment"] == name]
        if found.empty:
            raise UserError(f"{csv}: no row for experiment {name!r}; run it first")
        rows[name] = found.iloc[-1]
    for name in baselines:
        diff = fair_difference(rows[candidate], rows[name])
        if diff.startswith("n/a"):
            raise UserError(f"{csv}: {candidate} and {name} are not comparable ({diff[5:]}); rerun them alike")
    stronger = max(baselines, key=lambda n: rows[n]["top1"])
    margin = rows[candidate]["top1"] - rows[stronger]["top1"]
    others = ", ".join(f"{n} {rows[n]['top1']:.2f} %" for n in baselines if n != stronger)
    outcome = (f"beats both baselines, the stronger by {margin:+.2f} points" if margin > 0 else
               f"does not beat the stronger baseline ({margin:+.2f} points)")
    return (f"stronger baseline: {stronger} ({rows[stronger]['top1']:.2f} %; {others}); {candidate} "
            f"({rows[candidate]['top1']:.2f} %) {outcome}")


def main(argv: list[str] | None = None) -> int:
    p = StageParser(prog="wmdd summarize", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("append", help="summarise one experiment and append (or replace) its row")
    a.add_argument("--experiment-dir", required=True, type=Path)
    a.add_argument("--teacher-dir", type=Path)
    a.add_argument("--experiment", required=True)
    a.add_argument("--results-csv", required=True, type=Path)
    a.add_argument("--time", nargs="*", default=[], metavar="STAGE=SECONDS")
    t = sub.add_parser("table", help="compare experiments already in the results file")
    t.add_argument("--results-csv", required=True, type=Path)
    t.add_argument("--baseline", metavar="EXPERIMENT",
                   help="also print each experiment's top-1 minus this experiment's (e.g. demo-random-real)")
    t.add_argument("experiments", nargs="+")
    v = sub.add_parser("verdict", help="the stronger of the baselines, and whether an experiment beats them all")
    v.add_argument("--results-csv", required=True, type=Path)
    v.add_argument("--candidate", required=True, metavar="EXPERIMENT")
    v.add_argument("baselines", nargs="+", metavar="BASELINE")
    args = p.parse_args(argv)
    if args.command == "table":
        print(comparison_table(args.results_csv, args.experiments, args.baseline))
        return 0
    if args.command == "verdict":
        print(verdict(args.results_csv, args.candidate, args.baselines))
        return 0
    read_results(args.results_csv)  # a file that cannot take the row is refused before anything else
    timings = {k: float(v) for k, v in (t.split("=", 1) for t in args.time)}
    row = summarize(args.teacher_dir, args.experiment_dir, args.experiment, timings)
    append_row(args.results_csv, row)
    print(format_summary(row))
    print(f"  appended to {args.results_csv}")
    return 0


if __name__ == "__main__":
    run_main(main)
