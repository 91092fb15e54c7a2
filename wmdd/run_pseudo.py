"""``wmdd run-pseudo`` (``python -m wmdd.run_pseudo``, ``./run_pseudo.sh``): a student trained on
the FULL real train split with labels from a pseudo-label CSV (``image_path``,
``pseudo_label_class_index``; ``wmdd pseudo-labels`` writes one), evaluated on the real val split,
with one row appended to ``<out>/results.csv``.

Flags after ``--`` go to ``wmdd train`` unchanged (e.g. ``-- --online-teacher DIR --allow-unmatched``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from wmdd.data.datasets import dataset_names
from wmdd.errors import UserError
from wmdd.options.bounds import COUNT
from wmdd.options.parsing import StageParser, run_main
from wmdd.run import _gpu_list, check_stage_args
from wmdd.runtime.launch import run_module

#: Per dataset: (epochs, batch size, lr, weight decay) of SGD with cosine decay on real data.
RECIPES = {"cifar10": (200, 128, 0.1, 5e-4), "cifar100": (200, 128, 0.1, 5e-4), "tiny-imagenet": (100, 128, 0.1, 5e-4),
           "imagenette": (100, 64, 0.1, 1e-4), "imagewoof": (100, 64, 0.1, 1e-4)}
DEFAULT_RECIPE = (90, 128, 0.1, 1e-4)


def build_parser() -> argparse.ArgumentParser:
    """The pseudo-label runner's parser (the flags of the seeds' ``run_pseudo.sh``)."""
    p = StageParser(prog="wmdd run-pseudo", description=__doc__.split("\n\n")[0].replace("``", ""),
                    epilog="Flags after -- go to wmdd train unchanged.")
    p.add_argument("-d", dest="dataset", required=True, choices=dataset_names(), metavar="NAME",
                   help="dataset (the data is DATA_ROOT/NAME)")
    p.add_argument("--csv", required=True, help="pseudo-label CSV (wmdd pseudo-labels writes one)")
    p.add_argument("-r", dest="root", required=True, metavar="DIR", help="data root")
    p.add_argument("-e", dest="model", default="resnet18", metavar="MODEL", help="student model [resnet18]")
    p.add_argument("-z", dest="epochs", type=COUNT, metavar="EPOCHS", help="training epochs [dataset default]")
    p.add_argument("-x", dest="exp", default="pseudo", metavar="ID", help="experiment id: OUT/<dataset>/<ID>/train")
    p.add_argument("-u", dest="gpus", type=_gpu_list, metavar="GPUS",
                   help="GPU index or comma list (several: torchrun)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default="runs", help="output root [./runs]")
    return p


def main(argv: list[str] | None = None) -> int:
    """Train on the real split with the CSV's labels, then append the summary row.

    Raises:
        UserError: missing CSV or dataset folder, or train arguments its parser refuses.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = build_parser().parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    csv, root, out = (Path(x).expanduser().resolve() for x in (args.csv, args.root, args.out))
    if not csv.is_file():
        raise UserError(f"--csv {args.csv}: file not found")
    data = root / args.dataset
    if not (data / "train").is_dir():
        raise UserError(f"{data / 'train'} does not exist; prepare the dataset (wmdd prepare, see README)")
    epochs, batch, lr, wd = RECIPES.get(args.dataset, DEFAULT_RECIPE)
    exp_dir = out / args.dataset / args.exp
    train = ["--train-dir", str(data / "train"), "--pseudo-label-csv", str(csv), "--data-path", str(data),
             "--dataset", args.dataset, "--model", args.model, "--epochs", str(args.epochs or epochs),
             "--batch-size", str(batch), "--opt", "sgd", "--lr", str(lr), "--wd", str(wd), "--device", args.device,
             "--output-dir", str(exp_dir / "train"), *extra]
    check_stage_args("train", train)
    env, launch = dict(os.environ), [sys.executable, "-m"]
    if args.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(args.gpus)
        if len(args.gpus) > 1:
            launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                      f"--nproc_per_node={len(args.gpus)}", "-m"]
    start = time.monotonic()
    code = run_module("wmdd.train", train, env, launch)
    if code != 0:
        return code
    return run_module("wmdd.tools.summarize_run", ["append", "--experiment-dir", str(exp_dir), "--experiment", args.exp,
                                                   "--results-csv", str(out / "results.csv"), "--time",
                                                   f"train={int(time.monotonic() - start)}"], env)


if __name__ == "__main__":
    run_main(main)
