"""``wmdd run`` through its ``run.sh`` shim, the pseudo-label runner and the tools, end to end on
the committed real CIFAR-10 subset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pandas as pd
import pytest

from tests.conftest import REPO, run_module

pytestmark = pytest.mark.long  # minutes of end-to-end runs: started first (tests/conftest.py)

STAGES = ("pretrain", "recover", "relabel", "train")
DEBUG = ["-g", "-d", "cifar10", "-m", "convnet", "-e", "convnet", "-c", "2", "-p", "-n", "-w", "--device", "cpu"]


def run_sh(script: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(REPO / script), *map(str, args)], cwd="/", capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def wmdd_run(*args) -> subprocess.CompletedProcess:
    """``wmdd run args`` that is expected to stop early (a refused flag): run in this process, as
    ``run.sh`` runs it (``exec python -m wmdd.run``; test_the_shim_passes_a_refusal_through checks
    the shim itself), without the seconds a new interpreter spends importing torch."""
    return run_module("wmdd.run", *args, check=False)


@pytest.fixture(scope="module")
def debug_run(cifar_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    proc = run_sh("run.sh", *DEBUG, "-r", cifar_root.parent, "-x", "dbg", "--out", out)
    return out, proc


def test_debug_run_produces_every_stage_and_a_results_row(debug_run):
    out, proc = debug_run
    teacher = out / "teachers" / "cifar10_convnet" / "t0"
    exp = out / "cifar10" / "dbg"
    for stage_dir in (teacher, exp / "recover", exp / "relabel", exp / "train"):
        assert (stage_dir / "manifest.json").is_file(), stage_dir
    assert (exp / "recover" / "grid.png").is_file()
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == 1 and rows["experiment"][0] == "dbg"
    assert rows["variant"][0] == "wmdd: WB, per-class BN, medoid init, factor 2" and rows["ipc"][0] == 2
    assert rows["num_images"][0] == 80  # wmdd's default multi-formation: 4 decoded images per stored one
    decoded = json.loads((exp / "decoded" / "manifest.json").read_text())
    assert (decoded["stage"], decoded["source_factor"], decoded["num_images"]) == ("decode", 2, 80)
    for stage in ("relabel", "train"):  # the FKD stages read the decoded images
        recorded = json.loads((exp / stage / "manifest.json").read_text())["args"]["images"]
        assert recorded == str(exp / "decoded" / "images")
    assert 0 <= rows["top1"][0] <= 100 and 0 <= rows["teacher_top1"][0] <= 100
    assert "student convnet: top-1" in proc.stdout and "wall time: pretrain" in proc.stdout


def test_rerun_skips_finished_stages(debug_run, cifar_root):
    out, _ = debug_run
    before = (out / "cifar10" / "dbg" / "train" / "results.json").stat().st_mtime_ns
    times = pd.read_csv(out / "results.csv")[[f"{s}_s" for s in STAGES]]
    proc = run_sh("run.sh", *DEBUG, "-r", cifar_root.parent, "-x", "dbg", "--out", out)
    # pretrain, recover, decode (wmdd's factor 2), relabel, train
    assert proc.stderr.count("already finished with these arguments") == 5
    assert (out / "cifar10" / "dbg" / "train" / "results.json").stat().st_mtime_ns == before
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == 1  # the row is replaced, not repeated
    pd.testing.assert_frame_equal(rows[times.columns], times)  # with the first run's stage times


def test_killed_during_recover_then_rerun_completes(debug_run, cifar_root):
    out, _ = debug_run
    exp = out / "cifar10" / "killed"
    # the published WMDD (factor 1): the resume under test is run.sh's, and 4 x fewer images keep it short
    args = [str(REPO / "run.sh"), *DEBUG[:-5], "--device", "cpu", "-n", "-w", "-i", "150", "-r", str(cifar_root.parent),
            "-x", "killed", "--out", str(out), "--method", "wmdd-paper"]
    proc = subprocess.Popen(args, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    while not (exp / "recover" / "config.yaml").exists() and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (exp / "recover").is_dir() and not (exp / "recover" / "manifest.json").exists()
    # Ctrl-C (SIGINT to the process group, as a terminal sends it) during the resumed recover: one
    # line from the stage, exit status 130, no traceback
    lock = exp / "recover" / ".lock"
    first = lock.read_text()
    proc = subprocess.Popen(args, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    while lock.read_text() == first and proc.poll() is None:  # until the resumed recover holds the lock
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate()[1]
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("error: interrupted (Ctrl-C); rerun the same command to resume where it "
                                            "stopped") and "Traceback" not in err, err
    assert not (exp / "recover" / "manifest.json").exists()
    (exp / "recover" / ".wall_seconds").write_text("1000\n")  # as if the killed part had run 1000 s
    run_sh("run.sh", *DEBUG[:-5], "--device", "cpu", "-n", "-w", "-i", "150", "-r", cifar_root.parent,
           "-x", "killed", "--out", out, "--batch-size", "5", "--method", "wmdd-paper")
    for stage in ("recover", "relabel", "train"):
        assert (exp / stage / "manifest.json").is_file()
    assert json.loads((exp / "relabel" / "soft_labels" / "meta.json").read_text())["batch_size"] == 5
    rows = pd.read_csv(out / "results.csv").set_index("experiment")
    assert set(rows.index) == {"dbg", "killed"}
    assert rows.loc["killed", "recover_s"] > 1000  # the resumed stage adds its parts
    assert rows.loc["killed", "train_s"] == int((exp / "train" / ".wall_seconds").read_text())


def test_dm_under_the_dsa_protocol_needs_no_teacher(cifar_root, tmp_path):
    proc = run_sh("run.sh", "-g", "-d", "cifar10", "-c", "2", "--method", "dm", "--protocol", "dsa", "-i", "3",
                  "--recover-args", "--batch-real 8", "-r", cifar_root.parent, "-x", "dm", "--out", tmp_path,
                  "--device", "cpu")
    exp = tmp_path / "cifar10" / "dm"
    assert not (exp / "relabel").exists() and not (tmp_path / "teachers").exists()
    train = json.loads((exp / "train" / "manifest.json").read_text())
    assert train["args"]["protocol"] == "dsa" and train["model"] == "convnet_in" and train["args"]["epochs"] == 2
    row = pd.read_csv(tmp_path / "results.csv").iloc[0]
    assert (row["variant"], row["protocol"], row["ipc"]) == ("dm", "dsa", 2)
    assert "student convnet_in: top-1" in proc.stdout


def test_a_multi_formation_set_is_trained_tiled_under_dance(debug_run, cifar_root):
    """random-real --factor 2 under --protocol dance: the stored set is trained, decoded in
    memory with the recorded factor (the debug run above checks the FKD decode)."""
    out, _ = debug_run
    plain = [a for a in DEBUG if a not in ("-n", "-w", "-p")]
    run_sh("run.sh", *plain, "--method", "random-real", "--recover-args", "--factor 2", "--protocol", "dance",
           "-r", cifar_root.parent, "-x", "rrf2-dance", "--out", out)
    exp = out / "cifar10" / "rrf2-dance"
    train = json.loads((exp / "train" / "manifest.json").read_text())
    assert (train["args"]["protocol"], train["args"]["factor"]) == ("dance", 2)
    assert not (exp / "decoded").exists() and not (exp / "relabel").exists()


def test_run_sh_wmdd_defaults_equal_python_defaults(debug_run, cifar_root):
    """Without -n/-w, run.sh --method wmdd resolves to python -m wmdd.recover --method wmdd (both terms
    on, medoid start, factor 2, the CIFAR-10 preset's lr), and --method wmdd-paper to the published
    recipe."""
    out, _ = debug_run
    plain = [a for a in DEBUG if a not in ("-n", "-w", "-p")]
    run_sh("run.sh", *plain, "-i", "2", "-r", cifar_root.parent, "-x", "plain", "--out", out)
    args = json.loads((out / "cifar10" / "plain" / "recover" / "manifest.json").read_text())["args"]
    assert (args["wb"], args["per_class_bn"], args["r_ce"]) == (True, True, 0.0)
    assert (args["init"], args["factor"], args["lr"]) == ("medoid", 2, 0.05)
    run_sh("run.sh", *plain, "-i", "2", "-r", cifar_root.parent, "-x", "paper", "--out", out, "--method", "wmdd-paper",
           "--protocol", "dsa")
    args = json.loads((out / "cifar10" / "paper" / "recover" / "manifest.json").read_text())["args"]
    assert (args["wb"], args["per_class_bn"], args["init"], args["factor"], args["lr"]) == (True, True, "noise", None,
                                                                                             0.25)


def test_missing_teacher_without_p_says_to_add_it(cifar_root, tmp_path):
    proc = wmdd_run("-g", "-d", "cifar10", "-r", cifar_root.parent, "--out", tmp_path)
    assert proc.returncode == 2 and "not found; add -p to pretrain it" in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["-q"], "unrecognized arguments: -q"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["-d", "cifar11", "-r", "/tmp"], "argument -d: invalid choice: 'cifar11'"),
    (["-d", "cifar10", "-r", "/nonexistent"], "data root /nonexistent/cifar10 does not exist"),
    (["-c", "ten", "-r", "/tmp"], "argument -c: 'ten' is not an integer >= 1"),
    (["-b", "x", "-r", "/tmp"], "argument -b: 'x' is not a number >= 0"),
    (["--batch-size", "0", "-r", "/tmp"], "argument --batch-size: '0' is out of range"),
    (["--method", "mtt", "-r", "/tmp"], "argument --method: invalid choice: 'mtt' (choose from 'dance', 'ddm', 'dm', "
                                        "'medoids', 'random-real', 'sre2l', 'wmdd', 'wmdd-paper')"),
    (["--protocol", "hard", "-r", "/tmp"], "argument --protocol: invalid choice: 'hard'"),
    (["-u", "a,b", "-r", "/tmp"], "argument -u: 'a,b': expected a GPU index or a comma list"),
])
def test_bad_flags_print_one_error_line(args, message):
    proc = wmdd_run(*args)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ")
    assert "usage:" not in proc.stderr and "Traceback" not in proc.stderr


def test_the_shim_passes_a_refusal_through():
    """``run.sh`` is ``exec python -m wmdd.run``: its exit status and one error line are the stage's."""
    proc = run_sh("run.sh", "-c", "ten", "-r", "/tmp", check=False)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert proc.stderr == "error: argument -c: 'ten' is not an integer >= 1 (see wmdd run --help)\n", proc.stderr


@pytest.mark.parametrize("flags,message", [
    (["--recover-args", "--r-bn -1"],
     "argument --r-bn: '-1' is out of range: expected a number >= 0 (see wmdd recover"),
    (["--recover-args", "--batch-real 8"], "--batch-real is an option of --method"),
    (["--train-args", "--lr 0"], "argument --lr: '0' is out of range"),
    (["--protocol", "dsa", "--relabel-args", "--top-k 3"],
     "--relabel-args --top-k 3: --protocol dsa trains on hard labels without a relabel stage; drop it"),
])
def test_a_stage_that_would_refuse_its_arguments_stops_the_run_before_anything_is_written(cifar_root, tmp_path,
                                                                                          flags, message):
    proc = wmdd_run("-g", "-p", "-d", "cifar10", "-r", cifar_root.parent, "--out", tmp_path / "runs",
                    "--device", "cpu", *flags)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs" / "teachers").exists()
    # -g's recover starts each stored image from up to 4 real images: IPC 10 does not fit 20 per class
    note = f"note: -g lowers IPC from 10 to 5: {cifar_root / 'train'} has 20 images in its smallest class"
    assert note in proc.stdout


@pytest.mark.parametrize("flags,message", [
    (["--teacher", "/nonexistent", "-p"], "--teacher /nonexistent uses an existing teacher and -p pretrains one"),
    (["--teacher", "/nonexistent"], "--teacher /nonexistent: no manifest.json there; give the output directory"),
    (["--config", "/nonexistent.yaml"], "--config /nonexistent.yaml: no such file"),
])
def test_teacher_and_config_options_are_checked_before_anything_runs(cifar_root, tmp_path, flags, message):
    proc = wmdd_run("-d", "cifar10", "-r", cifar_root.parent, "--out", tmp_path / "runs", *flags)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_what_recover_needs_is_checked_before_the_teacher_is_trained(cifar_root, tmp_path):
    """Without -g, IPC 10 of wmdd (factor 2: 40 real images per class to start from) on the
    20-per-class data is refused before pretrain starts, with the IPC that fits."""
    proc = wmdd_run("-p", "-d", "cifar10", "-m", "convnet", "-r", cifar_root.parent, "--out", tmp_path / "runs",
                    "--device", "cpu")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "error: wmdd recover would refuse its arguments: --ipc 10: --method wmdd --init medoid starts each class from "
        "40 real images (4 per stored image: multi-formation tiles), but class 'airplane' has 20 train images; pass "
        "--ipc 5 or fewer")
    assert not (tmp_path / "runs" / "teachers").exists()


def test_pseudo_label_wrapper_with_a_csv_from_make_pseudo_labels(debug_run, cifar_root, tmp_path):
    out, _ = debug_run
    csv = tmp_path / "pl.csv"
    run_module("wmdd.tools.make_pseudo_labels", "--checkpoint", out / "teachers" / "cifar10_convnet" / "t0",
               "--data-path", cifar_root, "--output", csv, "--workers", "0")
    table = pd.read_csv(csv)
    assert list(table.columns) == ["image_path", "cluster_id", "pseudo_label_class_index", "true_label_index",
                                   "correct", "confidence"]
    assert len(table) == 200 and table["pseudo_label_class_index"].nunique() == 10
    assert ((table["pseudo_label_class_index"] == table["true_label_index"]) == table["correct"].astype(bool)).all()
    proc = run_sh("run_pseudo.sh", "-d", "cifar10", "--csv", csv, "-r", cifar_root.parent, "-e", "convnet", "-z", "1",
                  "--device", "cpu", "--out", tmp_path / "runs", "--", "--model-kwargs", "width=16", "--workers", "0")
    assert "agreement with folder labels" in proc.stderr
    assert "student convnet: top-1" in proc.stdout
    row = pd.read_csv(tmp_path / "runs" / "results.csv").iloc[0]
    assert row["variant"] == "pseudo-label" and 0 <= row["top1"] <= 100 and row["num_images"] == 200


@pytest.mark.parametrize("script", ["run_pseudo.sh", "run_cifar100_pseudo.sh"])
def test_pseudo_wrapper_bad_flags(script, tmp_path):
    proc = run_sh(script, "-d", "cifar10", "--csv", tmp_path / "x.csv", "-r", tmp_path, "--bogus", check=False)
    assert proc.returncode == 2 and "unrecognized arguments: --bogus" in proc.stderr
    assert proc.stderr.strip().endswith("(see wmdd run-pseudo --help)")
    proc = run_sh(script, "-r", tmp_path, check=False)
    assert proc.returncode == 2 and "the following arguments are required: " in proc.stderr and "--csv" in proc.stderr


def test_plot_results(debug_run, tmp_path):
    out, _ = debug_run
    proc = run_module("wmdd.tools.plot_results", "--csv", out / "results.csv", "--out", tmp_path / "plots")
    files = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert files == ["acc_vs_ipc_cifar10.png", "methods_cifar10_ipc2.png"]
    assert all((tmp_path / "plots" / f).stat().st_size > 5000 for f in files)
    assert "acc_vs_ipc_cifar10.png" in proc.stdout


def test_results_table_mean_std_and_single_runs():
    from wmdd.tools.plot_results import aggregate, markdown_table
    rows = pd.DataFrame({"dataset": ["cifar10"] * 4, "variant": ["wmdd", "wmdd", "wmdd", "random-real"],
                         "ipc": [10, 10, 50, 10], "top1": [30.0, 34.0, 41.5, 38.25]})
    table = markdown_table(aggregate(rows))
    lines = table.splitlines()
    assert lines[2] == "| variant | IPC 10 | IPC 50 |"
    assert "| random-real | 38.25 (1 run) |  |" in lines
    # sample standard deviation of (30, 34) = sqrt(8) = 2.83
    assert "| wmdd | 32.00 +- 2.83 (2) | 41.50 (1 run) |" in lines


def test_demo_runs_wmdd_beside_both_random_baselines_and_prints_the_fair_scores(tmp_path):
    """``./run.sh --demo`` (``make demo``) end to end at a smoke-test budget: WMDD (factor 2),
    random real and random real at WMDD's pixel budget on digits, then one fair-score table
    per baseline (``make demo``'s full budget and numbers: benchmarks/RESULTS.md)."""
    proc = run_sh("run.sh", "--demo", "--out", tmp_path, "--teacher-epochs", "1", "-i", "2", "-z", "1",
                  "--device", "cpu")
    rows = pd.read_csv(tmp_path / "results.csv").set_index("experiment")
    assert sorted(rows.index) == ["demo-random-real", "demo-random-real-f2", "demo-wmdd"]
    assert rows["num_images"].to_dict() == {"demo-wmdd": 400, "demo-random-real": 100, "demo-random-real-f2": 400}
    for baseline in ("demo-random-real", "demo-random-real-f2"):
        table = proc.stdout[proc.stdout.index(f"  vs {baseline}\n"):]
        wmdd = next(x for x in table.splitlines() if x.startswith("demo-wmdd "))
        diff = rows.loc["demo-wmdd", "top1"] - rows.loc[baseline, "top1"]
        assert wmdd.endswith(f"%  {diff:+.2f}"), wmdd
    stronger = max(("demo-random-real", "demo-random-real-f2"), key=lambda n: rows.loc[n, "top1"])
    margin = rows.loc["demo-wmdd", "top1"] - rows.loc[stronger, "top1"]
    verdict = next(x for x in proc.stdout.splitlines() if x.startswith("stronger baseline: "))
    assert verdict.startswith(f"stronger baseline: {stronger} ({rows.loc[stronger, 'top1']:.2f} %")
    assert verdict.endswith(f"the stronger by {margin:+.2f} points" if margin > 0 else f"({margin:+.2f} points)")
    assert (tmp_path / "digits" / "demo-wmdd" / "recover" / "grid.png").is_file()
