"""Fair scores (improvement over random real under identical labels and budgets) from real
runs: benchmarks/distill.sh adds random real and prints the table, ``wmdd.tools.summarize_run
table --baseline`` (what ``make demo`` prints), ``wmdd.tools.fair_scores.fair_table`` on
``results.json`` files and ``wmdd.tools.plot_results``' improvement annotations."""

from __future__ import annotations

import json
import re
import subprocess

import pandas as pd
import pytest

from tests.conftest import REPO, run_module
from wmdd.errors import UserError
from wmdd.tools.fair_scores import collect, fair_table, from_results_csv, paired_differences
from wmdd.tools.plot_results import improvements
from wmdd.tools.summarize_run import format_summary
from wmdd.tools.summarize_run import variant as variant_name

pytestmark = pytest.mark.long  # minutes of end-to-end runs: started first (tests/conftest.py)

WMDD = "wmdd: WB, per-class BN"
RECIPE = f"{WMDD}, medoid init, factor 2"  # --method wmdd's defaults (the variant name leaves out r_bn)


@pytest.fixture(scope="module")
def bench(cifar_root, tmp_path_factory):
    """A 1-epoch ConvNet teacher, then distill.sh with ``-m wmdd -A "--r-bn 0.02"`` at IPC 2 for
    seeds 0 and 1 (random real is added by the script): four real run.sh runs. No ``-i``: each
    method keeps its own recover budget (run.sh -g's 5 iterations)."""
    tmp = tmp_path_factory.mktemp("fair")
    teacher = tmp / "teacher"
    run_module("wmdd.pretrain", "--dataset", "cifar10", "--data-path", cifar_root, "--model", "convnet", "--epochs", 1,
               "--batch-size", 32, "--output-dir", teacher, "--workers", 0, "--device", "cpu")
    out = tmp / "bench"
    proc = subprocess.run([str(REPO / "benchmarks" / "distill.sh"), "-d", "cifar10", "-t", str(teacher),
                           "-r", str(cifar_root.parent), "-o", str(out), "-c", "2", "-s", "0 1", "-z", "1",
                           "-m", "wmdd", "-A", "--r-bn 0.02", "-x", "-g"], cwd="/", capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def _top1(out, experiment):
    return json.loads((out / "cifar10" / experiment / "train" / "results.json").read_text())["top1"]


def _diffs(out):
    return pd.Series([_top1(out, f"wmdd-ipc2-s{s}") - _top1(out, f"random-real-ipc2-s{s}") for s in (0, 1)])


def test_distill_sh_adds_random_real_and_prints_the_fair_scores(bench):
    out, stdout = bench
    rows = pd.read_csv(out / "results.csv")
    assert sorted(rows["experiment"]) == ["random-real-ipc2-s0", "random-real-ipc2-s1", "wmdd-ipc2-s0",
                                          "wmdd-ipc2-s1"]
    table = stdout[stdout.index("fair scores (vs random real"):]
    line = next(x for x in table.splitlines() if f"| {RECIPE} |" in x)
    d = _diffs(out)
    assert line.endswith(f"| {d.mean():+.2f} +- {d.std(ddof=1):.2f} |"), line
    base = next(x for x in table.splitlines() if "| random-real |" in x)
    assert base.startswith("| cifar10 | fkd | 2 | random-real |") and base.endswith("| 2 | 1 |  |")


def test_distill_sh_without_i_leaves_the_recover_budget_to_the_method(bench):
    out, _ = bench
    manifest = json.loads((out / "cifar10" / "wmdd-ipc2-s0" / "recover" / "manifest.json").read_text())
    assert manifest["args"]["iterations"] == 5  # run.sh -g's budget, not a value forced by distill.sh


def test_distill_sh_passes_method_only_flags_to_the_method_and_not_to_random_real(bench):
    """``-A`` holds a WMDD-only option, which recover refuses for random-real: it reaches wmdd's
    manifest, and the random-real runs (which would have failed with ``-a``) finished."""
    out, _ = bench
    manifest = json.loads((out / "cifar10" / "wmdd-ipc2-s0" / "recover" / "manifest.json").read_text())
    assert manifest["args"]["r_bn"] == 0.02
    baseline = json.loads((out / "cifar10" / "random-real-ipc2-s0" / "recover" / "manifest.json").read_text())
    assert baseline["args"]["r_bn"] is None  # not an option of random-real


@pytest.mark.parametrize("flags,model", [((), "convnet_in"), (("-e", "convnet"), "convnet")])
def test_distill_sh_dsa_protocol_trains_its_own_student_unless_e_is_given(bench, cifar_root, tmp_path, flags,
                                                                          model):
    """-P dsa without -e trains the DSA protocol's convnet_in (distill.sh's FKD student, a BN
    ConvNet, must not reach it); -e still chooses the student."""
    out, _ = bench
    teacher = out / "teachers" / "cifar10_convnet" / "bench"  # the link distill.sh made for the bench runs
    proc = subprocess.run([str(REPO / "benchmarks" / "distill.sh"), "-d", "cifar10", "-t", str(teacher),
                           "-r", str(cifar_root.parent), "-o", str(tmp_path), "-c", "2", "-s", "0", "-z", "1",
                           "-m", "random-real", "-P", "dsa", "-x", "-g", *flags], cwd="/", capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "cifar10" / "random-real-ipc2-s0-dsa" / "train" / "results.json").read_text())
    assert results["model"] == model


def test_summarize_table_prints_the_difference_to_the_baseline(bench):
    out, _ = bench
    proc = run_module("wmdd.tools.summarize_run", "table", "--results-csv", out / "results.csv",
                      "--baseline", "random-real-ipc2-s0", "wmdd-ipc2-s0", "wmdd-ipc2-s1")
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("  vs random-real-ipc2-s0")
    diff = _top1(out, "wmdd-ipc2-s0") - _top1(out, "random-real-ipc2-s0")
    assert re.search(rf"wmdd-ipc2-s0 +{re.escape(RECIPE)} +2 .*%  {re.escape(f'{diff:+.2f}')}$", lines[1]), lines[1]
    assert lines[2].endswith("  n/a: seed 1 vs 0")  # another seed is not a fair comparison
    assert lines[3].startswith("random-real-ipc2-s0") and lines[3].endswith("  (baseline)")
    missing = run_module("wmdd.tools.summarize_run", "table", "--results-csv", out / "results.csv",
                         "--baseline", "nothing", "wmdd-ipc2-s0", check=False)
    assert missing.returncode == 2 and "no row for experiment 'nothing'; run it first" in missing.stderr


def test_fair_table_on_results_json_of_real_runs(bench, tmp_path):
    """The dm_family.sh layout (<variant>-ipc<N>-s<seed>/train-<protocol>/results.json) over the real runs."""
    out, _ = bench
    for variant in ("wmdd", "random-real"):
        for s in (0, 1):
            (tmp_path / f"{variant}-ipc2-s{s}").mkdir()
            (tmp_path / f"{variant}-ipc2-s{s}" / "train-fkd").symlink_to(out / "cifar10" / f"{variant}-ipc2-s{s}"
                                                                         / "train")
    table = fair_table(collect(tmp_path)).set_index("variant")
    d = _diffs(out)
    assert table.loc["wmdd", "vs random real"] == f"{d.mean():+.2f} +- {d.std(ddof=1):.2f}"
    assert table.loc["random-real", "vs random real"] == ""
    wmdd = pd.Series([_top1(out, f"wmdd-ipc2-s{s}") for s in (0, 1)])
    assert table.loc["wmdd", "top1"] == f"{wmdd.mean():.2f} +- {wmdd.std(ddof=1):.2f}"
    assert (table.loc["wmdd", "seeds"], table.loc["wmdd", "epochs"]) == (2, 1)
    # one seed of the baseline only: one pair, shown without a spread
    one = collect(tmp_path)
    one = one[~((one["variant"] == "random-real") & (one["seed"] == 1))]
    assert fair_table(one).set_index("variant").loc["wmdd", "vs random real"] == f"{d[0]:+.2f}"
    # another baseline: random real paired with wmdd (the negated differences), from the CLI
    proc = run_module("wmdd.tools.fair_scores", tmp_path, "--baseline", "wmdd")
    row = [line for line in proc.stdout.splitlines() if "| random-real |" in line][0]
    assert "vs wmdd" in proc.stdout and row.endswith(f"| {-d.mean():+.2f} +- {d.std(ddof=1):.2f} |")
    proc = run_module("wmdd.tools.fair_scores", tmp_path, "--baseline", "random-real-f2", check=False)
    assert proc.returncode == 2 and "--baseline random-real-f2: no such variant" in proc.stderr


def test_results_csv_pairs_match_results_json_and_the_plot_annotations(bench, tmp_path):
    out, _ = bench
    pairs = paired_differences(from_results_csv(out / "results.csv")).sort_values("seed")
    assert pairs["variant"].tolist() == [RECIPE, RECIPE]
    assert pairs["difference"].round(6).tolist() == _diffs(out).round(6).tolist()
    gains = improvements(pd.read_csv(out / "results.csv")).set_index("variant")
    assert list(gains.index) == [RECIPE] and gains.loc[RECIPE, "count"] == 2
    assert abs(gains.loc[RECIPE, "mean"] - _diffs(out).mean()) < 1e-9
    proc = run_module("wmdd.tools.plot_results", "--csv", out / "results.csv", "--out", tmp_path / "plots")
    assert "methods_cifar10_ipc2.png" in proc.stdout
    assert (tmp_path / "plots" / "methods_cifar10_ipc2.png").stat().st_size > 5000


def test_fair_scores_cli_needs_exactly_one_input(tmp_path):
    proc = run_module("wmdd.tools.fair_scores", check=False)
    assert proc.returncode == 2 and "pass either a benchmark output directory or --csv" in proc.stderr
    proc = run_module("wmdd.tools.fair_scores", "--csv", tmp_path / "none.csv", check=False)
    assert proc.returncode == 2 and "none.csv: results file not found" in proc.stderr


@pytest.mark.parametrize("method,init,expect", [
    ("wmdd", None, WMDD), ("wmdd", "noise", WMDD), ("wmdd", "medoid", f"{WMDD}, medoid init"),
    ("sre2l", "real", "sre2l: WB, per-class BN, real init"), ("random-real", "real", "random-real"),
    ("wmdd-paper", "noise", "wmdd-paper: WB, per-class BN"),
])
def test_variant_names_a_non_default_init(method, init, expect):
    """Rows of ``--init medoid`` runs must not be pooled with noise-initialised ones."""
    assert variant_name(method, True, True, 0.0, init) == expect


def test_summary_names_decoded_training_images():
    """A DSA-protocol run of a multi-formation set trains on 4 decoded images per stored one; the
    run.sh summary says so, and a run whose stored and training images agree prints one count."""
    row = {"experiment": "x", "dataset": "cifar10", "variant": "wmdd", "ipc": 2, "teacher_model": "convnet",
           "teacher_top1": 50.0, "student_model": "convnet_in", "top1": 40.0, "top5": 80.0, "epochs": 3,
           "num_images": 20, "training_images": 80, "images_bytes": 0, "soft_label_bytes": None,
           "train_dir": "runs/cifar10/x/train", "train_s": 1.0}
    assert "(3 epochs on 80 images decoded from 20 stored)" in format_summary(row)
    assert "(3 epochs on 20 images)" in format_summary({**row, "training_images": 20})


@pytest.mark.parametrize("top1, outcome", [
    ({"w": 92.5, "r": 90.0, "f2": 92.0},
     "stronger baseline: f2 (92.00 %; r 90.00 %); w (92.50 %) beats both baselines, the stronger by +0.50 points"),
    ({"w": 91.94, "r": 92.22, "f2": 90.28},
     "stronger baseline: r (92.22 %; f2 90.28 %); w (91.94 %) does not beat the stronger baseline (-0.28 points)"),
])
def test_verdict_names_the_stronger_baseline(tmp_path, top1, outcome):
    from wmdd.tools.summarize_run import COLUMNS, verdict

    rows = pd.DataFrame([{**dict.fromkeys(COLUMNS, 1), "experiment": name, "top1": value}
                         for name, value in top1.items()])[COLUMNS]
    rows.to_csv(tmp_path / "results.csv", index=False)
    assert verdict(tmp_path / "results.csv", "w", ["r", "f2"]) == outcome
    rows.loc[rows["experiment"] == "f2", "seed"] = 2
    rows.to_csv(tmp_path / "results.csv", index=False)
    with pytest.raises(UserError, match="w and f2 are not comparable \\(seed 1 vs 2\\)"):
        verdict(tmp_path / "results.csv", "w", ["r", "f2"])
