"""The experts artifact ``experts.pt`` written by ``python -m wmdd.pretrain --experts N``
and read by ``python -m wmdd.recover --method dance`` (its only owner: paths, writer,
reader and checks).

DANCE (Zhang et al., "Dual-View Distribution Alignment for Dataset
Condensation", IJCAI 2024, Sec. 3.2) keeps, for each expert, the weights it was
initialised with and the weights it ended training with; the middle encoder
(Eq. 3) interpolates between the two (:func:`interpolate_state`).

Content (a plain dict, loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "wmdd-experts", "version": 1,
     "model": {"name": str, "kwargs": dict, "num_classes": int, "input_size": int},
     "classes": [class folder names in index order], "dataset": DatasetSpec.to_dict(),
     "args": resolved pretrain arguments,
     "experts": [{"index": int, "seed": int, "init": state_dict, "final": state_dict,
                  "val": {"top1": float, "top5": float, ...}}, ...]}   # by index

While pretraining, each finished expert is one file ``OUT/progress/expert_<e>.pt``
(the same per-expert dict); they are merged into ``experts.pt`` at the end and
removed, so a killed run resumes at the expert it was training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from wmdd.data.datasets import DatasetSpec
from wmdd.errors import UserError
from wmdd.io.files import atomic_torch_save, sha256_file, torch_load
from wmdd.models.registry import create_model
from wmdd.models.teacher import load_state_dict_into

FORMAT = "wmdd-experts"
VERSION = 1
EXPERTS_FILE = "experts.pt"


def part_path(out: str | Path, index: int) -> Path:
    """``OUT/progress/expert_<index>.pt``: expert ``index`` finished (before the merge)."""
    return Path(out) / "progress" / f"expert_{index:04d}.pt"


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``model.state_dict()`` (the unwrapped module's keys)."""
    model = model.module if hasattr(model, "module") else model
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_part(path: str | Path, *, index: int, seed: int, init: dict, final: dict, val: dict,
              metrics: list[dict]) -> None:
    """Write one finished expert atomically: its entry of ``experts`` (see the module
    docstring) plus its per-epoch ``metrics``, which the merge moves to ``metrics.jsonl``."""
    atomic_torch_save({"index": index, "seed": seed, "init": init, "final": final, "val": val,
                       "metrics": metrics}, path)


def write_experts(path: str | Path, parts: list[dict], *, name: str, kwargs: dict, classes: list[str],
                  spec: DatasetSpec, input_size: int, args: dict) -> None:
    """Write ``experts.pt`` atomically from the per-expert dicts ``parts`` (index order)."""
    atomic_torch_save({
        "format": FORMAT, "version": VERSION,
        "model": {"name": name, "kwargs": dict(kwargs), "num_classes": len(classes), "input_size": input_size},
        "classes": list(classes), "dataset": spec.to_dict(), "args": args,
        "experts": sorted(parts, key=lambda p: p["index"]),
    }, path)


def experts_file(path: str | Path) -> Path:
    """``path`` itself if it is a file, else ``path/experts.pt``."""
    path = Path(path)
    return path / EXPERTS_FILE if path.is_dir() else path


@dataclass
class Experts:
    """Loaded experts.

    Attributes:
        name, kwargs: architecture (``convnet_in`` and its options by default).
        classes: class folder names in class-index order.
        spec: dataset spec the experts were trained on.
        input_size: input side in pixels.
        init, final: per expert, the initial and the trained state dict (CPU tensors).
        val: per expert, the validation accuracy after training.
        path, sha256: the file and its hash.
    """

    name: str
    kwargs: dict
    classes: list[str]
    spec: DatasetSpec
    input_size: int
    init: list[dict]
    final: list[dict]
    val: list[dict]
    path: Path
    sha256: str

    def __len__(self) -> int:
        return len(self.final)

    def network(self, device: torch.device | str = "cpu") -> nn.Module:
        """A fresh network of the experts' architecture holding expert 0's final weights
        (eval mode, no gradients), to be loaded with other weights in place."""
        net = create_model(self.name, num_classes=len(self.classes), dataset=self.spec,
                           input_size=self.input_size, **self.kwargs)
        load_state_dict_into(net, self.final[0], self.path, self.name)
        return net.to(device).eval().requires_grad_(False)

    def check_data(self, classes: list[str], input_size: int, where: str) -> None:
        """Refuse experts trained on another dataset.

        Args:
            classes: the run's class folder names (found at ``where``).
            input_size: the run's image side in pixels.
            where: the data folder, for the message.

        Raises:
            UserError: another class count (with ``--classes`` as the fix when the experts'
                classes are among the run's), other class names or another input size.
        """
        if len(classes) != len(self.classes):
            if list(classes[:len(self.classes)]) == self.classes:
                fix = f"add --classes {len(self.classes)} (the experts' classes are the first {len(self.classes)})"
            elif set(self.classes) <= set(classes):
                fix = "add --classes FILE listing the experts' classes, one per line"
            else:
                fix = "pretrain experts on this dataset (python -m wmdd.pretrain --experts N)"
            raise UserError(f"{self.path}: experts were trained on {len(self.classes)} classes, {where} has "
                            f"{len(classes)}; {fix}")
        if list(classes) != self.classes:
            other = [c for c in classes if c not in self.classes][:3]
            raise UserError(f"{self.path}: experts' class folders differ from {where} (e.g. {other}); "
                            "pretrain experts on this dataset (python -m wmdd.pretrain --experts N)")
        if input_size != self.input_size:
            raise UserError(f"{self.path}: experts were trained at {self.input_size} px, this run uses "
                            f"{input_size} px; pass --input-size {self.input_size} or pretrain experts at "
                            f"{input_size} px")


def load_experts(path: str | Path) -> Experts:
    """Load ``experts.pt`` (``path`` = the file or the pretrain output directory).

    Raises:
        UserError: missing, truncated or corrupt file, a file that is not an
            experts file, an unknown version, or no experts in it.
    """
    file = experts_file(path)
    data = torch_load(file, "experts")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{file}: not an experts file; make one with `python -m wmdd.pretrain --experts N ...`")
    if data.get("version") != VERSION:
        raise UserError(f"{file}: experts format version {data.get('version')} is not {VERSION}; re-create it")
    if not data["experts"]:
        raise UserError(f"{file}: holds no experts; re-create it with `python -m wmdd.pretrain --experts N`")
    m = data["model"]
    return Experts(name=m["name"], kwargs=dict(m["kwargs"]), classes=list(data["classes"]),
                   spec=DatasetSpec.from_dict(data["dataset"]), input_size=int(m["input_size"]),
                   init=[e["init"] for e in data["experts"]], final=[e["final"] for e in data["experts"]],
                   val=[e["val"] for e in data["experts"]], path=file, sha256=sha256_file(file))


def interpolate_state(init: dict[str, torch.Tensor], final: dict[str, torch.Tensor],
                      lam: float) -> dict[str, torch.Tensor]:
    """The middle encoder's weights (DANCE, Zhang et al., IJCAI 2024, Eq. 3): ``lam * init + (1 - lam) * final``
    for every floating-point entry; integer buffers (e.g. BatchNorm's batch counter)
    are taken from ``final``.

    Args:
        init, final: state dicts with the same keys and shapes.
        lam: interpolation weight in [0, 1]; 1 gives ``init``, 0 gives ``final``.

    Returns:
        A new state dict (same dtypes and devices as ``final``); exactly ``final``
        at ``lam = 0`` and exactly ``init`` at ``lam = 1`` (finite weights).

    The authors interpolate ``parameters()`` only (their ConvNet has no buffers
    with instance norm); a BatchNorm network's running statistics are
    interpolated here as well.
    """
    return {k: lam * init[k].to(v) + (1.0 - lam) * v if v.is_floating_point() else v.clone()
            for k, v in final.items()}
