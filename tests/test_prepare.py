"""``python -m wmdd.data.prepare``: archive extraction, digits, Tiny-ImageNet layout."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CIFAR10_MINI, run_module
from wmdd.data.folders import load_splits
from wmdd.data.prepare import build_digits, extract, reorganize_tiny_imagenet
from wmdd.errors import UserError


def test_extract_subset_of_real_cifar10(cifar_root):
    for split, n in (("train", 20), ("test", 10)):
        counts = {d.name: len(list(d.iterdir())) for d in (cifar_root / split).iterdir()}
        assert len(counts) == 10 and set(counts.values()) == {n}
    assert (cifar_root / ".prepared.json").is_file()


def test_extract_is_idempotent_and_refuses_other_options(cifar_root):
    assert extract(CIFAR10_MINI, cifar_root) == cifar_root
    with pytest.raises(UserError, match="prepared with other options"):
        extract(CIFAR10_MINI, cifar_root, 5, 5, 0)


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
    proc = run_module("wmdd.data.prepare", "extract", tmp_path / "none.tar.gz", tmp_path / "x", check=False)
    assert proc.returncode == 2 and f"{tmp_path / 'none.tar.gz'}: archive not found" in proc.stderr
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tarball")
    proc = run_module("wmdd.data.prepare", "extract", tmp_path / "bad.tar.gz", tmp_path / "x", check=False)
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


TINY_WNIDS = ("n01443537", "n01629819", "n02058221")


def _jpeg(seed: int, size=(64, 64)) -> bytes:
    """A smooth random colour gradient with noise, JPEG-encoded (a stand-in for a photo)."""
    rng = np.random.default_rng(seed)
    h, w = size
    ramp = np.linspace(0, 1, w)[None, :, None] * rng.uniform(60, 200, 3) + np.linspace(0, 1, h)[:, None, None] * 50
    pixels = np.clip(ramp + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write_tiny_imagenet_zip(path, val_wnids=TINY_WNIDS):
    """A miniature of the official ``tiny-imagenet-200.zip``: 3 wnids, 3 train JPEGs
    each with ``<wnid>_boxes.txt``, 2 val JPEGs per entry of ``val_wnids`` listed in
    ``val/val_annotations.txt``, 2 unlabelled test JPEGs, ``wnids.txt``, ``words.txt``,
    ``.DS_Store`` files and ``__MACOSX/`` AppleDouble entries.

    Returns:
        ``{val file name: wnid}`` as annotated.
    """
    top = "tiny-imagenet-200/"
    seed = iter(range(1000))
    val_labels = {f"val_{i}.JPEG": wnid for i, wnid in enumerate(w for w in val_wnids for _ in range(2))}
    with zipfile.ZipFile(path, "w") as zf:
        for folder in ("", "train/", "val/", "val/images/", "test/", "test/images/"):
            zf.writestr(top + folder, b"")
        zf.writestr(top + "wnids.txt", "\n".join(TINY_WNIDS) + "\n")
        zf.writestr(top + "words.txt", "".join(f"{w}\tclass {w}\n" for w in TINY_WNIDS))
        zf.writestr(top + ".DS_Store", b"\x00\x00\x00\x01Bud1")
        for wnid in TINY_WNIDS:
            zf.writestr(f"{top}train/{wnid}/images/", b"")
            boxes = "".join(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(3))
            zf.writestr(f"{top}train/{wnid}/{wnid}_boxes.txt", boxes)
            zf.writestr(f"{top}train/{wnid}/.DS_Store", b"\x00\x00\x00\x01Bud1")
            for i in range(3):
                zf.writestr(f"{top}train/{wnid}/images/{wnid}_{i}.JPEG", _jpeg(next(seed)))
                zf.writestr(f"__MACOSX/{top}train/{wnid}/images/._{wnid}_{i}.JPEG", b"\x00\x05\x16\x07")
        zf.writestr(top + "val/images/.DS_Store", b"\x00\x00\x00\x01Bud1")
        for file, wnid in val_labels.items():
            zf.writestr(f"{top}val/images/{file}", _jpeg(next(seed)))
            zf.writestr(f"__MACOSX/{top}val/images/._{file}", b"\x00\x05\x16\x07")
        zf.writestr(top + "val/val_annotations.txt",
                    "".join(f"{file}\t{wnid}\t0\t0\t63\t63\n" for file, wnid in val_labels.items()))
        for i in range(2):
            zf.writestr(f"{top}test/images/test_{i}.JPEG", _jpeg(next(seed)))
    return val_labels


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_extract_official_tiny_imagenet_zip_in_one_step(tmp_path):
    val_labels = _write_tiny_imagenet_zip(tmp_path / "tiny-imagenet-200.zip")
    dest = tmp_path / "tiny-imagenet"
    proc = run_module("wmdd.data.prepare", "extract", tmp_path / "tiny-imagenet-200.zip", dest)
    assert f"prepared {dest}" in proc.stderr
    assert _tree(dest) == sorted([".prepared.json"] + [f"train/{w}/{w}_{i}.JPEG" for w in TINY_WNIDS for i in range(3)]
                                 + [f"val/{w}/{f}" for f, w in val_labels.items()])
    with zipfile.ZipFile(tmp_path / "tiny-imagenet-200.zip") as zf:
        assert (dest / "val" / TINY_WNIDS[1] / "val_2.JPEG").read_bytes() == zf.read(
            "tiny-imagenet-200/val/images/val_2.JPEG")
    train, val = load_splits(dest)
    assert train.classes == val.classes == list(TINY_WNIDS)
    assert [t for _, t in val.samples] == [0, 0, 1, 1, 2, 2] and len(train) == 9
    before = _tree(dest)
    run_module("wmdd.data.prepare", "tiny-imagenet", dest)  # the old follow-up step only checks the tree now
    assert _tree(dest) == before
    sub = extract(tmp_path / "tiny-imagenet-200.zip", tmp_path / "sub", train_per_class=2, val_per_class=1)
    assert [len(list((sub / s / w).iterdir())) for s in ("train", "val") for w in TINY_WNIDS] == [2, 2, 2, 1, 1, 1]


def test_extract_refuses_tiny_imagenet_whose_val_classes_differ(tmp_path):
    _write_tiny_imagenet_zip(tmp_path / "t.zip", val_wnids=TINY_WNIDS[:2])
    dest = tmp_path / "tiny"
    proc = run_module("wmdd.data.prepare", "extract", tmp_path / "t.zip", dest, check=False)
    assert proc.returncode == 2
    assert f"{tmp_path / 't.zip'}: val/: classes differ from the train split's (missing: {TINY_WNIDS[2]}; " \
           "unexpected: none)" in proc.stderr
    assert "prepared" not in proc.stderr and not dest.exists() and not (tmp_path / "tiny.partial").exists()


def test_extract_names_an_unannotated_tiny_imagenet_val_image(tmp_path):
    _write_tiny_imagenet_zip(tmp_path / "t.zip")
    with zipfile.ZipFile(tmp_path / "t.zip", "a") as zf:
        zf.writestr("tiny-imagenet-200/val/images/val_99.JPEG", _jpeg(99))
    with pytest.raises(UserError, match="tiny-imagenet-200/val/images/val_99.JPEG has no line in "
                                        "tiny-imagenet-200/val/val_annotations.txt"):
        extract(tmp_path / "t.zip", tmp_path / "tiny")
    assert not (tmp_path / "tiny").exists()


def test_tiny_imagenet_step_on_a_hand_unzipped_tree_matches_extract(tmp_path):
    _write_tiny_imagenet_zip(tmp_path / "t.zip")
    with zipfile.ZipFile(tmp_path / "t.zip") as zf:
        zf.extractall(tmp_path / "unzipped")
    root = tmp_path / "unzipped" / "tiny-imagenet-200"
    run_module("wmdd.data.prepare", "tiny-imagenet", root)
    extracted = extract(tmp_path / "t.zip", tmp_path / "extracted")
    hand, one_step = load_splits(root), load_splits(extracted)
    for a, b in zip(hand, one_step):
        assert a.classes == b.classes
        assert [(Path(p).name, t) for p, t in a.samples] == [(Path(p).name, t) for p, t in b.samples]
    assert not (root / "val" / "images").exists()


def test_tiny_imagenet_step_refuses_val_classes_that_differ_and_moves_nothing(tmp_path):
    _write_tiny_imagenet_zip(tmp_path / "t.zip", val_wnids=TINY_WNIDS[1:])
    with zipfile.ZipFile(tmp_path / "t.zip") as zf:
        zf.extractall(tmp_path / "unzipped")
    root = tmp_path / "unzipped" / "tiny-imagenet-200"
    before = _tree(root)
    proc = run_module("wmdd.data.prepare", "tiny-imagenet", root, check=False)
    assert proc.returncode == 2
    assert f"{root / 'val'}/: classes differ from the train split's (missing: {TINY_WNIDS[0]}; unexpected: none)" \
        in proc.stderr
    assert _tree(root) == before


def test_tiny_imagenet_step_finishes_an_interrupted_run(tmp_path):
    val_labels = _write_tiny_imagenet_zip(tmp_path / "t.zip")
    with zipfile.ZipFile(tmp_path / "t.zip") as zf:
        zf.extractall(tmp_path / "unzipped")
    root = tmp_path / "unzipped" / "tiny-imagenet-200"
    (root / "val" / TINY_WNIDS[0]).mkdir()
    (root / "val" / "images" / "val_0.JPEG").rename(root / "val" / TINY_WNIDS[0] / "val_0.JPEG")
    reorganize_tiny_imagenet(root)
    assert _tree(root / "val") == sorted(["val_annotations.txt"] + [f"{w}/{f}" for f, w in val_labels.items()])
