"""Barycenter medoids on real CIFAR-10 teacher features: the one-to-one assignment against
a brute-force minimum, ``--method medoids`` (copies of the chosen real images) and
``--init medoid`` (WMDD starting from them)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.conftest import run_module
from wmdd.data.folders import image_folder, load_image, split_dir
from wmdd.data.transforms import eval_transform
from wmdd.errors import UserError
from wmdd.models.teacher import load_teacher
from wmdd.recover.barycenter import exact_barycenter
from wmdd.recover.features import extract_features
from wmdd.recover.medoids import medoid_assignment
from wmdd.recover.multiformation import encode

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def class_features(tiny_teacher, cifar_root):
    """Teacher penultimate features ``[20, 512]`` float64 of each CIFAR-10 class's real train images."""
    teacher = load_teacher(tiny_teacher)
    ds = image_folder(split_dir(cifar_root, "train"), eval_transform(teacher.spec, 32))
    feats, labels = extract_features(teacher, ds, torch.device("cpu"), workers=0, show_progress=False)
    return {c: feats[labels == c].double().numpy() for c in range(10)}


def brute_force(features: np.ndarray, support: np.ndarray) -> list[tuple[float, tuple[int, ...]]]:
    """Total Euclidean distance of every injective map support -> features, cheapest first."""
    dist = np.sqrt(((support[:, None] - features[None]) ** 2).sum(-1))
    rows = np.arange(len(support))
    return sorted((float(dist[rows, list(p)].sum()), p)
                  for p in itertools.permutations(range(len(features)), len(support)))


@pytest.mark.parametrize("c,n,k", [(0, 6, 3), (3, 7, 3), (5, 8, 4), (9, 8, 4)])
def test_assignment_is_one_to_one_and_the_brute_force_minimum(class_features, c, n, k):
    """Support: the barycenter of all 20 images of the class; candidates: N of them
    (a barycenter of the N candidates themselves would sit at midpoints, with ties)."""
    x = class_features[c][:n]
    support = exact_barycenter(class_features[c], k, seed=c).support
    idx = medoid_assignment(x, support)
    assert idx.dtype == np.int64 and idx.shape == (k,) and len(set(idx.tolist())) == k
    (best, best_map), (second, _) = brute_force(x, support)[:2]
    assert second > best * (1 + 1e-9)  # the optimum is unique, so the map itself must match
    assert tuple(idx.tolist()) == best_map
    assert np.isclose(np.linalg.norm(support - x[idx], axis=1).sum(), best, rtol=1e-12)


def test_assignment_is_not_the_nearest_neighbour_when_two_points_share_one(class_features):
    """Two support points whose nearest real feature is the same: one of them takes another image."""
    x = class_features[2][:6]
    support = np.stack([x[0] + 1e-3, x[0] - 1e-3, x[4]])
    idx = medoid_assignment(x, support)
    assert idx[2] == 4 and 0 in idx[:2] and len(set(idx.tolist())) == 3
    assert np.isclose(np.linalg.norm(support - x[idx], axis=1).sum(), brute_force(x, support)[0][0], rtol=1e-12)


def test_assignment_refuses_bad_shapes_and_too_many_points(class_features):
    x = class_features[1][:5]
    with pytest.raises(UserError, match="6 support points .* only 5 images .* lower --ipc"):
        medoid_assignment(x, class_features[1][:6])
    with pytest.raises(ValueError, match="feature dimension 512 differs from the support's 3"):
        medoid_assignment(x, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-empty 2-D arrays"):
        medoid_assignment(x[0], x[:2])


def _recover(teacher, root, out, *flags):
    return run_module("wmdd.recover", "--teacher", teacher, "--data-path", root, "--output-dir", out, "--workers", "0",
                      "--ipc", "2", "--batch-size", "4", *flags, env=ONE_THREAD)


@pytest.fixture(scope="module")
def medoid_run(tiny_teacher, cifar_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("medoids") / "medoids"
    _recover(tiny_teacher, cifar_root, out, "--method", "medoids")
    return out


def test_medoids_method_copies_the_assigned_real_images(medoid_run, tiny_teacher, cifar_root):
    out = medoid_run
    classes = load_teacher(tiny_teacher).classes
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "medoids" and manifest["args"]["init"] == "medoid"
    assert {"sources.csv", "barycenters.pt"} <= set(manifest["outputs"])
    sources = pd.read_csv(out / "sources.csv")
    assert sources["image_path"].tolist() == [f"{c}/{i:04d}.png" for c in classes for i in range(2)]
    # the chosen images are the medoid assignment of the saved features and barycenter support
    cache = torch.load(out / "features.pt", weights_only=True)
    bary = torch.load(out / "barycenters.pt", weights_only=True)
    ds = image_folder(split_dir(cifar_root, "train"), eval_transform(load_teacher(tiny_teacher).spec, 32))
    for k, c in enumerate(classes):
        members = np.flatnonzero(cache["labels"].numpy() == k)
        idx = medoid_assignment(cache["features"][members].double().numpy(), bary["support"][k].double().numpy())
        expected = [f"{c}/{ds.samples[members[i]][0].rsplit('/', 1)[-1]}" for i in idx]
        assert sources["source_path"][2 * k:2 * k + 2].tolist() == expected
    for image, source in zip(sources["image_path"], sources["source_path"]):
        png = np.asarray(Image.open(out / "images" / image))
        real = np.asarray(Image.open(cifar_root / "train" / source).convert("RGB"))
        assert png.shape == (32, 32, 3) and np.array_equal(png, real), image


def test_init_medoid_starts_wmdd_from_the_medoid_images(medoid_run, tiny_teacher, cifar_root, tmp_path):
    """One WMDD step at lr 1e-6 moves no pixel by half an 8-bit level: the saved images are the start."""
    out = tmp_path / "wmdd-medoid"
    _recover(tiny_teacher, cifar_root, out, "--method", "wmdd-paper", "--init", "medoid", "--iterations", "1",
             "--lr", "1e-6")
    assert (out / "sources.csv").read_bytes() == (medoid_run / "sources.csv").read_bytes()
    classes = load_teacher(tiny_teacher).classes
    for c in classes:
        for i in range(2):
            name = f"{c}/{i:04d}.png"
            assert np.array_equal(np.asarray(Image.open(out / "images" / name)),
                                  np.asarray(Image.open(medoid_run / "images" / name))), name
    real = tmp_path / "wmdd-real"
    _recover(tiny_teacher, cifar_root, real, "--method", "wmdd-paper", "--init", "real", "--iterations", "1",
             "--lr", "1e-6")
    assert not pd.read_csv(real / "sources.csv").equals(pd.read_csv(out / "sources.csv"))


def test_medoids_with_factor_2_tile_the_medoids_of_four_support_points_per_image(tiny_teacher, cifar_root,
                                                                                   tmp_path):
    """``--factor 2``: IPC x 4 support points per class, one medoid per tile; WMDD from that
    start (its defaults) sees the decoded images (its support has 4 rows per stored image)."""
    out = tmp_path / "medoids-f2"
    _recover(tiny_teacher, cifar_root, out, "--method", "medoids", "--factor", "2")
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["factor"], manifest["decoded_images"], manifest["num_images"]) == (2, 80, 20)
    bary = torch.load(out / "barycenters.pt", weights_only=True)
    assert bary["support"].shape[:2] == (10, 8) and bary["medoids"].shape == (10, 8)
    cache = torch.load(out / "features.pt", weights_only=True)
    for k in range(10):
        members = np.flatnonzero(cache["labels"].numpy() == k)
        idx = medoid_assignment(cache["features"][members].double().numpy(), bary["support"][k].double().numpy())
        assert bary["medoids"][k].tolist() == members[idx].tolist()
    sources = pd.read_csv(out / "sources.csv")
    assert len(sources) == 80 and sources["source_path"].is_unique
    spec = load_teacher(tiny_teacher).spec
    to_float = eval_transform(spec, 32)
    real = torch.stack([to_float(load_image(str(cifar_root / "train" / p))) for p in sources["source_path"]])
    stored = torch.stack([to_float(load_image(str(out / "images" / p))) for p in sources["image_path"][::4]])
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    assert ((stored - encode(real, 2)) * std).abs().max() <= 0.5 / 255 + 1e-5
    wmdd = tmp_path / "wmdd-f2"
    _recover(tiny_teacher, cifar_root, wmdd, "--method", "wmdd", "--iterations", "1", "--lr", "1e-6")  # its defaults
    assert json.loads((wmdd / "manifest.json").read_text())["factor"] == 2
    assert (wmdd / "sources.csv").read_bytes() == (out / "sources.csv").read_bytes()
    for name in sources["image_path"][::4]:  # tile averages can sit on a rounding boundary: 1 level
        moved = np.asarray(Image.open(wmdd / "images" / name), dtype=np.int16)
        assert np.abs(moved - np.asarray(Image.open(out / "images" / name), dtype=np.int16)).max() <= 1, name


@pytest.mark.parametrize("flags,expect", [
    (["--method", "wmdd", "--factor", "2", "--weight-wb"], "--weight-wb gives one weight per decoded image"),
    (["--method", "wmdd", "--weight-wb"], "defaults to --factor 2); add --factor 1 or drop --weight-wb"),
    (["--method", "dm", "--init", "medoid"], "--init medoid does not apply to --method dm (it accepts noise, real)"),
    (["--method", "random-real", "--init", "noise"], "--init noise does not apply to --method random-real"),
    (["--method", "medoids", "--init", "real"], "--init real does not apply to --method medoids (it accepts medoid)"),
])
def test_init_outside_the_methods_choices_is_refused(flags, expect, tiny_teacher, cifar_root, tmp_path):
    proc = run_module("wmdd.recover", "--teacher", tiny_teacher, "--data-path", cifar_root, "--output-dir",
                      tmp_path / "out", *flags, check=False)
    assert proc.returncode == 2 and expect in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
