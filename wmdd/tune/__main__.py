"""``wmdd tune`` (``python -m wmdd.tune``): choose a recover recipe on a validation split held out
from the train split, never on the test split.

The held-out split (``--val-per-class N`` images per class, else 10 %, seeded) is carved from
``DATA_ROOT/<dataset>/train`` into ``OUT/holdout/<dataset>`` (symbolic links; the dataset's own
val/test split is never opened). Every trial is one ``wmdd run`` (recover with the trial's
recipe -> relabel -> student, or the hard-label protocol's student) on the rest of the train
split, scored by the student's last-epoch top-1 on the held-out images; the first trial of a new
study is the method's own recipe (when the searched ranges contain it), so that the preset
replaces it only with a recipe that scored higher. The study (Optuna, TPE)
lives in ``OUT/study.db`` (or ``--storage``): a killed study resumes with the same command, the
interrupted trial resuming its stages. At the end the best recipe is written to
``OUT/preset.yaml``, which ``wmdd run --config OUT/preset.yaml`` takes for the one run that
reads the test split; ``OUT/trials.csv`` lists every trial. ``--holdout-only`` writes the held-out
split and stops, so that a teacher can be pretrained on its train part first (one that has not
seen the held-out images).
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState

from wmdd.data.datasets import dataset_names
from wmdd.data.holdout import write_holdout_root
from wmdd.errors import UserError
from wmdd.io.files import read_json
from wmdd.options.bounds import COUNT, SEED
from wmdd.options.parsing import StageParser, run_main
from wmdd.runtime.launch import run_module
from wmdd.tune.preset import load_sectioned, tuned_preset, write_preset
from wmdd.tune.space import TUNABLE, Param, default_space, parse_param, recipe_values, trial_argv
from wmdd.tune.study import (
    HOST,
    PID,
    completed,
    enqueue_own_recipe,
    open_study,
    own_recipe_trial,
    retry_interrupted,
    run_name,
)

#: Failed trials in a row after which the study stops (a recipe that fails everywhere is a
#: setting to fix, not a region of the space).
MAX_FAILURES_IN_A_ROW = 3
#: Exit status of a stage stopped by Ctrl-C.
INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """``wmdd tune``'s parser."""
    p = StageParser(prog="wmdd tune", description=__doc__.split("\n\n")[0].replace("``", ""),
                    epilog="parameters: " + ", ".join(TUNABLE) + " (default: those the method has, around its "
                           "recipe); --space NAME=LOW:HIGH[:log|int|intlog] or NAME=A,B,... sets a range")
    p.add_argument("-d", "--dataset", default="cifar10", choices=dataset_names(), metavar="NAME",
                   help=f"dataset: {' '.join(dataset_names())} [cifar10]")
    p.add_argument("-r", "--root", required=True, metavar="DIR", help="data root; the dataset is DIR/<dataset>")
    p.add_argument("--teacher", metavar="DIR", help="a finished wmdd pretrain output directory (required unless "
                   "--holdout-only)")
    p.add_argument("--holdout-only", action="store_true",
                   help="carve OUT/holdout/<dataset> and stop (no teacher needed), to pretrain a teacher on its train "
                        "part that has not seen the held-out images")
    p.add_argument("--out", default="tune", metavar="DIR", help="output directory [./tune]")
    p.add_argument("--method", default="wmdd", metavar="NAME", help="recover method whose recipe is tuned [wmdd]")
    p.add_argument("-c", "--ipc", type=COUNT, default=10, help="images per class [10]")
    p.add_argument("--protocol", default="fkd", help="evaluation protocol of every trial (fkd, dsa, dance) [fkd]")
    p.add_argument("-e", "--student", metavar="MODEL", help="student model [wmdd run's]")
    p.add_argument("-z", "--epochs", type=COUNT, metavar="N", help="relabel and student epochs of a trial [preset]")
    p.add_argument("--batch-size", type=COUNT, metavar="N", help="relabel/student batch size [wmdd run's]")
    p.add_argument("--classes", metavar="N|FILE", help="class subset [all]")
    p.add_argument("--input-size", type=COUNT, metavar="PX", help="input side [the dataset's]")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the held-out split, the sampler and every trial [0]")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--trials", type=COUNT, default=20, help="finished trials the study ends with [20]")
    p.add_argument("--val-per-class", type=COUNT, metavar="N",
                   help="train images per class held out for scoring [10 %% of each class]")
    p.add_argument("--params", nargs="+", choices=TUNABLE, metavar="NAME",
                   help=f"which of {', '.join(TUNABLE)} to search [all the method has]")
    p.add_argument("--space", nargs="+", default=[], metavar="NAME=SPEC",
                   help="ranges: lr=0.01:0.5:log iterations=50:400:intlog factor=1,2 init=medoid,real ...")
    p.add_argument("--config", metavar="YAML", help="base preset [wmdd/configs/<dataset>.yaml]")
    p.add_argument("--storage", metavar="URL", help="Optuna storage [sqlite:///OUT/study.db]")
    p.add_argument("--study-name", default="wmdd-tune", help="study name in the storage [wmdd-tune]")
    for stage in ("recover", "relabel", "train"):
        p.add_argument(f"--{stage}-args", default="", metavar='"..."', help=f"extra flags for every trial's {stage}")
    return p


def base_run_argv(args: argparse.Namespace, root: Path) -> list[str]:
    """The ``wmdd run`` arguments every trial shares (the held-out root, the teacher, budgets)."""
    argv = ["-d", args.dataset, "-r", str(root), "--teacher", str(args.teacher), "--out", str(args.out / "runs"),
            "-c", str(args.ipc), "--method", args.method, "--protocol", args.protocol, "--seed", str(args.seed),
            "--device", args.device, "--config", str(args.config)]
    for flag, value in (("-e", args.student), ("-z", args.epochs), ("--batch-size", args.batch_size),
                        ("--classes", args.classes), ("--input-size", args.input_size)):
        if value is not None:
            argv += [flag, str(value)]
    for stage in ("relabel", "train"):
        if getattr(args, f"{stage}_args"):
            argv.append(f"--{stage}-args={getattr(args, f'{stage}_args')}")
    return argv


def trial_run_argv(args: argparse.Namespace, base: list[str], params: dict) -> list[str]:
    """One trial's ``wmdd run`` arguments: ``base``, its run name and its recipe (and, for a method
    that uses the barycenters, ``--cache-dir OUT/cache``: the trials share the teacher features and
    the barycenters of a factor instead of recomputing them)."""
    shared = ["--cache-dir", str(args.out / "cache")] if getattr(args, "shared_cache", False) else []
    recover = shlex.join(shlex.split(args.recover_args) + shared + trial_argv(params))
    return [*base, "-x", run_name(params), f"--recover-args={recover}"]


def check(argv: list[str]) -> None:
    """Check ``wmdd run argv`` with every stage's parser (nothing runs).

    Raises:
        UserError: a stage would refuse its arguments.
    """
    from wmdd.run import prepare

    prepare(argv)


def resolve_space(args: argparse.Namespace, root: Path) -> tuple[dict[str, Param], dict | None]:
    """The searched parameters: the method's defaults (:func:`wmdd.tune.space.default_space`)
    around its resolved recipe, limited to ``--params``, with ``--space`` ranges on top.

    Returns:
        The space, and the method's own recipe as a trial's values (``None`` when the space
        excludes it; :func:`wmdd.tune.space.recipe_values`).

    Raises:
        UserError: an unknown method, a ``--space`` value that cannot be parsed, or a ``--params``
            name the method does not have.
    """
    from wmdd.recover.methods import get_method, method_names
    from wmdd.recover.methods.registry import own_options
    from wmdd.recover.options import parse_args

    if args.method not in method_names():
        raise UserError(f"--method {args.method}: not a registered method; use one of {', '.join(method_names())}")
    method = get_method(args.method)
    if not method.optimizes:
        raise UserError(f"--method {args.method} copies real images without optimising them: there is no recipe to "
                        "tune; tune an optimising method")
    argv = ["--method", args.method, "--data-path", str(root / args.dataset), "--output-dir", str(args.out / "probe"),
            "--ipc", str(args.ipc), "--config", str(args.config), "--teacher", str(args.teacher),
            *shlex.split(args.recover_args)]
    resolved = parse_args(argv)
    owned = {name for name, users in own_options().items() if args.method in users}
    space = default_space(resolved, method.inits, owned)
    if args.params:
        missing = [n for n in args.params if n not in space]
        if missing:
            raise UserError(f"--params {' '.join(missing)}: --method {args.method} has no such option to tune; choose "
                            f"from {', '.join(space)}")
        space = {n: space[n] for n in args.params}
    for spec in args.space:
        param = parse_param(spec)
        space[param.name] = param
    return space, recipe_values(resolved, space)


def check_corners(args: argparse.Namespace, base: list[str], space: dict[str, Param]) -> None:
    """Check with the stages' parsers that every end of every range is a recipe the stages take
    (each parameter at its ends, the others at their first value).

    Raises:
        UserError: naming the parameter, the value and what the stage said.
    """
    first = {name: p.corners()[0] for name, p in space.items()}
    for name, param in space.items():
        for value in param.corners():
            try:
                check(trial_run_argv(args, base, {**first, name: value}))
            except UserError as exc:
                raise UserError(f"--space {param.describe()}: a trial with {name} = {value} would be refused: {exc}; "
                                "narrow the range") from None
            except SystemExit:
                raise UserError(f"--space {param.describe()}: a trial with {name} = {value} would be refused (see "
                                "above); narrow the range") from None


def run_trial(args: argparse.Namespace, base: list[str], params: dict) -> float | None:
    """Run one trial's ``wmdd run`` and return its student's last-epoch top-1 on the held-out
    split, or ``None`` when the run failed.

    Raises:
        KeyboardInterrupt: the run was stopped by Ctrl-C (the trial stays marked running, and is
            retried when the study resumes).
    """
    code = run_module("wmdd.run", trial_run_argv(args, base, params), dict(os.environ))
    if code == INTERRUPTED:
        raise KeyboardInterrupt
    if code != 0:
        return None
    results = args.out / "runs" / args.dataset / run_name(params) / "train" / "results.json"
    return float(read_json(results, "student results")["top1"])


def settings_of(args: argparse.Namespace, space: dict[str, Param]) -> dict:
    """What a resumed study must share with the stored one: the question and the space."""
    keys = ("dataset", "method", "ipc", "protocol", "student", "epochs", "batch_size", "classes", "input_size", "seed",
            "val_per_class", "recover_args", "relabel_args", "train_args")
    return {**{k: getattr(args, k) for k in keys}, "teacher": str(args.teacher), "config": str(args.config),
            "root": str(args.root), "space": [p.describe() for p in space.values()]}


def finish(args: argparse.Namespace, study, space: dict[str, Param], holdout: dict, base: list[str]
           ) -> tuple[Path, FrozenTrial]:
    """Write ``OUT/trials.csv`` and ``OUT/preset.yaml`` (the recipe of the best trial: highest
    held-out top-1, the earliest among equals), check the preset with every stage's parser.

    Returns:
        The preset's path and the best trial.
    """
    study.trials_dataframe().to_csv(args.out / "trials.csv", index=False)
    finished = completed(study)
    best = max(finished, key=lambda t: (t.value, -t.number))
    own = own_recipe_trial(study)
    preset_path = args.out / "preset.yaml"
    comments = [
        f"wmdd tune: --method {args.method} recipe chosen on a split held out from {args.dataset}'s train split",
        (f"(seed {args.seed}, {holdout['val_images']} held-out / {holdout['train_images']} train images; the test "
         "split was not read)"),
        (f"best of {len(finished)} finished trials: trial {best.number}, held-out top-1 {best.value:.2f} %, "
         f"run {args.out / 'runs' / args.dataset / run_name(best.params)}"),
        (f"the method's own recipe (trial {own.number}: "
         f"{' '.join(f'{k}={v}' for k, v in own.params.items())}): held-out top-1 {own.value:.2f} %"
         if own else "the method's own recipe was not a trial (outside the searched ranges)"),
        f"teacher {args.teacher}; IPC {args.ipc}; protocol {args.protocol}; relabel/student epochs "
        f"{args.epochs or 'of the preset'}; searched " + " ".join(p.describe() for p in space.values()),
        f"evaluate once on the test split: wmdd run --config {preset_path} --method {args.method} -c {args.ipc} ...",
    ]
    write_preset(preset_path, tuned_preset(load_sectioned(args.config), args.method, best.params), comments)
    check([*base, "-x", "preset-check", "--config", str(preset_path)])
    return preset_path, best


def carve(args: argparse.Namespace, train: Path) -> dict:
    """Write (or, when written before with the same settings, keep) the held-out split of ``train``
    as ``OUT/holdout/<dataset>``: the study's and ``--holdout-only``'s one way to it.

    Returns:
        The split's record (:func:`wmdd.data.holdout.write_holdout_root`).

    Raises:
        UserError: as :func:`wmdd.data.holdout.write_holdout_root`.
    """
    args.out.mkdir(parents=True, exist_ok=True)
    return write_holdout_root(train, args.out / "holdout" / args.dataset, args.val_per_class, args.seed)


def carve_only(args: argparse.Namespace, train: Path) -> int:
    """``--holdout-only``: write the held-out split (:func:`carve`) and print how to pretrain a
    teacher on its train part, whose held-out scores are then not biased by having seen the
    held-out images.

    Raises:
        UserError: as :func:`wmdd.data.holdout.write_holdout_root`.
    """
    holdout = carve(args, train)
    root, teacher = args.out / "holdout" / args.dataset, args.out / "teacher"
    print(f"held-out split: {holdout['val_images']} of {args.dataset}'s train images in {root / 'val'}, the other "
          f"{holdout['train_images']} in {root / 'train'}")
    print(f"a teacher that has not seen the held-out images: wmdd pretrain --dataset {args.dataset} --data-path {root} "
          f"--output-dir {teacher} ...  (the dataset's pretrain options); then the same wmdd tune command with "
          f"--teacher {teacher} instead of --holdout-only")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``wmdd tune``: carve the held-out split, run the study to ``--trials`` finished trials,
    write the preset."""
    from wmdd.recover.methods.registry import own_options
    from wmdd.run import CONFIGS

    args = build_parser().parse_args(argv)
    if args.holdout_only and args.teacher is not None:
        raise UserError(f"--holdout-only carves the held-out split and stops, so --teacher {args.teacher} would not be "
                        "used; drop --teacher (or drop --holdout-only to run the study)")
    if args.teacher is None and not args.holdout_only:
        raise UserError("--teacher DIR is required: a finished wmdd pretrain output directory (or --holdout-only to "
                        "carve the held-out split first and pretrain a teacher on its train part)")
    args.out, args.root = Path(args.out).expanduser().resolve(), Path(args.root).expanduser().resolve()
    args.config = Path(args.config).expanduser().resolve() if args.config else CONFIGS / f"{args.dataset}.yaml"
    train = args.root / args.dataset / "train"
    if not train.is_dir():
        raise UserError(f"{train}: no train split; give -r DATA_ROOT with DATA_ROOT/{args.dataset}/train "
                        "(wmdd prepare)")
    if args.holdout_only:
        return carve_only(args, train)
    args.teacher = Path(args.teacher).expanduser().resolve()
    if not (args.teacher / "manifest.json").is_file():
        raise UserError(f"--teacher {args.teacher}: no manifest.json there; give the output directory of a finished "
                        "wmdd pretrain")
    load_sectioned(args.config)
    holdout = carve(args, train)
    root = args.out / "holdout"
    base = base_run_argv(args, root)
    space, own_recipe = resolve_space(args, root)
    args.shared_cache = args.method in own_options().get("cache_dir", ())
    check_corners(args, base, space)
    study = open_study(args.storage or f"sqlite:///{args.out / 'study.db'}", args.study_name,
                       settings_of(args, space), args.seed)
    if own_recipe is None:
        print(f"note: --method {args.method}'s own recipe lies outside the searched ranges; it is not run as a trial",
              flush=True)
    elif enqueue_own_recipe(study, own_recipe):
        print(f"trial 0 runs --method {args.method}'s own recipe: "
              f"{' '.join(f'{k}={v}' for k, v in own_recipe.items())}", flush=True)
    for number in retry_interrupted(study):
        print(f"trial {number} was interrupted: running its recipe again (its finished stages are kept)", flush=True)
    print(f"held-out split: {holdout['val_images']} of {args.dataset}'s train images "
          f"({root / args.dataset / 'val'}); searching {' '.join(p.describe() for p in space.values())}", flush=True)
    distributions = {name: p.distribution() for name, p in space.items()}
    failures = 0
    while len(completed(study)) < args.trials:
        trial = study.ask(distributions)
        trial.set_user_attr(HOST, socket.gethostname())
        trial.set_user_attr(PID, os.getpid())
        print(f"==> trial {trial.number}: {' '.join(f'{k}={v}' for k, v in trial.params.items())}", flush=True)
        score = run_trial(args, base, trial.params)
        if score is None:
            study.tell(trial, state=TrialState.FAIL)
            failures += 1
            print(f"warning: trial {trial.number} failed (its output is above; run "
                  f"{args.out / 'runs' / args.dataset / run_name(trial.params)})", file=sys.stderr, flush=True)
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise UserError(f"{failures} trials failed in a row (see above); fix the setting they share, then "
                                "rerun the same command to go on with the study")
            continue
        failures = 0
        study.tell(trial, score)
        print(f"trial {trial.number}: held-out top-1 {score:.2f} % ({len(completed(study))}/{args.trials} finished)",
              flush=True)
    preset, best = finish(args, study, space, holdout, base)
    print(f"best: trial {best.number}, held-out top-1 {best.value:.2f} %: "
          f"{' '.join(f'{k}={v}' for k, v in best.params.items())}")
    print(f"preset: {preset}  (wmdd run --config {preset} ... reads the test split once)")
    return 0

if __name__ == "__main__":
    run_main(main)
