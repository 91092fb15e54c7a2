"""Pieces shared by the training loops of pretrain and train: seeding,
optimisers and schedules, top-k accuracy, evaluation, metrics files and the
``last.pt`` resume state."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn as nn

from wmdd.errors import UserError
from wmdd.io.files import atomic_torch_save, torch_load
from wmdd.io.manifest import jsonable
from wmdd.runtime.distributed import DistContext


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts, e.g. ``(seed, "epoch", 3)``.

    Stable across processes and Python versions (sha256 of the parts' repr),
    so a unit of work seeded this way is reproducible independently of what
    ran before it.
    """
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def build_optimizer(name: str, params: Iterable, *, lr: float, weight_decay: float,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """``sgd`` (Nesterov-free momentum) or ``adamw``.

    Raises:
        UserError: unknown optimiser name.
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise UserError(f"--opt {name!r}: expected sgd or adamw")


def build_epoch_scheduler(name: str, optimizer: torch.optim.Optimizer, epochs: int):
    """Learning-rate schedule stepped once per epoch.

    ``cosine``: ``lr * 0.5 * (1 + cos(pi * epoch / epochs))`` (SRe2L/WMDD: the teacher, per
    the official run.sh, and the FKD student, per train_FKD.py); ``step``: x0.1 every 30
    epochs; ``half``: x0.1 from epoch ``epochs // 2`` on (the DM family's evaluation: DM,
    Zhao & Bilen, WACV 2023, x0.1 at epoch 500 of 1,000); ``multistep``: x0.2 from epoch
    ``2 epochs // 3`` on and again from ``5 epochs // 6`` (IDC/DANCE's experts and
    evaluation); ``none``: constant.
    A decay never starts at epoch 0 (milestones are at least 1), so a run of one
    epoch (a CPU preset or a smoke test) trains at ``lr``, not at its decayed value.

    Returns:
        A ``torch.optim.lr_scheduler.LambdaLR``.

    Raises:
        UserError: unknown schedule name.
    """
    if name == "cosine":
        fn = lambda e: 0.5 * (1 + math.cos(math.pi * e / max(1, epochs)))  # noqa: E731
    elif name == "step":
        fn = lambda e: 0.1 ** (e // 30)  # noqa: E731
    elif name == "half":
        fn = lambda e: 0.1 if e >= max(1, epochs // 2) else 1.0  # noqa: E731
    elif name == "multistep":
        fn = lambda e: 0.2 ** ((e >= max(1, 2 * epochs // 3)) + (e >= max(1, 5 * epochs // 6)))  # noqa: E731
    elif name == "none":
        fn = lambda e: 1.0  # noqa: E731
    else:
        raise UserError(f"--lr-scheduler {name!r}: expected cosine, step, half, multistep or none")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of rows of ``logits`` ``[B, K]`` whose top-k classes contain the
    target ``[B]`` (int64), for each k (k is capped at K)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(targets.view(-1, 1))
    return [int(hit[:, :min(k, maxk)].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, ctx: DistContext, amp: bool = False) -> dict:
    """Top-1/top-5 accuracy (percent) and mean cross-entropy of ``model`` on ``loader``.

    Under ``torchrun`` each rank evaluates its own shard (no padding) and the
    counts are summed over ranks.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # top1, top5, loss sum, count
    for images, targets in loader:
        images = images.to(ctx.device, non_blocking=True)
        targets = targets.to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
        logits = logits.float()
        c1, c5 = topk_correct(logits, targets)
        loss = nn.functional.cross_entropy(logits, targets, reduction="sum")
        totals += torch.tensor([c1, c5, float(loss), len(targets)], dtype=torch.float64)
    ctx.all_reduce_sum(totals)
    model.train(was_training)
    n = max(1.0, float(totals[3]))
    return {"top1": 100.0 * float(totals[0]) / n, "top5": 100.0 * float(totals[1]) / n,
            "loss": float(totals[2]) / n, "count": int(totals[3])}


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, one line per epoch.

    :meth:`truncate` drops lines of epochs a resumed run will redo.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def truncate(self, before_epoch: int) -> None:
        """Keep only lines whose ``epoch`` is < ``before_epoch``."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("epoch", -1) < before_epoch]
        self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(jsonable(record)) + "\n")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def save_resume_state(path: str | Path, *, args: dict, epoch: int, model: nn.Module,
                      optimizer: torch.optim.Optimizer, scheduler, extra: dict | None = None) -> None:
    """Write ``last.pt`` (atomically) after ``epoch`` completed epochs."""
    atomic_torch_save({"args": jsonable(args), "epoch": epoch, "model": unwrap(model).state_dict(),
                       "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "extra": extra or {}}, path)


def load_resume_state(path: str | Path, args: dict, ignore: tuple[str, ...] = ()) -> dict | None:
    """The state in ``last.pt`` if present, after checking it was written with ``args``.

    Args:
        path: ``OUT/last.pt``.
        args: the resolved arguments of this run.
        ignore: argument names that may differ on resume (e.g. ``device``, ``workers``).

    Raises:
        UserError: ``last.pt`` was written with different arguments.
    """
    path = Path(path)
    if not path.exists():
        return None
    state = torch_load(path, "resume state")
    old, new = state["args"], jsonable(args)
    diff = sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))
    if diff:
        k = diff[0]
        raise UserError(f"{path}: was written by a run with different arguments ({k}: {old.get(k)!r} "
                        f"there, {new.get(k)!r} now); re-run with the same arguments to resume, or use "
                        "another --output-dir")
    return state


class ResumableRun:
    """``last.pt`` and ``metrics.jsonl`` of an epoch-based training run (pretrain, train).

    Args:
        out: output directory.
        run_args: resolved arguments; ``last.pt`` written with others is refused.
        ignore: argument names that may differ on resume.
        ctx: only rank 0 writes.
        model, optimizer, scheduler: restored by :meth:`resume`, saved by :meth:`end_epoch`.
    """

    def __init__(self, out: str | Path, run_args: dict, ignore: tuple[str, ...], ctx: DistContext, model: nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler):
        self.out, self.run_args, self.ignore, self.ctx = Path(out), run_args, ignore, ctx
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.metrics = MetricsLog(self.out / "metrics.jsonl")

    def resume(self) -> tuple[int, dict | None]:
        """Restore ``last.pt`` when present; returns ``(completed epochs, last validation or None)``.

        Raises:
            UserError: ``last.pt`` was written with different arguments.
        """
        start, val = 0, None
        state = load_resume_state(self.out / "last.pt", self.run_args, ignore=self.ignore)
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            start, val = state["epoch"], state["extra"].get("val")
            logging.getLogger("wmdd").info("resuming from %s after epoch %d", self.out / "last.pt", start)
        if self.ctx.is_main:
            self.metrics.truncate(start)
        return start, val

    def end_epoch(self, epoch: int, record: dict, val: dict | None) -> None:
        """Append ``record`` to ``metrics.jsonl`` and save ``last.pt`` after ``epoch`` (0-based), on rank 0."""
        if self.ctx.is_main:
            self.metrics.write(record)
            save_resume_state(self.out / "last.pt", args=self.run_args, epoch=epoch + 1, model=self.model,
                              optimizer=self.optimizer, scheduler=self.scheduler, extra={"val": val})
