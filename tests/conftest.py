"""Shared fixtures: the committed real CIFAR-10 subset (``tests/data``) and a tiny teacher.

Tests read only what the repository ships (``tests/data/cifar10-mini.tar.gz``, see
``tests/data/README.md``) or what an installed package ships (scikit-learn's digits),
so a plain clone passes ``make test`` on any machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _threads_per_worker() -> None:
    """Give each pytest-xdist worker (and every process it starts) its share of the cores.

    torch's default is one thread per core in every process, so N workers on C cores would run
    N x C OpenMP threads that wait on each other; with ``OMP_NUM_THREADS`` = C // N (at least 1)
    the cores are shared instead. An ``OMP_NUM_THREADS`` the user set is kept. Runs before torch
    is imported, which reads the variable once."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))


_threads_per_worker()

from wmdd.data.prepare import extract  # noqa: E402  (after the thread count is set)

REPO = Path(__file__).resolve().parents[1]
#: Real CIFAR-10 (JPEG): 20 train and 10 test images per class, committed (tests/data/README.md).
CIFAR10_MINI = REPO / "tests" / "data" / "cifar10-mini.tar.gz"


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "long: a module of minute-long end-to-end tests, started first "
                                       "(see pytest_collection_modifyitems)")


def pytest_collection_modifyitems(config, items) -> None:
    """Put the modules marked ``long`` (``pytestmark = pytest.mark.long``) first, in file order.

    ``make test`` hands whole modules to two xdist workers in collection order
    (``--dist loadfile --no-loadscope-reorder``); a minute-long module that starts last runs alone
    while the other worker idles, so the long ones start first and the many short ones fill in."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def run_module(module: str, *args: str, check: bool = True, env: dict | None = None,
               process: bool = False) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root: its exit status, stdout and stderr.

    By default the module's ``main`` runs in this process, exactly as ``python -m`` runs it
    (through :func:`wmdd.options.parsing.run_main`, so a user error is the same one line and
    exit status 2): a new interpreter would spend most of a small test's time importing torch
    and torchvision. ``env`` is set for the call (``OMP_NUM_THREADS`` as torch's thread count),
    stdout, stderr and the ``wmdd`` log lines are captured as a process's would be.
    ``process=True`` starts a real ``python -m`` instead (for the entry points themselves).
    """
    if process:
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=full_env,
                              capture_output=True, text=True)
    else:
        proc = _run_in_process(module, [str(a) for a in args], env or {})
    if check and proc.returncode != 0:
        raise AssertionError(f"python -m {module} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _run_in_process(module: str, argv: list[str], env: dict) -> subprocess.CompletedProcess:
    import torch

    from wmdd.runtime.launch import exit_status, stage_main

    main = stage_main(module)
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    log = logging.getLogger("wmdd")
    saved = (log.level, log.propagate, dict(os.environ), os.getcwd(), torch.get_num_threads())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    os.environ.update(env)
    if "OMP_NUM_THREADS" in env:
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = exit_status(main, argv)
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]
        os.environ.clear()
        os.environ.update(saved[2])
        os.chdir(saved[3])
        torch.set_num_threads(saved[4])
    return subprocess.CompletedProcess([sys.executable, "-m", module, *argv], code, out.getvalue(), err.getvalue())


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


def _build_once(tmp_path_factory, name: str, build) -> Path:
    """``build(path)`` once per test session into a directory ``name`` that the session's xdist
    workers share (without xdist, the session's own temporary directory), under a file lock:
    a fixture that costs tens of seconds (a teacher, experts) is then built once per session,
    not once per worker. Returns ``path``."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # pytest-N/, shared by popen-gw*/
    path = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / ".built").is_file():
            shutil.rmtree(path, ignore_errors=True)
            build(path)
            (path / ".built").touch()
    return path


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """Real CIFAR-10: 20 train and 10 test images per class, extracted from the committed archive."""
    return _build_once(tmp_path_factory, "data", lambda p: extract(CIFAR10_MINI, p / "cifar10")) / "cifar10"


def _pretrain_teacher(root: Path, data: Path) -> None:
    proc = run_module("wmdd.pretrain", "--dataset", "cifar10", "--data-path", data, "--model", "resnet18",
                      "--epochs", 2, "--batch-size", 32, "--output-dir", root / "pretrain", "--workers", 0)
    (root / "wmdd.pretrain.log").write_text(proc.stderr)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, cifar_root) -> Path:
    """A ResNet-18 teacher pretrained for 2 epochs on the CIFAR-10 subset (output directory)."""
    return _build_once(tmp_path_factory, "teacher", lambda p: _pretrain_teacher(p, cifar_root)) / "pretrain"


#: ``python -m wmdd.pretrain --experts`` reduced for CPU tests: 1 epoch (paper: 60) on the
#: 20-per-class subset, batch 32 (paper: 64); everything else is the paper's.
EXPERT_FLAGS = ["--dataset", "cifar10", "--experts", "2", "--epochs", "1", "--batch-size", "32", "--workers", "0"]


@pytest.fixture(scope="session")
def experts(tmp_path_factory, cifar_root) -> Path:
    """Two DANCE experts (convnet_in, 1 epoch) on the CIFAR-10 subset (pretrain output directory)."""
    return _build_once(tmp_path_factory, "experts", lambda p: run_module(
        "wmdd.pretrain", *EXPERT_FLAGS, "--data-path", cifar_root, "--output-dir", p / "pretrain",
        env={"OMP_NUM_THREADS": "1"})) / "pretrain"
