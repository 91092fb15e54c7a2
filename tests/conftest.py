"""Shared fixtures: the committed real CIFAR-10 subset (``tests/data``) and a tiny teacher.

Tests read only what the repository ships (``tests/data/cifar10-mini.tar.gz``, see
``tests/data/README.md``) or what an installed package ships (scikit-learn's digits),
so a plain clone passes ``make test`` on any machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wmdd.data.prepare import extract

REPO = Path(__file__).resolve().parents[1]
#: Real CIFAR-10 (JPEG): 20 train and 10 test images per class, committed (tests/data/README.md).
CIFAR10_MINI = REPO / "tests" / "data" / "cifar10-mini.tar.gz"


def run_module(module: str, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` from the repository root and return the result."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=full_env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"python -m {module} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def torchrun(nproc: int, module: str, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node nproc -m module args`` (gloo on CPU)."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", "-m", module, *map(str, args)], cwd=REPO,
                          capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise AssertionError(f"torchrun -m {module} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def kill_when(cmd: list[str], marker: Path, env: dict | None = None) -> None:
    """Start ``cmd`` from the repository root and SIGKILL it as soon as ``marker`` exists
    (or it exits): a killed run for resume tests. No wall-clock limit: a busy machine is slower,
    not wrong."""
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not marker.exists() and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """Real CIFAR-10: 20 train and 10 test images per class, extracted from the committed archive."""
    return extract(CIFAR10_MINI, tmp_path_factory.mktemp("data") / "cifar10")


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, cifar_root) -> Path:
    """A ResNet-18 teacher pretrained for 2 epochs on the CIFAR-10 subset (output directory)."""
    out = tmp_path_factory.mktemp("teacher") / "pretrain"
    proc = run_module("wmdd.pretrain", "--dataset", "cifar10", "--data-path", cifar_root, "--model", "resnet18",
                      "--epochs", 2, "--batch-size", 32, "--output-dir", out, "--workers", 0)
    (out.parent / "wmdd.pretrain.log").write_text(proc.stderr)
    return out


#: ``python -m wmdd.pretrain --experts`` reduced for CPU tests: 1 epoch (paper: 60) on the
#: 20-per-class subset, batch 32 (paper: 64); everything else is the paper's.
EXPERT_FLAGS = ["--dataset", "cifar10", "--experts", "2", "--epochs", "1", "--batch-size", "32", "--workers", "0"]


@pytest.fixture(scope="session")
def experts(tmp_path_factory, cifar_root) -> Path:
    """Two DANCE experts (convnet_in, 1 epoch) on the CIFAR-10 subset (pretrain output directory)."""
    out = tmp_path_factory.mktemp("experts") / "pretrain"
    run_module("wmdd.pretrain", *EXPERT_FLAGS, "--data-path", cifar_root, "--output-dir", out,
               env={"OMP_NUM_THREADS": "1"})
    return out
