"""The soft-label file format (wmdd/relabel/soft_labels.py): write -> read round trips
of epoch records and meta, top-k storage rule, decoding and errors."""

from __future__ import annotations

import json

import pytest
import torch

from wmdd.errors import UserError
from wmdd.io.manifest import write_manifest
from wmdd.relabel.soft_labels import (
    SOFT_LABELS,
    SoftLabels,
    build_meta,
    dense_logits,
    epoch_path,
    epoch_record,
    index_dtype,
    label_bytes_per_view,
    meta_path,
    write_epoch,
    write_meta,
)
from wmdd.relabel.views import ViewSettings, plan_epoch

CLASSES = [f"c{i}" for i in range(7)]
SETTINGS = ViewSettings(batch_size=4, input_size=32, min_scale=0.25, max_scale=0.9, mix_type="mixup", mix_alpha=0.5)
N = 11  # three batches: 4, 4, 3


def _meta(tmp_path, top_k: int) -> dict:
    return build_meta(seed=3, settings=SETTINGS, epochs=2, top_k=top_k, classes=CLASSES, dataset={"name": "toy"},
                      teacher_path=tmp_path / "teacher.pt", teacher_sha256="ab" * 32, teacher_model="convnet",
                      images_root=tmp_path / "images", images_sha256="cd" * 32,
                      files=[f"c{i % 7}/{i}.png" for i in range(N)], labels=[i % 7 for i in range(N)])


def _relabel_dir(tmp_path, top_k: int) -> tuple[list, list[torch.Tensor]]:
    """A finished relabel directory with 2 epochs of random logits; returns plans and logits [N, 7]."""
    plans, logits = [], []
    write_meta(tmp_path, _meta(tmp_path, top_k))
    for epoch in range(2):
        plan = plan_epoch([(32, 40)] * N, SETTINGS, seed=3, epoch=epoch)
        z = torch.randn(N, len(CLASSES), generator=torch.Generator().manual_seed(epoch)) * 4
        write_epoch(tmp_path, epoch, plan, z.split(SETTINGS.batch_size), top_k)
        plans.append(plan)
        logits.append(z)
    write_manifest(tmp_path, stage="relabel", args={}, outputs=[SOFT_LABELS])
    return plans, logits


def test_paths():
    assert epoch_path("/r", 12).as_posix() == "/r/soft_labels/epoch_0012.pt"
    assert meta_path("/r").as_posix() == "/r/soft_labels/meta.json"


def test_round_trip_top_k_below_classes(tmp_path):
    plans, logits = _relabel_dir(tmp_path, top_k=3)
    record = torch.load(epoch_path(tmp_path, 1), weights_only=True)
    assert list(record) == ["order", "boxes", "flips", "partner", "lam", "mix_boxes", "batch_size", "values",
                            "indices"]
    assert record["values"].dtype == torch.float16 and record["values"].shape == (N, 3)
    assert record["indices"].dtype == torch.int16 and record["indices"].shape == (N, 3)
    soft = SoftLabels(tmp_path)
    assert soft.settings == SETTINGS and soft.meta["top_k"] == 3 and soft.meta["num_classes"] == 7
    for epoch in range(2):
        plan, dense = soft.epoch(epoch)
        assert torch.equal(plan.order, plans[epoch].order) and torch.equal(plan.lam, plans[epoch].lam)
        assert plan.batch_size == SETTINGS.batch_size
        z = logits[epoch]
        top = z.argsort(dim=1, descending=True)[:, :3]  # independent of topk
        expected = torch.full((N, 7), float("-inf"))
        expected.scatter_(1, top, z.gather(1, top).half().float())
        assert dense.dtype == torch.float32 and torch.equal(dense, expected)
        assert torch.isinf(dense).sum() == N * 4


@pytest.mark.parametrize("top_k", [7, 100])
def test_round_trip_top_k_at_least_classes_stores_all_logits_in_class_order(tmp_path, top_k):
    _, logits = _relabel_dir(tmp_path, top_k=top_k)
    record = torch.load(epoch_path(tmp_path, 0), weights_only=True)
    assert "indices" not in record and record["values"].dtype == torch.float16
    assert json.loads(meta_path(tmp_path).read_text())["top_k"] == 7
    _, dense = SoftLabels(tmp_path).epoch(0)
    assert torch.equal(dense, logits[0].half().float()) and not torch.isinf(dense).any()


def test_more_than_2_pow_15_classes_use_int32_indices():
    classes = 2 ** 15 + 1
    assert index_dtype(2 ** 15) == torch.int16 and index_dtype(classes) == torch.int32
    assert (label_bytes_per_view(10, 10), label_bytes_per_view(100, 10), label_bytes_per_view(3, 10),
            label_bytes_per_view(3, classes)) == (20, 20, 12, 18)
    plan = plan_epoch([(32, 32)] * 2, ViewSettings(batch_size=2, input_size=32), seed=0, epoch=0)
    z = torch.randn(2, classes, generator=torch.Generator().manual_seed(0))
    z[:, -1] = 100.0  # the largest class index is in the top-k
    record = epoch_record(plan, [z], 2)
    assert record["indices"].dtype == torch.int32 and (record["indices"][:, 0] == classes - 1).all()
    dense = dense_logits(record["values"], record["indices"], classes)
    assert dense[:, -1].tolist() == [100.0, 100.0] and torch.isinf(dense).sum() == 2 * (classes - 2)


def test_rows_must_cover_the_plan():
    plan = plan_epoch([(32, 32)] * 5, ViewSettings(batch_size=5, input_size=32), seed=0, epoch=0)
    with pytest.raises(UserError, match="4 rows of logits for an epoch plan of 5 views"):
        epoch_record(plan, [torch.randn(4, 3)], 2)
    with pytest.raises(UserError, match="0 rows of logits"):
        epoch_record(plan, [], 2)


def test_write_meta_refuses_a_changed_run_and_reader_needs_a_finished_stage(tmp_path):
    write_meta(tmp_path, _meta(tmp_path, 3))
    write_meta(tmp_path, _meta(tmp_path, 3))  # same run resumed
    changed = {**_meta(tmp_path, 3), "images": {**_meta(tmp_path, 3)["images"], "sha256": "ef" * 32}}
    with pytest.raises(UserError, match="the images or the teacher changed since this run started"):
        write_meta(tmp_path, changed)
    with pytest.raises(UserError, match="the relabel stage did not finish there"):
        SoftLabels(tmp_path)
