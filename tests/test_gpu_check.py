"""benchmarks/gpu_check.sh, the prepared GPU check, dry-run on the CPU with tiny budgets on the
committed CIFAR-10 subset: every step runs and prints what RESULTS.md records from it (but the
operator counts, which tests/test_op_counts.py runs itself)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import CIFAR10_MINI, REPO

pytestmark = pytest.mark.long  # minutes of end-to-end runs: started first (tests/conftest.py)

DRY_RUN = {"DEVICE": "cpu", "ITERATIONS": "2", "EPOCHS": "1", "BENCH_ITERS": "1", "ROUNDS": "1", "BENCH_IPC": "2",
           "BATCH_REAL": "4", "SIZE": "32", "PRETRAIN_PER_CLASS": "8", "STUDENT_IPC": "4", "OP_METHODS": "",
           "TIME_SCALE": "20", "WORKERS": "0", "PIPELINE": "device"}


def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    env = {**os.environ, **DRY_RUN, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(REPO / "benchmarks" / "gpu_check.sh"), str(CIFAR10_MINI), str(tmp_path / "out")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "== failed steps: none" in out
    for printed in ("ratio dm / bare:", "ratio ddm / bare:", "ratio dance / dm:", "recover iteration:",
                    "(device split)", "pretrain loop:", "train loop:", "| dsa | 10 | dm |",
                    "| dsa | 10 | random-real |"):
        assert printed in out, printed
    for method in ("dm", "random-real"):
        assert (tmp_path / "out" / "dm-paper" / f"{method}-ipc10-s0" / "train-dsa" / "results.json").is_file()


def test_gpu_check_refuses_a_missing_archive(tmp_path):
    proc = subprocess.run([str(REPO / "benchmarks" / "gpu_check.sh"), str(tmp_path / "none.tar.gz"), str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "the archive must exist" in proc.stderr
