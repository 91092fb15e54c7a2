"""The CPU proxy of GPU launch overhead (benchmarks/op_counts.py): one recover iteration of
DM, DDM, DANCE and WMDD dispatches (nearly) the same number of tensor operators for 100
classes per batch as for 10 (target: at most 10 % more)."""

from __future__ import annotations

import torch

from benchmarks.op_counts import count_ops
from benchmarks.op_counts import main as op_counts


def test_the_counter_sees_forward_backward_and_per_class_loops():
    x = torch.randn(10, 4, requires_grad=True)
    once = count_ops(lambda: (x * 2).sum().backward())
    assert once["aten.mul"] >= 2 and sum(once.values()) >= 4  # the product, and its gradient in the backward

    def per_class(g):
        return sum(count_ops(lambda: [x[j % 10].sum() for j in range(g)]).values())

    assert per_class(100) >= 9 * per_class(10)


def test_one_iteration_dispatches_as_many_operators_for_100_classes_as_for_10(capsys):
    results = op_counts([])
    assert sorted(results) == ["dance", "ddm", "dm", "wmdd"]
    for method, (ten, hundred) in results.items():
        assert ten > 100, method  # a real iteration: forward, backward, optimiser step
        assert hundred <= 1.10 * ten, f"{method}: {ten} operators at 10 classes, {hundred} at 100"
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["wmdd", "dm", "ddm", "dance"]
    assert all(line.split()[1].startswith("ops@10=") and line.split()[3].startswith("ratio=") for line in lines)
