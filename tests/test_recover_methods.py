"""Every registered recover method through ``python -m recover`` on real CIFAR-10:
artifacts, resume after SIGKILL, ``torchrun`` sharding; the WMDD family's outputs
are unchanged by the registry; bad input is refused before anything is written."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from models import create_model
from models.teacher import load_teacher
from recover.methods import get_method, method_names
from tests.conftest import kill_when, run_module, torchrun

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
#: Per method: IPC 2, 2 classes per batch (5 batches), a few iterations.
SMALL = ["--ipc", "2", "--batch-size", "4", "--iterations", "4", "--log-every", "2"]
METHOD_FLAGS = {"dm": ["--batch-real", "8"], "ddm": ["--batch-real", "8"],
                "dance": ["--batch-real", "8", "--num-experts", "2"]}


def _recover(teacher, root, out, *extra, check=True, env=None):
    return run_module("recover", "--teacher", teacher, "--data-path", root, "--output-dir", out, "--workers", "0",
                      *extra, check=check, env=env)


def _args(method, experts=None):
    """The flags of ``method``'s small run; ``experts``: the experts directory (dance)."""
    flags = SMALL if get_method(method).optimizes else ["--ipc", "2", "--batch-size", "4"]
    own = ["--experts", str(experts)] if method == "dance" else []
    return ["--method", method, *flags, *METHOD_FLAGS.get(method, []), *own]


def _pngs(out, classes):
    return [np.asarray(Image.open(out / "images" / c / f"{i:04d}.png")) for c in classes for i in range(2)]


def _same_images(a, b, classes):
    for x, y in zip(_pngs(a, classes), _pngs(b, classes)):
        assert np.array_equal(x, y)


def test_every_shipped_method_is_registered():
    assert {"wmdd", "wmdd-paper", "sre2l", "random-real", "medoids", "dm", "ddm", "dance"} <= set(method_names())


@pytest.fixture(scope="module", params=method_names())
def method_run(request, tiny_teacher, cifar_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("methods") / request.param
    flags = _args(request.param, request.getfixturevalue("experts") if request.param == "dance" else None)
    _recover(tiny_teacher, cifar_root, out, *flags, env=ONE_THREAD)
    return request.param, out, flags


def test_method_writes_images_grid_and_manifest(method_run, tiny_teacher):
    method, out, _ = method_run
    classes = load_teacher(tiny_teacher).classes
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == method and manifest["num_images"] == 20 and manifest["classes"] == classes
    pngs = _pngs(out, classes)
    assert len(pngs) == 20 and all(p.shape == (32, 32, 3) and p.dtype == np.uint8 for p in pngs)
    assert Image.open(out / "grid.png").size[1] > 10 * 32
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    if not get_method(method).optimizes:
        assert lines == []
    else:
        assert sorted({x["iteration"] for x in lines}) == [0, 1, 3] and len(lines) == 15
        assert all(np.isfinite(x["loss"]) for x in lines)


def test_method_resumes_after_sigkill_with_identical_images(method_run, tiny_teacher, cifar_root, tmp_path):
    method, full, flags = method_run
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "recover", "--teacher", str(tiny_teacher), "--data-path", str(cifar_root),
           "--output-dir", str(out), "--workers", "0", *flags]
    kill_when(cmd, out / "progress" / "batch_00001.json", ONE_THREAD)
    if (out / "manifest.json").exists():
        pytest.skip(f"{method} finished before it could be killed")
    done = len(list((out / "progress").glob("batch_*.json")))
    resumed = _recover(tiny_teacher, cifar_root, out, *flags, env=ONE_THREAD)
    assert f"({5 - done} to do on this rank)" in resumed.stderr
    _same_images(full, out, load_teacher(tiny_teacher).classes)


def test_method_under_two_rank_torchrun_equals_one_rank(method_run, tiny_teacher, cifar_root, tmp_path):
    method, full, flags = method_run
    out = tmp_path / "ddp"
    torchrun(2, "recover", "--teacher", tiny_teacher, "--data-path", cifar_root, "--output-dir", out,
             "--workers", "0", *flags)
    assert (out / "manifest.json").exists()
    _same_images(full, out, load_teacher(tiny_teacher).classes)


@pytest.fixture(scope="module")
def init_teacher(cifar_root, tmp_path_factory):
    """An untrained ResNet-18 (``torch.manual_seed(0)``) with BN statistics from ``pretrain
    --stats-only``: a teacher whose weights do not depend on training's floating-point
    scheduling, so image digests recorded with it are reproducible."""
    out = tmp_path_factory.mktemp("init-teacher")
    torch.manual_seed(0)
    torch.save(create_model("resnet18", num_classes=10, dataset="cifar10").state_dict(), out / "weights.pth")
    run_module("pretrain", "--stats-only", "--teacher", out / "weights.pth", "--model", "resnet18", "--dataset",
               "cifar10", "--data-path", cifar_root, "--output-dir", out / "teacher", "--workers", "0",
               env=ONE_THREAD)
    return out / "teacher"


#: sha256 of ``sha256sum`` lines of the sorted PNGs of each run below, made with the code
#: of commit 6465a73 (before the method registry), ``init_teacher`` and OMP_NUM_THREADS=1.
#: The float kernels torch picks depend on the CPU, so each digest set holds one entry
#: per machine on which 6465a73 was run: the first development machine, and an Intel Xeon
#: with AVX-512 (2026-12-02: 6465a73 and 8018323 gave the same images there).
#: 6465a73's ``--method wmdd`` (WMDD's published defaults) is ``--method wmdd-paper`` now.
BEFORE_REGISTRY = {
    "wmdd-paper": ({"5fff185622be17162be6b033a1dac08b1d5185d4d040cce8a8f1fc24467b8b6a",
                    "2bced8e774623ec920b9da74c869f3147d06e7fd2ad163f35025420fd937cb06"}, ["--method", "wmdd-paper"]),
    "sre2l": ({"d8c011feac7b2f310edd6d56468045dc881b12545e437e7452c53fc1bac6f935",
               "1eb39efcfccfc9a6111afbd50ca9483369c6c766b37a575e307abb55c973ab7e"}, ["--method", "sre2l"]),
    "random-real": ({"6f7fb84e3e51ea5378d3a23eb8ca35f52c5f5cb6d92d68e98b663c21b6c36e8a"},
                    ["--method", "random-real"]),
    "wmdd-init-real": ({"4845fef69e280553786aa0d46dee33a2429274902d378009b29c5b74f6ef3729",
                        "106af721afd148102caff91c78c17cb176a57f00108d2ab1e8da28cc0a9c3cb2"},
                       ["--method", "wmdd-paper", "--init", "real", "--no-per-class-bn"]),
}


@pytest.mark.parametrize("case", sorted(BEFORE_REGISTRY))
def test_wmdd_family_images_are_bit_identical_to_before_the_registry(case, init_teacher, cifar_root, tmp_path):
    digests, flags = BEFORE_REGISTRY[case]
    out = tmp_path / case
    _recover(init_teacher, cifar_root, out, *flags, "--ipc", "2", "--batch-size", "4", "--iterations", "8",
             env=ONE_THREAD)
    files = sorted((out / "images").rglob("*.png"), key=lambda f: str(f.relative_to(out / "images")))
    lines = "".join(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  ./{f.relative_to(out / 'images')}\n"
                    for f in files)
    digest = hashlib.sha256(lines.encode()).hexdigest()
    assert digest in digests, (f"{case}: {digest} differs from 6465a73's images on every machine recorded; on a new "
                               "machine, run this case with 6465a73 there and add its digest if it equals this one")


def test_dm_runs_without_a_teacher(cifar_root, tmp_path):
    out = tmp_path / "dm"
    run_module("recover", "--dataset", "cifar10", "--data-path", cifar_root, "--output-dir", out, "--workers", "0",
               "--method", "dm", "--ipc", "1", "--iterations", "2", "--batch-real", "4")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] is None and manifest["inputs"] == {} and manifest["num_images"] == 10


@pytest.mark.parametrize("case,flags,expect", [
    ("ipc larger than a class", ["--method", "dm", "--ipc", "21"], "20 images, fewer than --ipc 21"),
    ("unknown style", ["--method", "ddm", "--style", "texture"], "--style 'texture': expected one of both, mm"),
    ("negative weight", ["--method", "ddm", "--icd-weight", "-1"],
     "argument --icd-weight: '-1' is out of range: expected a number >= 0"),
    ("negative style weight", ["--method", "ddm", "--style-weight", "-5"], "--style-weight: '-5'"),
    ("unknown DSA family", ["--method", "dm", "--dsa-strategy", "color_blur"], "blur"),
    ("other method's option", ["--method", "dm", "--r-bn", "0.1"], "--r-bn is an option of --method sre2l, wmdd"),
    ("wmdd option on random-real", ["--method", "random-real", "--wb"], "--wb is an option of --method"),
    ("zero learning rate", ["--method", "dm", "--lr", "0"],
     "argument --lr: '0' is out of range: expected a number > 0"),
    ("teacher needed", ["--method", "wmdd", "--no-teacher"], "--method wmdd needs --teacher"),
])
def test_bad_method_input_is_refused_before_anything_is_written(case, flags, expect, tiny_teacher, cifar_root,
                                                                tmp_path):
    out = tmp_path / "out"
    teacher = [] if "--no-teacher" in flags else ["--teacher", tiny_teacher]
    flags = [f for f in flags if f != "--no-teacher"]
    proc = run_module("recover", *teacher, "--dataset", "cifar10", "--data-path", cifar_root, "--output-dir", out,
                      "--workers", "0", "--iterations", "1", *flags, check=False)
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
