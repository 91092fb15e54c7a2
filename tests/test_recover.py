"""``python -m wmdd.recover`` on real CIFAR-10 with the tiny teacher: WMDD synthesis, presets, bad input.

Resume after SIGKILL and ``torchrun`` sharding are checked for every registered method
in tests/test_recover_methods.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.conftest import run_module
from wmdd.data.folders import image_folder, split_dir
from wmdd.data.transforms import eval_transform, to_normalized_tensor
from wmdd.models import penultimate_features
from wmdd.models.teacher import load_teacher
from wmdd.recover.batches import class_batches
from wmdd.runtime.training import derive_seed


def _recover(teacher, root, out, *extra, check=True, env=None):
    return run_module("wmdd.recover", "--teacher", teacher, "--data-path", root, "--output-dir", out, "--workers", "0",
                      *extra, check=check, env=env)


@pytest.fixture(scope="module")
def wmdd_run(tiny_teacher, cifar_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("recover") / "wmdd"
    _recover(tiny_teacher, cifar_root, out, "--method", "wmdd-paper", "--ipc", "2", "--batch-size", "20",
             "--iterations", "60", "--r-bn", "0.01", "--log-every", "20")
    return out


def _load_pngs(out, classes, ipc):
    return np.stack([np.asarray(Image.open(out / "images" / c / f"{i:04d}.png")) for c in classes for i in range(ipc)])


def test_wmdd_recover_writes_images_and_the_loss_falls(wmdd_run, tiny_teacher):
    manifest = json.loads((wmdd_run / "manifest.json").read_text())
    assert manifest["stage"] == "recover" and manifest["num_images"] == 20
    assert manifest["args"]["wb"] is True and manifest["args"]["per_class_bn"] is True
    initial, final = manifest["loss"]["initial"][0], manifest["loss"]["final"][0]
    assert final < 0.8 * initial, (initial, final)
    teacher = load_teacher(tiny_teacher)
    pngs = _load_pngs(wmdd_run, teacher.classes, 2)
    assert pngs.shape == (20, 32, 32, 3) and pngs.dtype == np.uint8
    assert (wmdd_run / "grid.png").is_file() and Image.open(wmdd_run / "grid.png").size[1] > 10 * 32
    weights = pd.read_csv(wmdd_run / "sample_weights.csv")
    assert list(weights.columns) == ["image_path", "weight"] and len(weights) == 20
    assert (weights["weight"] == 1.0).all() and weights["image_path"][0] == "airplane/0000.png"
    bary = torch.load(wmdd_run / "barycenters.pt", weights_only=True)
    assert bary["support"].shape == (10, 2, 512) and bary["support"].dtype == torch.float32
    assert torch.allclose(bary["weights"], torch.full((10, 2), 0.5))
    lines = [json.loads(x) for x in (wmdd_run / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [0, 19, 39, 59]


def test_synthetic_features_are_closer_to_the_barycenter_than_the_initial_noise(wmdd_run, tiny_teacher):
    teacher = load_teacher(tiny_teacher)
    support = torch.load(wmdd_run / "barycenters.pt", weights_only=True)["support"].reshape(20, -1)
    pngs = _load_pngs(wmdd_run, teacher.classes, 2)
    norm = to_normalized_tensor(teacher.spec)
    images = torch.stack([norm(Image.fromarray(p)) for p in pngs])
    torch.manual_seed(derive_seed(0, "recover-batch", 0))
    noise = torch.randn(20, 3, 32, 32)
    with torch.no_grad():
        d_final = (penultimate_features(teacher.model, images) - support).norm(dim=1)
        d_noise = (penultimate_features(teacher.model, noise) - support).norm(dim=1)
    assert d_final.mean() < d_noise.mean(), (d_final.mean(), d_noise.mean())


def test_feature_cache_is_reused_and_recomputed_when_stale(wmdd_run, tiny_teacher, cifar_root, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(wmdd_run, out)
    for p in ("manifest.json", "barycenters.pt", ".run_args.json"):
        (out / p).unlink()
    shutil.rmtree(out / "progress")
    shutil.rmtree(out / "images")  # a folder of images with no recover run recorded beside it is refused
    proc = _recover(tiny_teacher, cifar_root, out, "--method", "wmdd-paper", "--ipc", "2", "--batch-size", "20",
                    "--iterations", "2")
    assert "using cached class features" in proc.stderr
    cache = torch.load(out / "features.pt", weights_only=True)
    cache["key"]["teacher_sha256"] = "0" * 64
    torch.save(cache, out / "features.pt")
    (out / "manifest.json").unlink()
    (out / "barycenters.pt").unlink()
    shutil.rmtree(out / "progress")
    proc = _recover(tiny_teacher, cifar_root, out, "--method", "wmdd-paper", "--ipc", "2", "--batch-size", "20",
                    "--iterations", "2")
    assert "is stale (teacher_sha256 changed); recomputing" in proc.stderr


def test_runs_sharing_a_cache_dir_reuse_its_features_and_barycenters(tiny_teacher, cifar_root, tmp_path):
    cache = tmp_path / "cache"
    args = ("--method", "medoids", "--ipc", "2", "--cache-dir", str(cache))
    first = _recover(tiny_teacher, cifar_root, tmp_path / "a", *args)
    assert "using cached" not in first.stderr
    assert len(list(cache.glob("features-*.pt"))) == 1 and len(list(cache.glob("barycenters-*.pt"))) == 1
    second = _recover(tiny_teacher, cifar_root, tmp_path / "b", *args)
    assert "using cached barycenters" in second.stderr
    a, b = (torch.load(tmp_path / d / "barycenters.pt", weights_only=True) for d in "ab")
    assert torch.equal(a["support"], b["support"]) and torch.equal(a["medoids"], b["medoids"])
    assert not (tmp_path / "a" / "features.pt").exists() and not (tmp_path / "b" / "features.pt").exists()
    other = _recover(tiny_teacher, cifar_root, tmp_path / "c", "--method", "medoids", "--ipc", "3",
                     "--cache-dir", str(cache))  # another key: the features are reused, the barycenters not
    assert "using cached class features" in other.stderr and "using cached barycenters" not in other.stderr
    assert len(list(cache.glob("barycenters-*.pt"))) == 2
    refused = _recover(tiny_teacher, cifar_root, tmp_path / "d", "--method", "random-real", "--cache-dir",
                       str(cache), check=False)
    assert refused.returncode == 2 and "--cache-dir" in refused.stderr


def test_class_batches():
    assert class_batches(10, 2, 4) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert class_batches(10, 50, 100) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert class_batches(3, 200, 100) == [[0], [1], [2]]
    assert class_batches(10, 3, 100) == [list(range(10))]


def test_random_real_copies_seeded_real_images(tiny_teacher, cifar_root, tmp_path):
    out = tmp_path / "rr"
    _recover(tiny_teacher, cifar_root, out, "--method", "random-real", "--ipc", "3")
    teacher = load_teacher(tiny_teacher)
    ds = image_folder(split_dir(cifar_root, "train"), eval_transform(teacher.spec, 32))
    sources = {tuple(np.asarray(Image.open(p).convert("RGB")).ravel()[:64]) for p, _ in ds.samples}
    for c in teacher.classes:
        files = sorted((out / "images" / c).glob("*.png"))
        assert len(files) == 3
        for f in files:
            assert tuple(np.asarray(Image.open(f)).ravel()[:64]) in sources
    assert json.loads((out / "manifest.json").read_text())["method"] == "random-real"


def test_sre2l_preset(tiny_teacher, cifar_root, tmp_path):
    out = tmp_path / "sre2l"
    _recover(tiny_teacher, cifar_root, out, "--method", "sre2l", "--ipc", "1", "--iterations", "3")
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["args"]["wb"], manifest["args"]["per_class_bn"], manifest["args"]["r_ce"]) == (False, False, 1.0)
    assert "barycenters.pt" not in manifest["outputs"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert "ce" in lines[0] and "bn" in lines[0] and "feature" not in lines[0]


def _teacher_without_stats(tiny_teacher, tmp_path):
    ckpt = torch.load(tiny_teacher / "teacher.pt", weights_only=True)
    ckpt["bn_stats"] = None
    torch.save(ckpt, tmp_path / "nostats.pt")
    return tmp_path / "nostats.pt"


@pytest.mark.parametrize("case", ["class list", "ipc too large", "no statistics", "missing teacher",
                                  "corrupt teacher"])
def test_bad_input_exits_non_zero_without_manifest(case, tiny_teacher, cifar_root, tmp_path):
    teacher, root, extra = tiny_teacher, cifar_root, ["--ipc", "2", "--iterations", "2"]
    if case == "class list":
        root = tmp_path / "data"
        shutil.copytree(cifar_root, root)
        (root / "train" / "ship").rename(root / "train" / "boat")
        (root / "test" / "ship").rename(root / "test" / "boat")
        expect = "class list differs from the teacher's"
    elif case == "ipc too large":
        extra = ["--ipc", "21", "--init", "real"]
        expect = ("--ipc 21: --method wmdd --init real starts each class from 84 real images (4 per stored image: "
                  "multi-formation tiles), but class 'airplane' has 20 train images; pass --ipc 5 or fewer")
    elif case == "no statistics":
        teacher = _teacher_without_stats(tiny_teacher, tmp_path)
        expect = f"{teacher}: teacher has no per-class BatchNorm statistics"
    elif case == "missing teacher":
        teacher = tmp_path / "nowhere" / "teacher.pt"
        expect = f"{teacher}: teacher checkpoint file not found"
    else:
        teacher = tmp_path / "teacher.pt"
        teacher.write_bytes((tiny_teacher / "teacher.pt").read_bytes()[:1000])
        expect = f"{teacher}: cannot load teacher checkpoint"
    out = tmp_path / "out"
    proc = _recover(teacher, root, out, *extra, check=False)
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr
    assert not (out / "manifest.json").exists()
