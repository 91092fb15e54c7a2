"""Bad input, stage by stage: one table of cases that must end with exit status 2 and a
one-line error naming the file, value or key, with nothing written and nothing that
existed changed; a property test over every numeric option of every parser; and the
cases where a finished-looking directory is not finished (deleted or swapped outputs,
stale recover batches)."""

from __future__ import annotations

import argparse
import errno
import functools
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import run_module
from wmdd.options.bounds import Bounded
from wmdd.options.parsing import run_main

#: Every command-line parser of the toolkit with numeric options, by module.
PARSERS = {
    "pretrain": lambda: importlib.import_module("wmdd.pretrain.__main__").build_parser(),
    "recover": lambda: importlib.import_module("wmdd.recover.options").build_parser(),
    "relabel": lambda: importlib.import_module("wmdd.relabel.__main__").build_parser(),
    "train": lambda: importlib.import_module("wmdd.train.student").build_parser(),
    "wmdd.tools.make_pseudo_labels": lambda: importlib.import_module("wmdd.tools.make_pseudo_labels").build_parser(),
    "wmdd.data.prepare extract": lambda: _subparser(importlib.import_module("wmdd.data.prepare").build_parser(),
                                                    "extract"),
    "wmdd.data.prepare digits": lambda: _subparser(importlib.import_module("wmdd.data.prepare").build_parser(),
                                                   "digits"),
}


#: Arguments the parsers require, so that a parse fails only over the option under test.
REQUIRED = {"wmdd.tools.make_pseudo_labels": ["--checkpoint", "c", "--data-path", "d", "--output", "o"],
            "wmdd.data.prepare extract": ["archive.tar", "dest"], "wmdd.data.prepare digits": ["dest"]}


@functools.cache
def _parser(name: str) -> argparse.ArgumentParser:
    return PARSERS[name]()


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _numeric_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.type in (int, float) or isinstance(a.type, Bounded)]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _call(module: str, argv: list, capsys) -> tuple[int, str]:
    """Run ``wmdd module argv`` (a stage name) or ``python -m module argv`` (a dotted module) in this
    process; its exit status and stderr."""
    main = importlib.import_module(module if "." in module else f"wmdd.{module}.__main__").main
    with pytest.raises(SystemExit) as exc:
        run_main(main, [str(a) for a in argv])
    return exc.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def finished(tiny_teacher, cifar_root, tmp_path_factory) -> dict[str, Path]:
    """A finished random-real recover run (IPC 2) and a 2-epoch relabel of it."""
    root = tmp_path_factory.mktemp("finished")
    recover, relabel = root / "recover", root / "relabel"
    run_module("wmdd.recover", *_recover_args(tiny_teacher, cifar_root, recover))
    run_module("wmdd.relabel", *_relabel_args(tiny_teacher, recover / "images", relabel))
    return {"recover": recover, "relabel": relabel}


def _recover_args(teacher, data, out) -> list:
    return ["--teacher", teacher, "--data-path", data, "--output-dir", out, "--method", "random-real",
            "--ipc", "2", "--batch-size", "10", "--workers", "0"]


def _relabel_args(teacher, images, out) -> list:
    return ["--teacher", teacher, "--images", images, "--output-dir", out, "--epochs", "2", "--batch-size", "10",
            "--workers", "0"]


def _train_args(teacher, images, soft, data, out) -> list:
    return ["--images", images, "--soft-labels", soft, "--teacher", teacher, "--data-path", data,
            "--output-dir", out, "--model", "convnet", "--epochs", "2", "--batch-size", "10", "--workers", "0"]


def _yaml(tmp: Path, text: str) -> Path:
    path = tmp / "preset.yaml"
    path.write_text(text)
    return path


def _file(tmp: Path) -> Path:
    path = tmp / "a_file"
    path.write_text("not a directory\n")
    return path


def _unreadable_results(tmp: Path) -> Path:
    path = tmp / "results.csv"
    path.write_text('finished_at,experiment\n"2026-11-01,broken\nx,y,z,w\n')
    return path


def _teacher_with_manifest(teacher: Path, tmp: Path, manifest: str) -> Path:
    copy = tmp / "teacher"
    shutil.copytree(teacher, copy)
    (copy / "manifest.json").write_text(manifest)
    return copy


def _replaced_teacher(teacher: Path, tmp: Path) -> Path:
    """A copy of the pretrain directory whose teacher.pt was replaced by another valid teacher
    (the same weights with another recorded validation score) after the run finished."""
    import torch

    copy = tmp / "teacher"
    shutil.copytree(teacher, copy)
    ckpt = torch.load(copy / "teacher.pt", map_location="cpu", weights_only=True)
    ckpt["val"] = {"top1": 99.0}
    torch.save(ckpt, copy / "teacher.pt")
    return copy


def _csv(tmp: Path, text: str) -> Path:
    path = tmp / "scores.csv"
    path.write_text(text)
    return path


#: A results.csv header and one finished row (wmdd run's columns that the scoring tools read).
RESULTS_HEADER = "dataset,variant,ipc,seed,protocol,top1,epochs\n"
RESULTS_ROW = "cifar10,wmdd,2,0,fkd,41.5,2\n"

#: (case, module, argv builder taking (ctx, tmp), expected text in the one-line error).
#: ``ctx`` holds the teacher, the data root, the finished runs and a scratch output dir.
CASES = [
    ("pretrain lr 0", "pretrain", lambda c, t: ["--data-path", c["data"], "--output-dir", c["out"], "--lr", "0"],
     "argument --lr: '0' is out of range: expected a number > 0"),
    ("pretrain negative lr", "pretrain",
     lambda c, t: ["--data-path", c["data"], "--output-dir", c["out"], "--lr", "-0.1"], "argument --lr: '-0.1'"),
    ("recover lr 0", "recover", lambda c, t: _recover_args(c["teacher"], c["data"], c["out"])[:-6]
     + ["--method", "wmdd", "--lr", "0"], "argument --lr: '0' is out of range"),
    ("recover negative r-bn", "recover", lambda c, t: _recover_args(c["teacher"], c["data"], c["out"])[:-6]
     + ["--method", "wmdd", "--r-bn", "-1"], "argument --r-bn: '-1' is out of range: expected a number >= 0"),
    ("train lr 0", "train", lambda c, t: _train_args(c["teacher"], c["images"], c["soft"], c["data"], c["out"])
     + ["--lr", "0"], "argument --lr: '0'"),
    ("train temperature 0", "train", lambda c, t: _train_args(c["teacher"], c["images"], c["soft"], c["data"],
                                                               c["out"]) + ["-T", "0"],
     "argument -T/--temperature: '0' is out of range"),
    ("train temperature that underflows", "train",
     lambda c, t: _train_args(c["teacher"], c["images"], c["soft"], c["data"], c["out"]) + ["-T", "1e-30"],
     "argument -T/--temperature: '1e-30' is out of range: expected a number >= 0.01"),
    ("train dsa given a soft-label temperature", "train",
     lambda c, t: ["--protocol", "dsa", "--images", c["images"], "--data-path", c["data"], "--output-dir", c["out"],
                   "-T", "4"], "--temperature is an option of --protocol fkd, not of --protocol dsa; drop it"),
    ("train dsa given a teacher", "train",
     lambda c, t: ["--protocol", "dsa", "--images", c["images"], "--data-path", c["data"], "--output-dir", c["out"],
                   "--teacher", c["teacher"]], "--teacher is an option of --protocol fkd, not of --protocol dsa"),
    ("negative workers", "relabel", lambda c, t: _relabel_args(c["teacher"], c["images"], c["out"])
     + ["--workers", "-1"], "argument --workers: '-1' is out of range: expected an integer >= 0"),
    ("negative input size", "pretrain", lambda c, t: ["--data-path", c["data"], "--output-dir", c["out"],
                                                      "--input-size", "-8"], "argument --input-size: '-8'"),
    ("recover factor that does not divide the side", "recover",
     lambda c, t: ["--dataset", "cifar10", "--data-path", c["data"], "--output-dir", c["out"], "--method",
                   "random-real", "--factor", "3", "--ipc", "1", "--workers", "0"],
     "--factor 3: the image side 32 px is not divisible by it"),
    ("recover ipc beyond the class's real images", "recover",
     lambda c, t: _recover_args(c["teacher"], c["data"], c["out"])[:-6] + ["--method", "wmdd", "--ipc", "6"],
     ("--ipc 6: --method wmdd --init medoid starts each class from 24 real images (4 per stored image: "
      "multi-formation tiles), but class 'airplane' has 20 train images; pass --ipc 5 or fewer")),
    ("input size 0", "recover", lambda c, t: ["--dataset", "cifar10", "--data-path", c["data"], "--output-dir",
                                              c["out"], "--method", "random-real", "--input-size", "0"],
     "argument --input-size: '0' is out of range: expected an integer >= 1"),
    ("clusters 0", "wmdd.tools.make_pseudo_labels", lambda c, t: ["--checkpoint", c["teacher"], "--data-path",
                                                                   c["data"],
                                                            "--output", c["out"] / "pl.csv", "--clusters", "0"],
     "argument --clusters: '0'"),
    ("yaml text for an integer", "train",
     lambda c, t: _train_args(c["teacher"], c["images"], c["soft"], c["data"], c["out"])
     + ["--config", _yaml(t, "train:\n  eval_batch_size: thirty-two\n")],
     "preset.yaml: train setting 'eval_batch_size': 'thirty-two' is not an integer >= 1"),
    ("yaml fraction for an integer", "train",
     lambda c, t: _train_args(c["teacher"], c["images"], c["soft"], c["data"], c["out"])
     + ["--config", _yaml(t, "eval_batch_size: 32.5\n")], "preset.yaml: train setting 'eval_batch_size': 32.5"),
    ("yaml method sub-section", "recover", lambda c, t: _recover_args(c["teacher"], c["data"], c["out"])
     + ["--config", _yaml(t, "recover:\n  random-real: {log_every: 2.5}\n")],
     "preset.yaml: recover.random_real setting 'log_every': 2.5 is not an integer >= 1"),
    ("yaml section only for another method", "recover",
     lambda c, t: _recover_args(c["teacher"], c["data"], c["out"])[:-6] + ["--method", "wmdd-paper", "--config",
                                                                          _yaml(t, "recover:\n  dm: {lr: 2.0}\n")],
     "preset.yaml: the recover section holds settings only for --method dm, none apply to --method wmdd-paper"),
    ("yaml option of another method", "recover",
     lambda c, t: _recover_args(c["teacher"], c["data"], c["out"])[:-6] + ["--method", "wmdd", "--config",
                                                                          _yaml(t, "recover:\n  batch_real: 8\n")],
     "preset.yaml: recover setting 'batch_real' is an option of --method dance, ddm, dm, not of --method wmdd"),
    ("yaml negative weight", "recover", lambda c, t: _recover_args(c["teacher"], c["data"], c["out"])
     + ["--config", _yaml(t, "recover:\n  r_bn: -1\n")], "setting 'r_bn': -1 is out of range"),
    ("yaml unknown choice", "train", lambda c, t: _train_args(c["teacher"], c["images"], c["soft"], c["data"],
                                                              c["out"]) + ["--config", _yaml(t, "opt: lion\n")],
     "preset.yaml: train setting 'opt': 'lion' is not one of adamw, sgd"),
    ("pretrain output is a file", "pretrain", lambda c, t: ["--data-path", c["data"], "--output-dir", _file(t)],
     "a_file is an existing file, not a directory"),
    ("recover output is a file", "recover", lambda c, t: _recover_args(c["teacher"], c["data"], _file(t)),
     "a_file is an existing file, not a directory"),
    ("relabel output under a file", "relabel",
     lambda c, t: _relabel_args(c["teacher"], c["images"], _file(t) / "relabel"), "a_file is an existing file"),
    ("train output is a file", "train",
     lambda c, t: _train_args(c["teacher"], c["images"], c["soft"], c["data"], _file(t)), "is an existing file"),
    ("prepare destination is a file", "wmdd.data.prepare",
     lambda c, t: ["digits", _file(t)], "destination", ),
    ("pseudo-label output is a directory", "wmdd.tools.make_pseudo_labels",
     lambda c, t: ["--checkpoint", c["teacher"], "--data-path", c["data"], "--output", t],
     "is a directory; pass the CSV file to write"),
    ("relabel given the recover directory", "relabel",
     lambda c, t: _relabel_args(c["teacher"], c["images"].parent, c["out"]),
     "is a recover output directory, not an image folder; pass"),
    ("teacher replaced after pretrain", "recover",
     lambda c, t: _recover_args(_replaced_teacher(c["teacher"], t), c["data"], c["out"]),
     "teacher.pt: changed since"),
    ("teacher manifest of the wrong shape", "recover",
     lambda c, t: _recover_args(_teacher_with_manifest(c["teacher"], t, "[]"), c["data"], c["out"]),
     "manifest.json: holds a JSON list, not a manifest (an object)"),
    ("empty teacher manifest", "relabel",
     lambda c, t: _relabel_args(_teacher_with_manifest(c["teacher"], t, "{}"), c["images"], c["out"]),
     "manifest.json: has no 'stage', so it is not a manifest this toolkit wrote"),
    ("malformed results file", "wmdd.tools.summarize_run",
     lambda c, t: ["append", "--experiment-dir", c["out"], "--experiment", "x", "--results-csv",
                   _unreadable_results(t)], "results.csv: not a readable results file"),
    ("fair scores of an empty csv", "wmdd.tools.fair_scores", lambda c, t: ["--csv", _csv(t, "")],
     "scores.csv: the file is empty"),
    ("fair scores of a row with extra fields", "wmdd.tools.fair_scores",
     lambda c, t: ["--csv", _csv(t, RESULTS_HEADER + RESULTS_ROW + "cifar10,wmdd,2,1,fkd,40.0,2,extra,x\n")],
     "scores.csv: not a readable CSV (Error tokenizing data"),
    ("fair scores of a non-numeric top-1", "wmdd.tools.fair_scores",
     lambda c, t: ["--csv", _csv(t, RESULTS_HEADER + "cifar10,wmdd,2,0,fkd,41.5%,2\n")],
     "scores.csv: line 2, column top1: '41.5%' is not a number"),
    ("plot of a non-numeric ipc", "wmdd.tools.plot_results",
     lambda c, t: ["--csv", _csv(t, RESULTS_HEADER + "cifar10,wmdd,two,0,fkd,41.5,2\n"), "--out", c["out"]],
     "scores.csv: line 2, column ipc: 'two' is not a number"),
]


@pytest.mark.parametrize("case,module,build,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_one_line_and_nothing_written(case, module, build, expect, finished, tiny_teacher,
                                                                 cifar_root, tmp_path, capsys):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ctx = {"teacher": tiny_teacher, "data": cifar_root, "images": finished["recover"] / "images",
           "soft": finished["relabel"], "out": tmp_path / "out"}
    argv = build(ctx, scratch)
    before = _snapshot(tmp_path)
    watched = {name: _snapshot(path) for name, path in finished.items()}
    code, err = _call(module, argv, capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2, err
    assert last.startswith("error: ") and expect in last, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert _snapshot(tmp_path) == before
    assert {name: _snapshot(path) for name, path in finished.items()} == watched


def test_every_numeric_option_is_range_checked():
    for name in PARSERS:
        bare = [a.option_strings for a in _numeric_actions(_parser(name)) if not isinstance(a.type, Bounded)]
        assert not bare, f"{name}: numeric options without a range: {bare}"


NUMERIC = [(name, a.option_strings[-1]) for name in PARSERS for a in _numeric_actions(_parser(name))]

TEXT = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                 st.sampled_from(["0", "-0", "1e-3", "0.5", "1", "-1", "1.0", "nan", "inf", "", " 3", "2**4", "--"]),
                 st.text(max_size=6))


@pytest.mark.parametrize("parser_name,option", NUMERIC, ids=[f"{p}{o}" for p, o in NUMERIC])
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_numeric_option_values_are_accepted_in_range_or_refused_in_one_line(parser_name, option, text, capsys):
    parser = _parser(parser_name)
    action = next(a for a in parser._actions if option in a.option_strings)
    capsys.readouterr()
    try:
        value = getattr(parser.parse_known_args(REQUIRED.get(parser_name, []) + [f"{option}={text}"])[0],
                        action.dest)
    except SystemExit as exc:
        err = capsys.readouterr().err
        assert exc.code == 2
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: argument "), err
        return
    assert isinstance(value, action.type.kind) and action.type.contains(value), (text, value)


def test_finished_recover_with_a_deleted_image_is_not_finished(finished, tiny_teacher, cifar_root, tmp_path, capsys):
    out = tmp_path / "recover"
    shutil.copytree(finished["recover"], out)
    victim = sorted((out / "images" / "cat").iterdir())[0]
    victim.unlink()
    code, err = _call("recover", _recover_args(tiny_teacher, cifar_root, out), capsys)
    assert code == 2 and f"{victim}: listed by {out / 'manifest.json'} but missing" in err
    assert "already finished" not in err


@pytest.mark.parametrize("damage", ["delete", "add"])
def test_downstream_stages_verify_the_recover_set(damage, finished, tiny_teacher, cifar_root, tmp_path, capsys):
    """A finished recover set with an image deleted (or one added) after it finished: relabel and
    train refuse it, naming the file, instead of running on the changed set."""
    rec = tmp_path / "recover"
    shutil.copytree(finished["recover"], rec)
    victim = rec / "images" / "cat" / "0000.png"
    if damage == "delete":
        victim.unlink()
        expect = f"{victim}: listed by {rec / 'manifest.json'} but missing"
    else:
        victim = victim.with_name("0009.png")
        shutil.copy(rec / "images" / "cat" / "0000.png", victim)
        expect = f"{victim}: not listed by {rec / 'manifest.json'}, so not part of the recover run's set"
    for module, argv in (("relabel", _relabel_args(tiny_teacher, rec / "images", tmp_path / "relabel")),
                         ("train", ["--hard-labels", "--images", rec / "images", "--data-path", cifar_root,
                                    "--output-dir", tmp_path / "train", "--epochs", "1", "--workers", "0"])):
        code, err = _call(module, argv, capsys)
        assert code == 2 and err.strip().splitlines()[-1].startswith(f"error: {expect}"), err
        assert not (tmp_path / module).exists()


def test_a_multi_formation_set_keeps_its_factor_without_its_manifest(cifar_root, tmp_path, capsys):
    """random-real --factor 2 copied elsewhere without its manifest: relabel still refuses the tiles
    and train --protocol dsa decodes them with factor 2 (recorded inside images/); a manifest
    replaced by ``{}`` or a list is refused by name."""
    rec = tmp_path / "recover"
    assert _call("recover", ["--method", "random-real", "--factor", "2", "--dataset", "cifar10", "--data-path",
                             cifar_root, "--output-dir", rec, "--ipc", "1", "--workers", "0"], capsys)[0] == 0
    copy = tmp_path / "copied" / "images"
    shutil.copytree(rec / "images", copy)
    code, err = _call("relabel", ["--teacher", tmp_path / "no-teacher", "--images", copy, "--output-dir",
                                  tmp_path / "relabel"], capsys)
    assert code == 2 and "stored with multi-formation factor 2" in err, err
    out = tmp_path / "train"
    assert _call("train", ["--protocol", "dsa", "--images", copy, "--dataset", "cifar10", "--data-path", cifar_root,
                           "--output-dir", out, "--epochs", "1", "--workers", "0"], capsys)[0] == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["num_images"], results["training_images"]) == (10, 40)
    for text, expect in (("{}\n", "manifest.json: has no 'stage', so it is not a manifest this toolkit wrote"),
                         ("[1, 2]\n", "holds a JSON list, not a manifest")):
        (rec / "manifest.json").write_text(text)
        code, err = _call("train", ["--protocol", "dsa", "--images", rec / "images", "--dataset", "cifar10",
                                    "--data-path", cifar_root, "--output-dir", tmp_path / "t2", "--epochs", "1"],
                          capsys)
        assert code == 2 and expect in err.strip().splitlines()[-1] and "Traceback" not in err, err
        assert not (tmp_path / "t2").exists()


@pytest.mark.parametrize("damage", ["delete", "swap", "truncate"])
def test_damaged_soft_label_epochs_are_refused_before_training(damage, finished, tiny_teacher, cifar_root, tmp_path,
                                                               capsys):
    soft = tmp_path / "relabel"
    shutil.copytree(finished["relabel"], soft)
    epochs = sorted((soft / "soft_labels").glob("epoch_*.pt"))
    if damage == "delete":
        epochs[1].unlink()
    elif damage == "swap":
        first = epochs[0].read_bytes()
        epochs[0].write_bytes(epochs[1].read_bytes())
        epochs[1].write_bytes(first)
    else:
        epochs[1].write_bytes(epochs[1].read_bytes()[:100])
    out = tmp_path / "train"
    code, err = _call("train", _train_args(tiny_teacher, finished["recover"] / "images", soft, cifar_root, out),
                      capsys)
    assert code == 2, err
    assert ("but missing" if damage == "delete" else "changed since") in err
    assert str(epochs[1] if damage != "swap" else epochs[0]) in err
    assert not (out / "manifest.json").exists()
    code, err = _call("relabel", _relabel_args(tiny_teacher, finished["recover"] / "images", soft), capsys)
    assert code == 2 and "already finished" not in err


def test_refused_pretrain_keeps_the_killed_runs_config(tiny_teacher, cifar_root, tmp_path, capsys):
    out = tmp_path / "pretrain"
    args = ["--dataset", "cifar10", "--data-path", cifar_root, "--model", "convnet", "--model-kwargs", "width=8",
            "--epochs", "1", "--train-per-class", "2", "--val-per-class", "1", "--workers", "0", "--output-dir", out]
    assert _call("pretrain", args, capsys)[0] == 0
    (out / "manifest.json").unlink()  # as if killed after its epoch
    config = (out / "config.yaml").read_bytes()
    code, err = _call("pretrain", args[:-4] + ["--lr", "0.5", "--workers", "0", "--output-dir", out], capsys)
    assert code == 2 and "different arguments (lr: 0.025 there, 0.5 now)" in err
    assert (out / "config.yaml").read_bytes() == config


def test_refused_train_keeps_what_the_killed_run_recorded(finished, tiny_teacher, cifar_root, tmp_path, capsys):
    """A train directory with ``last.pt`` but no recorded arguments (killed early, or the file
    deleted): another command is refused before it writes anything, so that the right one then
    resumes."""
    out = tmp_path / "train"
    args = _train_args(tiny_teacher, finished["recover"] / "images", finished["relabel"], cifar_root, out)
    assert _call("train", args, capsys)[0] == 0
    (out / "manifest.json").unlink()
    (out / ".run_args.json").unlink()
    before = _snapshot(out)
    code, err = _call("train", args + ["--lr", "0.5"], capsys)
    assert code == 2 and "last.pt: was written by a run with different arguments (lr: 0.001 there, 0.5 now)" in err
    assert _snapshot(out) == before
    assert _call("train", args, capsys)[0] == 0 and (out / "manifest.json").is_file()


def test_a_second_writer_of_one_output_directory_is_refused(finished, tiny_teacher, cifar_root, tmp_path, capsys):
    """Two recovers started on one --output-dir: the second is refused while the first holds the
    directory's lock (here: this process, as a running recover would), and runs once it is free."""
    from wmdd.io.lock import lock_output_dir, release_output_locks

    out = tmp_path / "recover"
    lock_output_dir(out, "recover")
    holder = subprocess.run([sys.executable, "-m", "wmdd.recover", *map(str, _recover_args(tiny_teacher, cifar_root,
                                                                                            out))],
                            capture_output=True, text=True, check=False)
    release_output_locks()
    assert holder.returncode == 2 and holder.stderr.strip().splitlines()[-1] == (
        f"error: {out}: in use by wmdd recover (pid {os.getpid()}); wait for it to finish (then rerun: finished work "
        "is kept) or pass another --output-dir")
    assert not (out / "manifest.json").exists() and not (out / "images").exists()
    assert _call("recover", _recover_args(tiny_teacher, cifar_root, out), capsys)[0] == 0


def _fault(kind: str):
    """A replacement for ``os.replace`` (every atomic write's last step) or ``torch.save`` that
    fails as the machine would: a full disk, a read-only file system, Ctrl-C."""
    def fail(*args, **kwargs):
        if kind == "disk full":
            raise OSError(errno.ENOSPC, "No space left on device", str(args[-1]))
        if kind == "read-only":
            raise OSError(errno.EROFS, "Read-only file system", str(args[-1]))
        if kind == "torch.save on a full disk":
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        raise KeyboardInterrupt
    return fail


#: (fault, exit status, text of the one error line).
FAULTS = [("disk full", 2, "the disk is full (No space left on device); fix that, then rerun the same command"),
          ("read-only", 2, "the file system is read-only (Read-only file system); fix that, then rerun"),
          ("torch.save on a full disk", 2, "the disk is full (torch.save stopped writing with 0 bytes free)"),
          ("Ctrl-C", 130, "error: interrupted (Ctrl-C); rerun the same command to resume where it stopped")]


@pytest.mark.parametrize("stage,kind,code,expect", [
    (stage, *fault) for stage in ("pretrain", "recover", "relabel", "train") for fault in FAULTS
    if not (stage == "recover" and fault[0] == "torch.save on a full disk")  # random-real saves no torch file
])
def test_faults_end_in_one_line_and_a_rerun_finishes(stage, kind, code, expect, finished, tiny_teacher, cifar_root,
                                                      tmp_path, capsys, monkeypatch):
    import shutil as shutil_module

    import torch

    from wmdd.io import files

    out = tmp_path / stage
    argv = {"pretrain": ["--dataset", "cifar10", "--data-path", cifar_root, "--model", "convnet", "--model-kwargs",
                         "width=8", "--epochs", "1", "--train-per-class", "2", "--val-per-class", "1", "--workers", "0",
                         "--output-dir", out],
            "recover": _recover_args(tiny_teacher, cifar_root, out),
            "relabel": _relabel_args(tiny_teacher, finished["recover"] / "images", out),
            "train": _train_args(tiny_teacher, finished["recover"] / "images", finished["relabel"], cifar_root,
                                 out)}[stage]
    with monkeypatch.context() as patch:
        if kind == "torch.save on a full disk":
            patch.setattr(torch, "save", _fault(kind))
            patch.setattr(shutil_module, "disk_usage", lambda p: shutil_module._ntuple_diskusage(10, 10, 0))
        else:
            patch.setattr(files.os, "replace", _fault(kind))
        got, err = _call(stage, argv, capsys)
    lines = err.strip().splitlines()
    assert got == code and lines[-1].startswith("error: ") and expect in lines[-1], err
    assert "Traceback" not in err and not (out / "manifest.json").exists()
    assert _call(stage, argv, capsys)[0] == 0 and (out / "manifest.json").is_file()


def test_stale_recover_batches_are_redone_from_the_new_data(tiny_teacher, cifar_root, tmp_path, capsys):
    data = tmp_path / "cifar10"
    shutil.copytree(cifar_root, data)
    out = tmp_path / "recover"
    args = _recover_args(tiny_teacher, data, out)
    assert _call("recover", args, capsys)[0] == 0
    (out / "manifest.json").unlink()  # killed after its last batch
    old = _snapshot(out / "images")
    cat = sorted((data / "train" / "cat").iterdir())
    for a, b in zip(cat[:len(cat) // 2], reversed(cat)):  # the class's images replaced (same names, other pixels)
        a_bytes = a.read_bytes()
        a.write_bytes(b.read_bytes())
        b.write_bytes(a_bytes)
    assert _call("recover", args, capsys)[0] == 0
    new = _snapshot(out / "images")
    assert {k.split("/")[0] for k in new if new[k] != old.get(k)} == {"cat"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["images/cat/0000.png"]["sha256"] == new["cat/0000.png"]


def test_recover_owns_its_image_folders(tiny_teacher, cifar_root, tmp_path, capsys):
    """A foreign file in ``images/<class>/`` of an unfinished run, or an ``images/`` folder in an
    --output-dir where no recover run started, is refused and left as it was; no manifest is
    written that would list it."""
    out = tmp_path / "recover"
    args = _recover_args(tiny_teacher, cifar_root, out)
    assert _call("recover", args, capsys)[0] == 0
    (out / "manifest.json").unlink()  # killed after its last batch
    foreign = out / "images" / "cat" / "holiday.png"
    foreign.write_bytes((out / "images" / "cat" / "0000.png").read_bytes())
    before = _snapshot(out)
    code, err = _call("recover", args, capsys)
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: {foreign}: not written by wmdd recover, which owns {out / 'images'}; move it away, then rerun the "
        "same command (finished class batches are kept)")
    assert _snapshot(out) == before and not (out / "manifest.json").exists()
    foreign.unlink()
    assert _call("recover", args, capsys)[0] == 0
    listed = {k for k in json.loads((out / "manifest.json").read_text())["files"] if k.startswith("images/")}
    assert listed == {f"images/{k}" for k in _snapshot(out / "images")} and len(listed) == 20 + 1  # + .wmdd_set.json

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "images" / "cat").mkdir(parents=True)
    (elsewhere / "images" / "cat" / "0000.png").write_bytes(b"a user's image")
    code, err = _call("recover", _recover_args(tiny_teacher, cifar_root, elsewhere), capsys)
    assert code == 2 and "images already exists but no recover run was started there" in err
    assert _snapshot(elsewhere) == {"images/cat/0000.png": hashlib.sha256(b"a user's image").hexdigest()}


def test_batch_markers_carry_the_arguments(tiny_teacher, cifar_root, tmp_path, capsys):
    """A finished --ipc 3 run whose manifest and recorded arguments were deleted, rerun with
    --ipc 2: its batches are redone, not taken as done, and the set holds 2 images per class."""
    out = tmp_path / "recover"
    args = _recover_args(tiny_teacher, cifar_root, out)
    ipc3 = [a if a != "2" else "3" for a in args]
    assert _call("recover", ipc3, capsys)[0] == 0
    (out / "manifest.json").unlink()
    (out / ".run_args.json").unlink()
    assert _call("recover", args, capsys)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ipc"] == 2 and manifest["num_images"] == 20
    assert sorted(p.name for p in (out / "images" / "cat").iterdir()) == ["0000.png", "0001.png"]


def test_resolve_classes_first_n_and_a_file(cifar_root, tmp_path):
    from wmdd.data.folders import resolve_classes
    from wmdd.errors import UserError
    train = cifar_root / "train"
    assert resolve_classes(None, train) is None
    assert resolve_classes("3", train) == ["airplane", "automobile", "bird"]
    names = tmp_path / "classes.txt"
    names.write_text("# two classes\nship\n\ncat  # a comment\n")
    assert resolve_classes(str(names), train) == ["cat", "ship"]
    for value, expect in [("11", "has 10 class folders; pass 1 to 10"), ("0", "pass 1 to 10"),
                          (str(tmp_path / "none.txt"), "neither a number of classes nor an existing file")]:
        with pytest.raises(UserError, match=expect):
            resolve_classes(value, train)
    names.write_text("cat\nzebra\n")
    with pytest.raises(UserError, match="not class folders of .*'zebra'"):
        resolve_classes(str(names), train)
    names.write_text("cat\nship\n\ncat # again\n")
    with pytest.raises(UserError, match="classes.txt: line 4 names 'cat' again \\(first on line 1\\); list each"):
        resolve_classes(str(names), train)


def test_an_edited_class_file_makes_a_finished_run_a_different_one(cifar_root, tmp_path, capsys):
    """--classes FILE is recorded by the names it lists: the same command after the file was
    edited is refused with the difference named, not reported as already finished."""
    from wmdd.data.folders import recorded_classes
    names = tmp_path / "classes.txt"
    names.write_text("ship\ncat\n")
    assert recorded_classes(str(names), cifar_root) == ["cat", "ship"]
    assert recorded_classes("3", cifar_root) == "3" and recorded_classes(None, cifar_root) is None
    out = tmp_path / "recover"
    argv = ["--dataset", "cifar10", "--data-path", cifar_root, "--output-dir", out, "--method", "random-real",
            "--ipc", "1", "--classes", names, "--workers", "0"]
    assert _call("recover", argv, capsys)[0] == 0
    assert json.loads((out / "manifest.json").read_text())["args"]["classes"] == ["cat", "ship"]
    assert _call("recover", argv, capsys)[0] == 0  # unchanged file: finished, nothing to do
    before = _snapshot(out)
    names.write_text("ship\ndog\n")
    code, err = _call("recover", argv, capsys)
    assert code == 2 and "a finished recover run with different arguments" in err
    assert "classes: ['cat', 'ship'] there, ['dog', 'ship'] now" in err
    assert _snapshot(out) == before


def test_a_class_subset_runs_through_every_stage_and_is_checked(cifar_root, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    assert _call("pretrain", ["--dataset", "cifar10", "--data-path", cifar_root, "--model", "convnet",
                              "--model-kwargs", "width=8", "--epochs", "1", "--train-per-class", "4",
                              "--val-per-class", "2", "--workers", "0", "--classes", "3",
                              "--output-dir", teacher], capsys)[0] == 0
    assert json.loads((teacher / "manifest.json").read_text())["classes"] == ["airplane", "automobile", "bird"]
    recover = tmp_path / "recover"
    code, err = _call("recover", _recover_args(teacher, cifar_root, recover), capsys)
    assert code == 2 and "the teacher was trained on a class subset: pass its --classes here too" in err
    assert not recover.exists()
    assert _call("recover", _recover_args(teacher, cifar_root, recover) + ["--classes", "3"], capsys)[0] == 0
    assert sorted(p.name for p in (recover / "images").iterdir() if p.is_dir()) == ["airplane", "automobile", "bird"]
    train = tmp_path / "train"
    hard = ["--images", recover / "images", "--hard-labels", "--dataset", "cifar10", "--data-path", cifar_root,
            "--model", "convnet", "--model-kwargs", "width=8", "--epochs", "1", "--workers", "0",
            "--output-dir", train]
    code, err = _call("train", hard, capsys)
    assert code == 2 and "pass the same --classes here" in err
    assert _call("train", hard + ["--classes", "3"], capsys)[0] == 0
    results = json.loads((train / "results.json").read_text())
    assert results["val_images"] == 30 and results["num_images"] == 6


def test_runs_recorded_before_an_option_existed_keep_matching():
    """A finished wmdd run recorded before ``--bn-reduction`` existed (it summed over classes)
    is the same run as today's wmdd (sum) and a different one from today's wmdd-paper (mean)."""
    from wmdd.io.manifest import same_args

    earlier = {"method": "wmdd", "r_bn": 0.01, "lr": 0.05}
    assert same_args(earlier, {**earlier, "bn_reduction": "sum"})
    assert not same_args(earlier, {**earlier, "bn_reduction": "mean"})
    assert same_args({"a": 1}, {"a": 1, "added_later": None}) and not same_args({"a": 1}, {"a": 1, "b": 2})
