"""``python -m common.prepare``: archive extraction, digits, Tiny-ImageNet layout."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from common.errors import UserError
from common.prepare import build_digits, extract, reorganize_tiny_imagenet
from tests.conftest import run_module


def test_extract_subset_of_real_cifar10(cifar_root):
    for split, n in (("train", 20), ("test", 10)):
        counts = {d.name: len(list(d.iterdir())) for d in (cifar_root / split).iterdir()}
        assert len(counts) == 10 and set(counts.values()) == {n}
    assert (cifar_root / ".prepared.json").is_file()


def test_extract_is_idempotent_and_refuses_other_options(cifar_root, shared):
    assert extract(shared / "cifar10-jpg.tar.gz", cifar_root, 20, 10, 0) == cifar_root
    with pytest.raises(UserError, match="prepared with other options"):
        extract(shared / "cifar10-jpg.tar.gz", cifar_root, 5, 5, 0)


def _zip_from(cifar_root, path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for rel in members:
            zf.write(cifar_root / rel, "mydata/" + rel)


def test_extract_zip_with_a_top_level_folder(cifar_root, tmp_path):
    members = [str(p.relative_to(cifar_root)) for p in sorted(cifar_root.rglob("*.jpg"))]
    _zip_from(cifar_root, tmp_path / "c.zip", members)
    dest = extract(tmp_path / "c.zip", tmp_path / "out", train_per_class=3)
    assert sorted(p.name for p in dest.iterdir() if p.is_dir()) == ["test", "train"]
    assert len(list((dest / "train" / "cat").iterdir())) == 3
    assert len(list((dest / "test" / "cat").iterdir())) == 10


def test_extract_refuses_paths_outside_the_destination(cifar_root, tmp_path):
    img = next((cifar_root / "train" / "cat").iterdir())
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.write(img, "train/cat/a.jpg")
        zf.write(img, "test/cat/a.jpg")
        zf.writestr("train/cat/../../../evil.jpg", img.read_bytes())
    with pytest.raises(UserError, match="outside the destination"):
        extract(tmp_path / "evil.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_prepare_cli_errors_name_the_archive(tmp_path):
    proc = run_module("common.prepare", "extract", tmp_path / "none.tar.gz", tmp_path / "x", check=False)
    assert proc.returncode == 2 and f"{tmp_path / 'none.tar.gz'}: archive not found" in proc.stderr
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tarball")
    proc = run_module("common.prepare", "extract", tmp_path / "bad.tar.gz", tmp_path / "x", check=False)
    assert proc.returncode == 2 and "cannot read archive" in proc.stderr


def test_digits_from_scikit_learn(tmp_path):
    root = build_digits(tmp_path / "digits", val_fraction=0.2, seed=0)
    train = sorted((root / "train").rglob("*.png"))
    val = sorted((root / "val").rglob("*.png"))
    assert len(train) + len(val) == 1797
    assert sorted(p.name for p in (root / "train").iterdir()) == [str(d) for d in range(10)]
    for d in range(10):  # stratified: every class ~20% in val
        n_tr, n_va = len(list((root / "train" / str(d)).iterdir())), len(list((root / "val" / str(d)).iterdir()))
        assert abs(n_va / (n_tr + n_va) - 0.2) < 0.02
    img = Image.open(train[0])
    assert img.size == (32, 32) and img.mode == "RGB"
    a = np.asarray(img)
    assert (a[..., 0] == a[..., 1]).all() and a.max() > 200


def test_tiny_imagenet_val_reorganisation(cifar_root, tmp_path):
    root = tmp_path / "tiny"
    for wnid, src in (("n01", "cat"), ("n02", "dog")):
        (root / "train" / wnid / "images").mkdir(parents=True)
        for p in sorted((cifar_root / "train" / src).iterdir())[:2]:
            shutil.copy(p, root / "train" / wnid / "images" / p.name)
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i, (wnid, src) in enumerate((("n01", "cat"), ("n02", "dog"), ("n01", "cat"))):
        p = sorted((cifar_root / "test" / src).iterdir())[i]
        shutil.copy(p, root / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    reorganize_tiny_imagenet(root)
    assert sorted(p.name for p in (root / "val" / "n01").iterdir()) == ["val_0.JPEG", "val_2.JPEG"]
    assert [p.name for p in (root / "val" / "n02").iterdir()] == ["val_1.JPEG"]
    assert not (root / "val" / "images").exists()
    reorganize_tiny_imagenet(root)  # idempotent


def test_tiny_imagenet_unknown_class_is_an_error(tmp_path):
    root = tmp_path / "tiny"
    (root / "train" / "n01").mkdir(parents=True)
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "images" / "val_0.JPEG").write_bytes(b"x")
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match="line 1: class 'n99' has no train folder"):
        reorganize_tiny_imagenet(root)
