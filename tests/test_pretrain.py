"""``python -m wmdd.pretrain`` on real CIFAR-10: outputs, resume after SIGKILL, torchrun, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from tests.conftest import REPO, run_module, torchrun
from wmdd.models.teacher import load_teacher

SMALL = ["--model", "convnet", "--model-kwargs", "width=16", "--batch-size", "32"]


def _pretrain_args(root, out, *extra):
    return ["--dataset", "cifar10", "--data-path", str(root), "--output-dir", str(out), *SMALL, *extra]


def test_pretrain_writes_teacher_manifest_and_metrics(tiny_teacher):
    ckpt = torch.load(tiny_teacher / "teacher.pt", map_location="cpu", weights_only=True)
    assert ckpt["model"] == {"name": "resnet18", "kwargs": {}, "num_classes": 10, "input_size": 32}
    assert ckpt["classes"][0] == "airplane" and ckpt["dataset"]["name"] == "cifar10"
    stats = ckpt["bn_stats"]
    assert stats["per_class_mean"]["bn1"].shape == (10, 64) and stats["per_class_var"]["bn1"].dtype == torch.float64
    assert stats["images_per_class"].tolist() == [20] * 10
    manifest = json.loads((tiny_teacher / "manifest.json").read_text())
    assert manifest["stage"] == "pretrain" and manifest["classes"] == ckpt["classes"]
    assert set(manifest["outputs"]) >= {"teacher.pt", "metrics.jsonl"} and "last.pt" not in manifest["outputs"]
    assert 0 <= manifest["val"]["top1"] <= 100
    lines = [json.loads(x) for x in (tiny_teacher / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1] and all("val_top1" in x for x in lines)
    assert "val top-1" in (tiny_teacher.parent / "wmdd.pretrain.log").read_text()
    teacher = load_teacher(tiny_teacher)
    assert teacher.val == manifest["val"] and teacher.input_size == 32


def test_finished_run_is_skipped_and_other_arguments_refused(tiny_teacher, cifar_root):
    args = ["--dataset", "cifar10", "--data-path", cifar_root, "--model", "resnet18", "--epochs", 2,
            "--batch-size", 32, "--output-dir", tiny_teacher]
    before = (tiny_teacher / "teacher.pt").stat().st_mtime_ns
    proc = run_module("wmdd.pretrain", *args, "--workers", 1)
    assert "already finished" in proc.stderr
    assert (tiny_teacher / "teacher.pt").stat().st_mtime_ns == before
    proc = run_module("wmdd.pretrain", *args[:-2], "--lr", "0.1", "--output-dir", tiny_teacher, check=False)
    assert proc.returncode == 2 and "different arguments is already there (lr: 0.025 there, 0.1 now)" in proc.stderr


def _state(out):
    return torch.load(out / "teacher.pt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("pipeline", ["loader", "device"])
def test_resume_after_sigkill_equals_uninterrupted_run(pipeline, cifar_root, tmp_path):
    epochs = "3"
    flags = ("--epochs", epochs, "--input-pipeline", pipeline)
    run_module("wmdd.pretrain", *_pretrain_args(cifar_root, tmp_path / "full", *flags))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "wmdd.pretrain",
                             *_pretrain_args(cifar_root, killed, *flags)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (killed / "last.pt").exists() and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "manifest.json").exists()
    done = torch.load(killed / "last.pt", map_location="cpu", weights_only=True)["epoch"]
    assert 1 <= done < int(epochs)
    run_module("wmdd.pretrain", *_pretrain_args(cifar_root, killed, *flags))
    a, b = _state(tmp_path / "full"), _state(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = [json.loads(x)["epoch"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert lines == list(range(int(epochs)))


def test_torchrun_statistics_equal_a_single_process_pass(cifar_root, tmp_path):
    torchrun(2, "wmdd.pretrain", *_pretrain_args(cifar_root, tmp_path / "ddp", "--epochs", "1", "--workers", "0"))
    assert (tmp_path / "ddp" / "manifest.json").exists()
    run_module("wmdd.pretrain", "--stats-only", "--teacher", tmp_path / "ddp" / "teacher.pt",
               *_pretrain_args(cifar_root, tmp_path / "single", "--workers", "0"))
    a = torch.load(tmp_path / "ddp" / "teacher.pt", weights_only=True)["bn_stats"]
    b = torch.load(tmp_path / "single" / "teacher.pt", weights_only=True)["bn_stats"]
    assert a["images_per_class"].tolist() == b["images_per_class"].tolist() == [20] * 10
    for key in ("per_class_mean", "per_class_var", "global_mean", "global_var"):
        for name in a["layers"]:
            assert torch.allclose(a[key][name], b[key][name], rtol=1e-9, atol=1e-12), (key, name)


def test_stats_only_accepts_a_plain_torchvision_state_dict(cifar_root, tmp_path):
    from wmdd.models import create_model

    torch.manual_seed(1)
    model = create_model("resnet18", num_classes=10, dataset="cifar10")
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "weights.pth")
    out = tmp_path / "stats"
    run_module("wmdd.pretrain", "--stats-only", "--teacher", tmp_path / "weights.pth", "--dataset", "cifar10",
               "--data-path", cifar_root, "--model", "resnet18", "--output-dir", out, "--workers", "0")
    teacher = load_teacher(out, require_bn_stats=True)
    for k, v in model.state_dict().items():
        assert torch.equal(teacher.model.state_dict()[k], v)
    proc = run_module("wmdd.pretrain", "--stats-only", "--teacher", tmp_path / "weights.pth", "--dataset", "cifar10",
                      "--data-path", cifar_root, "--model", "resnet50", "--output-dir", tmp_path / "x", check=False)
    assert proc.returncode == 2 and "weights do not fit model 'resnet50'" in proc.stderr
    assert str(tmp_path / "weights.pth") in proc.stderr


def test_yaml_config_precedence_and_unknown_keys(cifar_root, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"pretrain": {"epochs": 1, "lr": 0.5, "wd": 0.001}, "recover": {"ipc": 3}}))
    run_module("wmdd.pretrain", "--config", cfg, "--lr", "0.1", *_pretrain_args(cifar_root, tmp_path / "o"))
    resolved = yaml.safe_load((tmp_path / "o" / "config.yaml").read_text())
    assert (resolved["epochs"], resolved["lr"], resolved["wd"]) == (1, 0.1, 0.001)
    cfg.write_text(yaml.safe_dump({"pretrain": {"epoch": 1}}))
    proc = run_module("wmdd.pretrain", "--config", cfg, *_pretrain_args(cifar_root, tmp_path / "p"), check=False)
    assert proc.returncode == 2 and f"{cfg}: unknown pretrain setting 'epoch'" in proc.stderr


def _broken_copy(cifar_root, tmp_path, case):
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    if case == "missing split":
        shutil.rmtree(root / "test")
        return root, str(root / "test")
    if case == "empty class":
        shutil.rmtree(root / "train" / "cat")
        (root / "train" / "cat").mkdir()
        return root, str(root / "train" / "cat")
    if case == "corrupt image":
        bad = sorted((root / "train" / "frog").iterdir())[3]
        bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
        return root, str(bad)
    if case == "class mismatch":
        (root / "test" / "ship").rename(root / "test" / "boat")
        return root, str(root / "test")
    raise ValueError(case)


@pytest.mark.parametrize("case", ["missing split", "empty class", "corrupt image", "class mismatch"])
def test_bad_input_exits_non_zero_naming_the_path(cifar_root, tmp_path, case):
    root, path = _broken_copy(cifar_root, tmp_path, case)
    out = tmp_path / "out"
    proc = run_module("wmdd.pretrain", *_pretrain_args(root, out, "--epochs", "1", "--workers", "2"), check=False)
    assert proc.returncode == 2, proc.stderr
    assert path in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "manifest.json").exists()


def test_unknown_dataset_exits_non_zero(cifar_root, tmp_path):
    proc = run_module("wmdd.pretrain", "--dataset", "cifar11", "--data-path", cifar_root, "--output-dir",
                      tmp_path / "o",
                      check=False)
    assert proc.returncode == 2 and "unknown dataset 'cifar11'" in proc.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()
