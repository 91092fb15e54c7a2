"""The teacher checkpoint ``teacher.pt`` written by pretrain and read by
recover, relabel and train.

Content (a plain dict, loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "wmdd-teacher", "version": 1,
     "model": {"name": str, "kwargs": dict, "num_classes": int, "input_size": int},
     "state_dict": {...}, "classes": [class folder names in index order],
     "dataset": DatasetSpec.to_dict(), "bn_stats": see models.bn_stats (or None),
     "args": resolved pretrain arguments, "val": {"top1": float, "top5": float} or None}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from wmdd.data.datasets import DatasetSpec
from wmdd.errors import UserError
from wmdd.io.files import atomic_torch_save, sha256_file, torch_load
from wmdd.io.manifest import MANIFEST, read_manifest
from wmdd.models.registry import create_model

FORMAT = "wmdd-teacher"
VERSION = 1
TEACHER_FILE = "teacher.pt"


@dataclass
class Teacher:
    """A loaded teacher.

    Attributes:
        model: the network in eval mode on the requested device.
        name, kwargs: architecture name and options.
        classes: class folder names in class-index order.
        spec: dataset spec the teacher was trained on.
        input_size: input side in pixels.
        bn_stats: per-class BN statistics dict, or ``None``.
        path, sha256: checkpoint file and its hash.
        val: validation accuracy recorded at pretraining, or ``None``.
    """

    model: nn.Module
    name: str
    kwargs: dict
    classes: list[str]
    spec: DatasetSpec
    input_size: int
    bn_stats: dict | None
    path: Path
    sha256: str
    val: dict | None


def strip_prefix(state_dict: dict, prefix: str = "module.") -> dict:
    """Remove a DDP/DataParallel ``module.`` prefix from every key that has it."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def load_state_dict_into(model: nn.Module, state_dict: dict, path: Path, name: str) -> None:
    """``model.load_state_dict(strict=True)`` with an error naming the file and the mismatch.

    Raises:
        UserError: keys or shapes do not match the architecture.
    """
    try:
        model.load_state_dict(strip_prefix(state_dict), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise UserError(f"{path}: weights do not fit model {name!r} ({' '.join(first[:3])[:400]}); "
                        "check --model, --model-kwargs, --input-size and the dataset") from None


def read_weights(path: str | Path, model: str, kwargs: dict) -> tuple[str, dict, dict, int | None]:
    """Weights from a teacher.pt (architecture from the file) or a plain state dict
    (architecture ``model``/``kwargs`` from the caller; ``{"state_dict": ...}`` and
    ``{"model": ...}`` wrappers and ``module.`` prefixes accepted).

    Returns:
        ``(model name, model kwargs, state dict, input size or None)``.

    Raises:
        UserError: missing/corrupt file, or not a state dict.
    """
    path = Path(path)
    ckpt = torch_load(path, "weights")
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        m = ckpt["model"]
        return m["name"], m["kwargs"], ckpt["state_dict"], m["input_size"]
    for key in ("state_dict", "model"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise UserError(f"{path}: expected a teacher.pt or a state dict (name -> tensor)")
    return model, kwargs, ckpt, None


def save_teacher(path: str | Path, *, model: nn.Module, name: str, kwargs: dict, classes: list[str],
                 spec: DatasetSpec, input_size: int, bn_stats: dict | None, args: dict,
                 val: dict | None) -> None:
    """Write ``teacher.pt`` atomically (see the module docstring for the layout)."""
    model = model.module if hasattr(model, "module") else model
    atomic_torch_save({
        "format": FORMAT, "version": VERSION,
        "model": {"name": name, "kwargs": dict(kwargs), "num_classes": len(classes), "input_size": input_size},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "classes": list(classes), "dataset": spec.to_dict(), "bn_stats": bn_stats,
        "args": args, "val": val,
    }, path)


def teacher_file(path: str | Path) -> Path:
    """``path`` itself if it is a file, else ``path/teacher.pt``."""
    path = Path(path)
    return path / TEACHER_FILE if path.is_dir() else path


def teacher_sha256(path: str | Path) -> str:
    """sha256 of the teacher checkpoint at ``path`` (file or pretrain directory), without loading it.

    Raises:
        UserError: the file does not exist.
    """
    file = teacher_file(path)
    if not file.is_file():
        raise UserError(f"{file}: teacher checkpoint file not found; check the path")
    return sha256_file(file)


def load_teacher(path: str | Path, device: torch.device | str = "cpu", require_bn_stats: bool = False) -> Teacher:
    """Load a teacher written by :func:`save_teacher` (``path`` = file or pretrain output dir).

    A teacher inside a pretrain output directory is checked against that directory's
    ``manifest.json`` first (:func:`wmdd.io.manifest.read_manifest`): a ``teacher.pt`` replaced
    after the run finished, or a damaged manifest, is refused rather than used.

    Raises:
        UserError: missing or corrupt file, a file that differs from its pretrain manifest (or a
            manifest that is not a pretrain one), a file that is not a WMDD teacher, weights that
            do not fit the recorded architecture, or (with ``require_bn_stats``) a teacher without
            per-class BN statistics.
    """
    file = teacher_file(path)
    recorded = None  # the file's sha256 as its pretrain manifest lists it, once verified
    if (file.parent / MANIFEST).is_file():
        recorded = read_manifest(file.parent, "pretrain").get("files", {}).get(file.name, {}).get("sha256")
    ckpt = torch_load(file, "teacher checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{file}: not a WMDD teacher checkpoint; make one with `python -m wmdd.pretrain` "
                        "(or `python -m wmdd.pretrain --stats-only --teacher WEIGHTS.pth` for existing weights)")
    if ckpt.get("version") != VERSION:
        raise UserError(f"{file}: teacher format version {ckpt.get('version')} is not {VERSION}; re-create it")
    if require_bn_stats and not ckpt.get("bn_stats"):
        raise UserError(f"{file}: teacher has no per-class BatchNorm statistics; compute them with "
                        f"`python -m wmdd.pretrain --stats-only --teacher {file} ...`")
    m = ckpt["model"]
    spec = DatasetSpec.from_dict(ckpt["dataset"])
    model = create_model(m["name"], num_classes=m["num_classes"], dataset=spec, input_size=m["input_size"],
                         **m["kwargs"])
    load_state_dict_into(model, ckpt["state_dict"], file, m["name"])
    model.to(device).eval()
    return Teacher(model=model, name=m["name"], kwargs=dict(m["kwargs"]), classes=list(ckpt["classes"]),
                   spec=spec, input_size=int(m["input_size"]), bn_stats=ckpt.get("bn_stats"),
                   path=file, sha256=recorded or sha256_file(file), val=ckpt.get("val"))


def load_any_teacher(path: str | Path, *, model: str, kwargs: dict, spec: DatasetSpec, classes: list[str],
                     input_size: int | None, device: torch.device | str = "cpu") -> Teacher:
    """A :class:`Teacher` from a teacher.pt / pretrain directory (everything from the
    file) or from a plain state dict (architecture ``model``/``kwargs``, ``spec``,
    ``classes`` and ``input_size`` from the caller; no BN statistics).

    Raises:
        UserError: missing/corrupt file or weights that do not fit.
    """
    file = teacher_file(path)
    name, kwargs, state, file_size = read_weights(file, model, kwargs)
    if file_size is not None:
        return load_teacher(file, device)
    size = input_size or spec.image_size
    net = create_model(name, num_classes=len(classes), dataset=spec, input_size=size, **kwargs)
    load_state_dict_into(net, state, file, name)
    net.to(device).eval()
    return Teacher(model=net, name=name, kwargs=kwargs, classes=list(classes), spec=spec, input_size=size,
                   bn_stats=None, path=file, sha256=sha256_file(file), val=None)


def check_classes(teacher: Teacher, classes: list[str], where: str) -> None:
    """Raise :class:`UserError` unless ``classes`` (found at ``where``) equal the teacher's."""
    if list(classes) != teacher.classes:
        missing = [c for c in teacher.classes if c not in classes]
        extra = [c for c in classes if c not in teacher.classes]
        hint = ("the teacher was trained on a class subset: pass its --classes here too"
                if not missing and extra else "use the teacher trained on this dataset (and class subset)")
        raise UserError(f"{where}: class list differs from the teacher's ({teacher.path}): "
                        f"{len(classes)} classes vs {len(teacher.classes)}; missing {missing[:5] or 'none'}, "
                        f"unexpected {extra[:5] or 'none'}; {hint}")
