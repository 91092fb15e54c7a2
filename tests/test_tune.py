"""``wmdd tune``: the held-out split, the search space, the preset, and a real study on the
committed CIFAR-10 subset that is killed, resumed and never reads the test split."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, run_module
from wmdd.data.folders import load_image
from wmdd.data.holdout import holdout_split, write_holdout_root
from wmdd.errors import UserError
from wmdd.tune.preset import load_sectioned, tuned_preset, write_preset
from wmdd.tune.space import Param, parse_param, recipe_values, trial_argv
from wmdd.tune.study import OWN_RECIPE, RETRY_OF, enqueue_own_recipe, open_study, own_recipe_trial, run_name


def test_holdout_split_is_seeded_disjoint_and_sized_per_class():
    files = {"a": [f"{i:03d}.jpg" for i in range(30)], "b": [f"{i:03d}.png" for i in range(11)]}
    val = holdout_split(files, None, seed=3)
    assert [len(val["a"]), len(val["b"])] == [3, 2]  # ceil(10 %), at least 1
    assert set(val["a"]) <= set(files["a"]) and len(set(val["a"])) == 3
    assert holdout_split(files, None, seed=3) == val
    assert holdout_split(dict(reversed(files.items())), None, seed=3) == val  # order of the listing is irrelevant
    assert holdout_split(files, None, seed=4) != val
    assert [len(v) for v in holdout_split(files, 5, seed=0).values()] == [5, 5]
    with pytest.raises(UserError, match="class 'b' has 11 train images: holding out 11 leaves none"):
        holdout_split(files, 11, seed=0)


def test_holdout_root_links_train_images_only_and_refuses_another_split(cifar_root, tmp_path):
    root = tmp_path / "holdout" / "cifar10"
    record = write_holdout_root(cifar_root / "train", root, 4, seed=1)
    assert (record["val_images"], record["train_images"]) == (40, 160)
    for split, count in (("val", 4), ("train", 16)):
        links = sorted((root / split / "cat").iterdir())
        assert len(links) == count and all(p.is_symlink() for p in links)
        assert all(p.resolve().parent == (cifar_root / "train" / "cat").resolve() for p in links)
    held = {p.name for p in (root / "val" / "dog").iterdir()}
    assert held == set(record["val"]["dog"]) and not held & {p.name for p in (root / "train" / "dog").iterdir()}
    assert write_holdout_root(cifar_root / "train", root, 4, seed=1) == record  # resumed: the same split
    with pytest.raises(UserError, match="holds another held-out split"):
        write_holdout_root(cifar_root / "train", root, 5, seed=1)
    (root / "holdout.json").unlink()  # an interrupted write: its links are replaced, nothing else is touched
    (root / "val" / "cat" / "extra.jpg").symlink_to(cifar_root / "train" / "cat" / record["val"]["cat"][0])
    assert write_holdout_root(cifar_root / "train", root, 2, seed=1)["val_images"] == 20
    assert not (root / "val" / "cat" / "extra.jpg").exists()
    (root / "holdout.json").unlink()
    (root / "val" / "cat" / "mine.txt").write_text("a user's file")
    with pytest.raises(UserError, match="not a held-out split of links"):
        write_holdout_root(cifar_root / "train", root, 2, seed=1)


@pytest.mark.parametrize("spec, param", [
    ("lr=0.01:0.5:log", Param("lr", "log", 0.01, 0.5)),
    ("r-bn=0:1", Param("r_bn", "float", 0.0, 1.0)),
    ("iterations=50:400:intlog", Param("iterations", "intlog", 50, 400)),
    ("factor=1,2", Param("factor", "choice", choices=(1, 2))),
    ("init=medoid,real", Param("init", "choice", choices=("medoid", "real"))),
])
def test_parse_param(spec, param):
    assert parse_param(spec) == param
    assert parse_param(param.describe()) == param


@pytest.mark.parametrize("spec, message", [
    ("lr", "write NAME=LOW:HIGH"),
    ("lr=0.5:0.01", "LOW 0.5 is above HIGH 0.01"),
    ("lr=0:1:log", "a log range needs LOW > 0"),
    ("iterations=1.5:4:int", "integer bounds"),
    ("lr=a:1", "'a' is not a number"),
    ("lr=0.1:1:cubic", "KIND one of float, log, int, intlog"),
    ("factor=1,1", "distinct"),
])
def test_parse_param_refuses(spec, message):
    with pytest.raises(UserError, match=message):
        parse_param(spec)


def test_trial_argv_keeps_float_precision():
    assert trial_argv({"lr": 0.1 + 0.2, "iterations": 7, "init": "real"}) == \
        ["--lr", "0.30000000000000004", "--iterations", "7", "--init", "real"]


def test_tuned_preset_changes_only_the_method_even_through_a_yaml_anchor(tmp_path):
    base = load_sectioned(REPO / "wmdd" / "configs" / "cifar10.yaml")
    assert base["recover"]["wmdd-paper"] is base["recover"]["sre2l"]  # the preset shares them by an anchor
    preset = tuned_preset(base, "wmdd-paper", {"lr": 0.125, "iterations": 300})
    write_preset(tmp_path / "p.yaml", preset, ["chosen on held-out data"])
    text = (tmp_path / "p.yaml").read_text()
    assert text.startswith("# chosen on held-out data\n") and "&" not in text
    loaded = yaml.safe_load(text)
    assert loaded["recover"]["wmdd-paper"] == {"lr": 0.125, "r_bn": 0.01, "iterations": 300, "jitter": 4}
    assert loaded["recover"]["sre2l"] == {"lr": 0.25, "r_bn": 0.01, "iterations": 2000, "jitter": 4}
    assert loaded["train"] == base["train"] and base["recover"]["wmdd-paper"]["lr"] == 0.25  # base untouched
    (tmp_path / "flat.yaml").write_text("lr: 0.1\n")
    with pytest.raises(UserError, match="not a preset with one section per stage"):
        load_sectioned(tmp_path / "flat.yaml")


def test_a_study_resumed_with_other_settings_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    open_study(storage, "s", {"ipc": 10, "space": ["lr=0.01:0.1:log"]}, seed=0)
    open_study(storage, "s", {"ipc": 10, "space": ["lr=0.01:0.1:log"]}, seed=0)
    with pytest.raises(UserError, match="started with other settings .*ipc: 10 -> 50"):
        open_study(storage, "s", {"ipc": 50, "space": ["lr=0.01:0.1:log"]}, seed=0)


def test_the_own_recipe_is_the_first_trial_of_a_new_study_only(tmp_path):
    space = {"lr": Param("lr", "log", 0.01, 0.25), "iterations": Param("iterations", "intlog", 50, 400),
             "factor": Param("factor", "choice", choices=(1, 2))}
    own = recipe_values(argparse.Namespace(lr=0.05, iterations=200, factor=None), space)
    assert own == {"lr": 0.05, "iterations": 200, "factor": 1}  # an unset factor is 1
    assert recipe_values(argparse.Namespace(lr=0.5, iterations=200, factor=2), space) is None  # lr outside
    assert not Param("iterations", "int", 1, 9).contains(2.5) and Param("lr", "log", 0.1, 1).contains(0.1)
    study = open_study(f"sqlite:///{tmp_path / 'study.db'}", "s", {"ipc": 10}, seed=0)
    assert enqueue_own_recipe(study, own)
    trial = study.ask({name: p.distribution() for name, p in space.items()})
    assert trial.params == own and trial.user_attrs[OWN_RECIPE]
    study.tell(trial, 41.5)
    assert not enqueue_own_recipe(study, own)  # a study with trials is not given it again
    other = study.ask({name: p.distribution() for name, p in space.items()})
    assert OWN_RECIPE not in other.user_attrs
    study.tell(other, 45.0)
    assert own_recipe_trial(study).number == 0 and own_recipe_trial(study).value == 41.5


def _tune_argv(root, teacher, out) -> list[str]:
    # 2 trials of 2-3 recover iterations, IPC 1, 1 relabel/student epoch, 3 of 20 train images per class held out
    return ["-m", "wmdd", "tune", "-r", str(root), "--teacher", str(teacher), "--out", str(out), "-c", "1",
            "-e", "convnet", "-z", "1", "--trials", "2", "--val-per-class", "3", "--device", "cpu",
            "--space", "iterations=2:3:int"]


def test_study_killed_and_resumed_writes_a_preset_and_never_reads_the_test_split(cifar_root, tiny_teacher, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root / "cifar10")
    corrupted = 0
    for image in (root / "cifar10" / "test").rglob("*.jpg"):  # the study must not notice
        image.write_bytes(b"not an image")
        corrupted += 1
    assert corrupted == 100
    out = tmp_path / "tune"
    argv = [sys.executable, *_tune_argv(root, tiny_teacher, out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    runs = out / "runs" / "cifar10"
    while proc.poll() is None and not (runs.is_dir() and len(list(runs.iterdir())) >= 2):
        time.sleep(0.01)  # no wall-clock limit: kill as soon as the second trial has started
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "preset.yaml").exists()

    done = run_module("wmdd", *_tune_argv(root, tiny_teacher, out)[2:], env={"OMP_NUM_THREADS": "1"}, process=True)
    assert "trial 1 was interrupted: running its recipe again" in done.stdout
    assert "own recipe lies outside the searched ranges" in done.stdout  # iterations 200 is not in 2:3
    trials = optuna.load_study(study_name="wmdd-tune", storage=f"sqlite:///{out / 'study.db'}").get_trials()
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].params == trials[1].params and trials[2].user_attrs[RETRY_OF] == 1
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: (t.value, -t.number))
    preset = yaml.safe_load((out / "preset.yaml").read_text())
    assert {k: preset["recover"]["wmdd"][k] for k in best.params} == best.params
    assert f"held-out top-1 {best.value:.2f} %" in (out / "preset.yaml").read_text()
    assert "own recipe was not a trial" in (out / "preset.yaml").read_text()
    assert len(pd.read_csv(out / "trials.csv")) == 3
    factors = {t.params["factor"] for t in trials}  # the barycenters of a factor: computed once, shared
    assert len(list((out / "cache").glob("barycenters-*.pt"))) == len(factors)
    for t in trials[::2]:  # each finished trial was scored on the 30 held-out train images
        results = pd.read_json(out / "runs" / "cifar10" / run_name(t.params) / "train" / "results.json", typ="series")
        assert results["val_images"] == 30 and results["top1"] == t.value
    with pytest.raises(UserError, match="cannot read image"):  # a stage that opened a test image would have failed
        load_image(str(next((root / "cifar10" / "test").rglob("*.jpg"))))


def test_bad_tune_arguments_are_one_line_errors(cifar_root, tiny_teacher, tmp_path):
    argv = _tune_argv(cifar_root.parent, tiny_teacher, tmp_path / "t")[3:]
    proc = run_module("wmdd.tune", *argv, "--space", "lr=0.5:0.1", check=False)
    assert proc.returncode == 2 and "LOW 0.5 is above HIGH 0.1" in proc.stderr
    proc = run_module("wmdd.tune", *argv, "--method", "random-real", check=False)
    assert proc.returncode == 2 and "no recipe to tune" in proc.stderr
    proc = run_module("wmdd.tune", *argv, "--params", "r_bn", "--method", "dm", "--protocol", "dsa", check=False)
    assert proc.returncode == 2 and "--method dm has no such option to tune" in proc.stderr
    proc = run_module("wmdd.tune", *argv, "--space", "factor=1,9", check=False)
    assert proc.returncode == 2 and "factor = 9 would be refused" in proc.stderr
    proc = run_module("wmdd.tune", *_tune_argv(cifar_root.parent, tmp_path, tmp_path / "t")[3:], check=False)
    assert proc.returncode == 2 and f"--teacher {tmp_path}: no manifest.json there" in proc.stderr
    assert not (tmp_path / "t" / "study.db").exists()


def test_holdout_only_carves_the_split_without_a_teacher_and_the_study_reuses_it(cifar_root, tmp_path):
    out = tmp_path / "t"
    argv = ["-r", str(cifar_root.parent), "--out", str(out), "--val-per-class", "3"]
    proc = run_module("wmdd.tune", *argv, "--holdout-only")
    root = out / "holdout" / "cifar10"
    assert f"--data-path {root}" in proc.stdout and f"--teacher {out / 'teacher'}" in proc.stdout
    record = write_holdout_root(cifar_root / "train", root, 3, seed=0)  # the study's own split: kept as written
    assert (record["val_images"], record["train_images"]) == (30, 170)
    assert sorted(p.name for p in out.iterdir()) == ["holdout"]  # no study, no trial
    proc = run_module("wmdd.tune", *argv, "--holdout-only", "--teacher", str(tmp_path), check=False)
    assert proc.returncode == 2 and "--teacher" in proc.stderr and "would not be used" in proc.stderr
    proc = run_module("wmdd.tune", *argv, check=False)
    assert proc.returncode == 2 and "--teacher DIR is required" in proc.stderr
    assert "Traceback" not in proc.stderr
