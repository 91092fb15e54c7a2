"""Pseudo-label CSV parsing (property-based) and pseudo-label training on real CIFAR-10."""

from __future__ import annotations

import json
import os
import re
import shutil

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import run_module
from wmdd.errors import UserError
from wmdd.train.pseudo_labels import parse_pseudo_label_csv

CLASSES = ["cat", "dog", "frog"]
PER_CLASS = 4


@pytest.fixture(scope="module")
def tree(tmp_path_factory, cifar_root):
    """ROOT/train/<class>/<i>.jpg (real CIFAR-10 files) and ROOT/val/..., for the parser."""
    root = tmp_path_factory.mktemp("pl") / "root"
    for split, src in (("train", "train"), ("val", "test")):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i, f in enumerate(sorted((cifar_root / src / c).iterdir())[:PER_CLASS]):
                shutil.copy(f, root / split / c / f"{i}.jpg")
    images = [str(root / "train" / c / f"{i}.jpg") for c in CLASSES for i in range(PER_CLASS)]
    return root, images


def _style(root, path, style):
    rel = os.path.relpath(path, root)
    if style == "root":
        return rel
    if style == "train":
        return os.path.relpath(path, root / "train")
    return path


def _parse(tree, csv, allow=False):
    root, images = tree
    return parse_pseudo_label_csv(csv, dataset_root=root, train_dir=root / "train", train_images=images,
                                  num_classes=len(CLASSES), allow_unmatched=allow)


@pytest.mark.parametrize("sep,quote,space", [(";", "", ""), ("\t", "", ""), (";", '"', ""), (",", '"', " "),
                                             (";", "", " ")],
                         ids=["semicolon", "tab", "quoted", "spaced", "semi-spaced"])
def test_spreadsheet_csv_dialects_read_like_the_plain_csv(tree, tmp_path, sep, quote, space):
    root, images = tree
    rows = [(os.path.relpath(images[i], root), i % len(CLASSES)) for i in (0, 3, 7)]
    lines = [f"{quote}image_path{quote}{sep}{space}{quote}pseudo_label_class_index{quote}"]
    lines += [f"{quote}{path}{quote}{sep}{space}{quote}{label}{quote}" for path, label in rows]
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(lines) + "\n")
    assert _parse(tree, csv, allow=True).labels == {os.path.realpath(root / p): label for p, label in rows}


rows_strategy = st.lists(st.tuples(st.integers(0, len(CLASSES) * PER_CLASS - 1), st.integers(0, len(CLASSES) - 1),
                                   st.sampled_from(["root", "train", "absolute"])), min_size=1, max_size=20,
                         unique_by=lambda r: r[0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows_strategy, dup=st.booleans(), extra=st.booleans(), data=st.data())
def test_parser_returns_exactly_the_rows(tree, tmp_path_factory, rows, dup, extra, data):
    root, images = tree
    table = [{"image_path": _style(root, images[i], style), "pseudo_label_class_index": str(label)}
             for i, label, style in rows]
    if dup:  # a repeated row with the same label is allowed
        table.append(dict(table[0]))
    table = data.draw(st.permutations(table))
    frame = pd.DataFrame(table)
    if extra:
        frame["cluster_id"] = range(len(frame))
        frame["confidence"] = 0.5
    csv = tmp_path_factory.mktemp("csv") / "labels.csv"
    frame.to_csv(csv, index=False)
    parsed = _parse(tree, csv, allow=True)
    expected = {os.path.realpath(images[i]): label for i, label, _ in rows}
    assert parsed.labels == expected
    assert parsed.unmatched == sorted(set(map(os.path.realpath, images)) - set(expected))
    assert parsed.duplicate_rows == int(dup)
    if parsed.unmatched:
        with pytest.raises(UserError, match=f"{len(parsed.unmatched)} of {len(images)} train images have no row"):
            _parse(tree, csv)
    else:
        assert _parse(tree, csv).labels == expected


BAD = {
    "label out of range": ("train/cat/0.jpg", "3", "is outside [0, 3)"),
    "negative label": ("train/cat/0.jpg", "-1", "is outside [0, 3)"),
    "non-integer label": ("train/cat/0.jpg", "1.5", "'1.5' is not an integer"),
    "text label": ("train/cat/0.jpg", "dog", "'dog' is not an integer"),
    "empty label": ("train/cat/0.jpg", "", "'' is not an integer"),
    "outside root": ("../../../etc/passwd", "0", "resolves outside the dataset root"),
    "absolute outside": ("/etc/hostname", "0", "resolves outside the dataset root"),
    "missing file": ("train/cat/99.jpg", "0", "does not exist"),
    "not a train image": ("val/cat/0.jpg", "0", "is not an image of the train split"),
    "conflicting duplicate": ("train/dog/1.jpg", "0", "was labelled"),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(sorted(BAD)), position=st.integers(0, 11), data=st.data())
def test_each_bad_row_is_an_error_naming_its_row(tree, tmp_path_factory, case, position, data):
    root, images = tree
    table = [{"image_path": os.path.relpath(p, root), "pseudo_label_class_index": str(k // PER_CLASS)}
             for k, p in enumerate(images)]
    path, label, message = BAD[case]
    if case == "conflicting duplicate":
        label = str((CLASSES.index("dog") + 1) % len(CLASSES))
    table.insert(position, {"image_path": path, "pseudo_label_class_index": label})
    csv = tmp_path_factory.mktemp("bad") / "labels.csv"
    pd.DataFrame(table).to_csv(csv, index=False)
    row = position + 1
    if case == "conflicting duplicate":  # the error is at whichever of the two rows comes second
        first = 1 + next(i for i, r in enumerate(table) if r["image_path"] == path)
        row = max(first, 1 + max(i for i, r in enumerate(table) if r["image_path"] == path))
    with pytest.raises(UserError, match=rf"row {row} \(line {row + 1}\).*{re.escape(message)}"):
        _parse(tree, csv)


def test_missing_column_is_an_error(tree, tmp_path):
    csv = tmp_path / "x.csv"
    pd.DataFrame({"image_path": ["train/cat/0.jpg"], "label": [0]}).to_csv(csv, index=False)
    with pytest.raises(UserError, match="missing column.*pseudo_label_class_index"):
        _parse(tree, csv)


def test_pseudo_labels_equal_to_folder_labels_match_hard_label_training(cifar_root, tmp_path):
    rows = [{"image_path": f"train/{c.name}/{f.name}", "pseudo_label_class_index": k, "cluster_id": k}
            for k, c in enumerate(sorted((cifar_root / "train").iterdir())) for f in sorted(c.iterdir())]
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    common = ["--train-dir", cifar_root / "train", "--data-path", cifar_root, "--dataset", "cifar10",
              "--model", "convnet", "--model-kwargs", "width=16", "--epochs", "2", "--batch-size", "32",
              "--workers", "2", "--seed", "3"]
    proc = run_module("wmdd.train", *common, "--pseudo-label-csv", csv, "--output-dir", tmp_path / "pl")
    assert "200 train images matched, 0 unmatched" in proc.stderr
    assert "agreement with folder labels 100.00%" in proc.stderr
    run_module("wmdd.train", *common, "--hard-labels", "--output-dir", tmp_path / "hard")
    a = json.loads((tmp_path / "pl" / "results.json").read_text())
    b = json.loads((tmp_path / "hard" / "results.json").read_text())
    assert (a["top1"], a["top5"]) == (b["top1"], b["top5"])
    assert a["num_images"] == 200


def test_bad_csv_fails_the_train_command_with_the_row(cifar_root, tmp_path):
    csv = tmp_path / "labels.csv"
    pd.DataFrame([{"image_path": "train/cat/nope.jpg", "pseudo_label_class_index": 1}]).to_csv(csv, index=False)
    proc = run_module("wmdd.train", "--train-dir", cifar_root / "train", "--data-path", cifar_root, "--dataset",
                      "cifar10",
                      "--pseudo-label-csv", csv, "--output-dir", tmp_path / "o", check=False)
    assert proc.returncode == 2 and f"{csv}: row 1 (line 2)" in proc.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()
