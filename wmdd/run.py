"""``wmdd run`` (``python -m wmdd.run``, ``./run.sh``): the pipeline pretrain -> recover ->
[decode] -> relabel -> train, through disk, with the flags of WMDD's official ``run.sh``.

Each stage runs as its own process (``python -m wmdd.<stage>``, forked from this one on Linux so
that torch is imported once, :mod:`wmdd.runtime.launch`; ``torchrun`` with several GPUs). Every
stage's arguments are parsed by that stage's own parser before the first stage starts, so a bad
value is refused before anything is written. A finished stage (manifest
present, same arguments) is skipped, so a killed run resumes when started again; each stage's
wall time, summed over its resumed parts, is kept in ``<stage dir>/.wall_seconds``. Outputs:
``<out>/<dataset>/<ID>/{recover,relabel,train}``, the teacher in
``<out>/teachers/<dataset>_<model>/<teacher ID>`` and one row per experiment in
``<out>/results.csv``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from wmdd.data.datasets import dataset_names
from wmdd.errors import UserError
from wmdd.options.bounds import COUNT, NON_NEGATIVE, POSITIVE, SEED
from wmdd.options.parsing import StageParser, run_main
from wmdd.runtime.launch import run_module

STAGES = ("pretrain", "recover", "relabel", "train")
CONFIGS = Path(__file__).resolve().parent / "configs"
#: seconds between updates of a running stage's ``.wall_seconds``
TICK_S = 5.0


def _gpu_list(text: str) -> list[str]:
    ids = text.split(",")
    if not all(i.isdigit() for i in ids):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a GPU index or a comma list like 0,1")
    return ids


def build_parser() -> argparse.ArgumentParser:
    """The orchestrator's parser: WMDD's ``run.sh`` short flags and the long options."""
    from wmdd.recover.methods import method_names

    p = StageParser(prog="wmdd run", formatter_class=argparse.RawDescriptionHelpFormatter,
                    description=__doc__.split("\n\n")[0].replace("``", ""),
                    epilog="wmdd demo (= wmdd run --demo): digits, WMDD beside random real and random real at "
                           "WMDD's pixel budget at IPC 10, then the fair-score tables; about 10 minutes on 2 CPU "
                           "cores.")
    w = p.add_argument_group("WMDD flags")
    w.add_argument("-x", dest="exp", default="exp", metavar="ID", help="experiment id: OUT/<dataset>/<ID>/ [exp]")
    w.add_argument("-y", dest="teacher_id", default="t0", metavar="ID",
                   help="teacher id: OUT/teachers/<dataset>_<model>/<ID>/ [t0]")
    w.add_argument("-d", dest="dataset", default="cifar10", choices=dataset_names(), metavar="NAME",
                   help=f"dataset: {' '.join(dataset_names())} [cifar10]")
    w.add_argument("-m", dest="teacher_model", default="resnet18", metavar="MODEL", help="teacher model [resnet18]")
    w.add_argument("-e", dest="student_model", metavar="MODEL",
                   help="student model [resnet18; --protocol dsa/dance: the protocol's own]")
    w.add_argument("-r", dest="root", metavar="DIR", help="data root; the dataset is DIR/<dataset>")
    w.add_argument("-u", dest="gpus", type=_gpu_list, metavar="GPUS",
                   help="GPU index or comma list (several: torchrun --nproc_per_node N)")
    w.add_argument("-c", dest="ipc", type=COUNT, default=10, metavar="IPC", help="images per class [10]")
    w.add_argument("-p", dest="pretrain", action="store_true", help="pretrain the teacher first")
    w.add_argument("-n", dest="per_class_bn", action="store_true",
                   help="per-class BatchNorm statistics (on by default for wmdd/wmdd-paper; turns it on for sre2l)")
    w.add_argument("-w", dest="wb", action="store_true",
                   help="Wasserstein-barycenter feature matching (on by default for wmdd/wmdd-paper)")
    w.add_argument("-b", dest="r_bn", type=NON_NEGATIVE, metavar="R_BN",
                   help="BatchNorm term weight (lambda) [wmdd/configs/<dataset>.yaml]")
    w.add_argument("-a", dest="lr", type=POSITIVE, metavar="LR", help="recover learning rate [preset]")
    w.add_argument("-t", dest="r_ce", type=NON_NEGATIVE, metavar="R_CE", help="cross-entropy term weight [method's]")
    w.add_argument("-i", dest="iterations", type=COUNT, metavar="ITERS", help="recover iterations [preset]")
    w.add_argument("-z", dest="epochs", type=COUNT, metavar="EPOCHS", help="relabel and train epochs [preset]")
    w.add_argument("-g", dest="debug", action="store_true",
                   help="debug: 20 train / 10 val images per class (recover: max(20, 4 x IPC)), at most 10 "
                        "classes, 2 teacher epochs, 5 recover iterations, 2 epochs")
    p.add_argument("--method", default="wmdd", choices=method_names(), metavar="NAME",
                   help=f"recover method: {' '.join(method_names())} [wmdd]")
    from wmdd.train.protocols import PROTOCOLS

    p.add_argument("--protocol", default="fkd", choices=PROTOCOLS.names(),
                   help="evaluation: fkd = teacher soft labels (relabel + train); dsa = hard labels + DSA "
                        "(no relabel); dance = dsa with DANCE's CutMix and schedule [fkd]")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default="runs", help="output root [./runs]")
    p.add_argument("--seed", type=SEED, default=0, help="seed of recover, relabel and train [0]")
    p.add_argument("--input-size", type=COUNT, metavar="PX", help="input side [the dataset's native size]")
    p.add_argument("--classes", metavar="N|FILE", help="class subset for every stage [all; -g: the first 10]")
    p.add_argument("--teacher-epochs", type=COUNT, metavar="N", help="pretrain epochs [preset]")
    p.add_argument("--teacher", metavar="DIR",
                   help="an existing teacher (a wmdd pretrain output directory) instead of "
                        "OUT/teachers/<dataset>_<model>/<-y ID>; not with -p")
    p.add_argument("--config", metavar="YAML",
                   help="preset for every stage instead of the dataset's wmdd/configs/<dataset>.yaml, e.g. the "
                        "preset.yaml that wmdd tune writes")
    p.add_argument("--batch-size", type=COUNT, metavar="N",
                   help="relabel/train batch size [min(100, distilled images)]")
    for stage in STAGES:
        p.add_argument(f"--{stage}-args", default="", metavar='"..."',
                       help=f"extra flags for wmdd {stage}, e.g. --train-args \"--val-every 50\"")
    p.add_argument("--demo", action="store_true", help="the digits demo (see below)")
    return p


def joined_stage_args(argv: list[str]) -> list[str]:
    """``--recover-args VALUE`` as ``--recover-args=VALUE``, so that a value that starts with a dash
    (``--recover-args --wb``) is taken as the value, as WMDD's run.sh takes it."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in {f"--{s}-args" for s in STAGES} and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


@dataclass
class Plan:
    """Resolved run settings shared by every experiment of one ``wmdd run``."""

    args: argparse.Namespace
    data: Path
    out: Path
    launch: list[str]
    env: dict[str, str]
    config: list[str]
    subset: list[str]
    extra: dict[str, list[str]] = field(default_factory=dict)
    teacher: Path | None = None

    @property
    def teacher_dir(self) -> Path:
        """``--teacher``, else ``<out>/teachers/<dataset>_<teacher model>/<teacher id>``, shared by every
        experiment."""
        if self.teacher is not None:
            return self.teacher
        return self.out / "teachers" / f"{self.args.dataset}_{self.args.teacher_model}" / self.args.teacher_id

    def exp_dir(self, name: str) -> Path:
        """``<out>/<dataset>/<experiment id>``."""
        return self.out / self.args.dataset / name


#: Per stage, the module whose ``parse_args(argv)`` the stage itself parses and checks its arguments with.
PARSERS = {"pretrain": "wmdd.pretrain.__main__", "recover": "wmdd.recover.options", "relabel": "wmdd.relabel.__main__",
           "train": "wmdd.train.student"}


def check_stage_args(stage: str, argv: list[str]) -> None:
    """Parse ``argv`` with ``stage``'s own ``parse_args`` (ranges, YAML preset, method and protocol
    options): a bad value ends the run, with the stage's one-line error, before anything starts.

    Raises:
        UserError: the stage would refuse ``argv`` (its message, prefixed by the stage).
    """
    try:
        importlib.import_module(PARSERS[stage]).parse_args(argv)
    except UserError as exc:
        raise UserError(f"wmdd {stage} would refuse its arguments: {exc}") from None


class Stage:
    """One stage process with its wall time kept in ``<output dir>/.wall_seconds``."""

    def __init__(self, plan: Plan, name: str, argv: list[str], output_dir: Path):
        self.plan, self.name, self.argv, self.output_dir = plan, name, argv + plan.extra[name], output_dir

    def _before(self) -> int:
        try:
            return int((self.output_dir / ".wall_seconds").read_text().strip())
        except (OSError, ValueError):
            return 0

    def run(self) -> int | None:
        """Run the stage; returns its wall seconds summed over resumed parts (a stage that had
        finished keeps the time it took; None when none was recorded).

        Raises:
            SystemExit: the stage failed (its own message is above), with its exit status.
        """
        print(f"==> {self.name}", flush=True)
        before, finished = self._before(), (self.output_dir / "manifest.json").is_file()
        start, stop = time.monotonic(), threading.Event()

        def tick() -> None:
            while not stop.wait(TICK_S):
                if self.output_dir.is_dir():
                    (self.output_dir / ".wall_seconds").write_text(f"{before + int(time.monotonic() - start)}\n")

        ticker = None if finished else threading.Thread(target=tick, daemon=True)
        code = run_module(f"wmdd.{self.name}", self.argv, self.plan.env, self.plan.launch,
                          started=ticker.start if ticker else None)
        stop.set()
        seconds = before or None
        if ticker:
            ticker.join()
            seconds = before + int(time.monotonic() - start)
            if self.output_dir.is_dir():
                (self.output_dir / ".wall_seconds").write_text(f"{seconds}\n")
        if code != 0:
            sys.exit(code)
        return seconds


def _absolute(path: str | None) -> Path | None:
    return Path(path).expanduser().resolve() if path else None


#: Real images per class that -g's recover may start one stored image from (multi-formation
#: factor 2, the default of ``wmdd``: 2 x 2 tiles).
DEBUG_REAL_PER_IMAGE = 4


def lower_debug_ipc(args: argparse.Namespace, train: Path, classes: str | None) -> None:
    """-g: lower ``args.ipc`` so that every class of the (first 10) classes has
    :data:`DEBUG_REAL_PER_IMAGE` x IPC train images (-g's recover reads that many per class,
    ``--train-per-class``), saying so in one line.

    Raises:
        UserError: a ``--classes`` value that cannot be used (:func:`wmdd.data.folders.resolve_classes`).
    """
    from wmdd.data.folders import class_folders, images_per_class, resolve_classes

    names = resolve_classes(classes, train) or class_folders(train)
    fewest = min(images_per_class(train, names).values())
    fit = max(1, fewest // DEBUG_REAL_PER_IMAGE)
    if args.ipc > fit:
        print(f"note: -g lowers IPC from {args.ipc} to {fit}: {train} has {fewest} images in its smallest class, and "
              f"-g's recover reads {DEBUG_REAL_PER_IMAGE} x IPC of them (enough for a factor-2 start)", flush=True)
        args.ipc = fit


def make_plan(args: argparse.Namespace) -> Plan:
    """Resolve paths, device, launcher and presets; prepare the digits for ``--demo``.

    Raises:
        UserError: no ``-r`` (outside the demo), the dataset folder or the ``--config`` file does not
            exist, or ``--teacher`` with ``-p``.
    """
    out = _absolute(args.out)
    if args.demo:
        from wmdd.data.prepare import build_digits

        args.dataset, args.teacher_model, args.student_model, args.ipc = "digits", "convnet", "convnet", 10
        args.batch_size = args.batch_size or 25
        args.root = str(out / "data")
        build_digits(out / "data" / "digits")
    if not args.root:
        raise UserError(f"-r DATA_ROOT is required (the dataset is DATA_ROOT/{args.dataset})")
    data = _absolute(args.root) / args.dataset
    if not data.is_dir():
        raise UserError(f"data root {data} does not exist; prepare it with wmdd prepare (see README)")
    classes = args.classes
    if classes and not classes.isdigit():
        classes = str(_absolute(classes))
    if args.debug and not classes and (data / "train").is_dir():
        folders = [d for d in (data / "train").iterdir() if d.is_dir() and not d.name.startswith(".")]
        classes = "10" if len(folders) > 10 else None
    if args.debug and (data / "train").is_dir():
        lower_debug_ipc(args, data / "train", classes)
    env = dict(os.environ)
    launch = [sys.executable, "-m"]
    if args.gpus:
        if args.device == "cpu":
            raise UserError(f"-u {','.join(args.gpus)} asks for GPUs but --device is cpu")
        env["CUDA_VISIBLE_DEVICES"] = ",".join(args.gpus)
        args.device = "cuda" if args.device == "auto" else args.device
        if len(args.gpus) > 1:
            launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                      f"--nproc_per_node={len(args.gpus)}", "-m"]
    preset = CONFIGS / f"{args.dataset}.yaml"
    if args.config:
        preset = _absolute(args.config)
        if not preset.is_file():
            raise UserError(f"--config {args.config}: no such file; give a YAML preset (wmdd/configs/*.yaml or the "
                            "preset.yaml of wmdd tune)")
    teacher = _absolute(args.teacher)
    if teacher is not None and (args.pretrain or args.demo):
        raise UserError(f"--teacher {args.teacher} uses an existing teacher and {'--demo' if args.demo else '-p'} "
                        "pretrains one: give one of them")
    extra = {s: shlex.split(getattr(args, f"{s}_args")) for s in STAGES}
    return Plan(args, data, out, launch, env, ["--config", str(preset)] if preset.is_file() else [],
                ["--classes", classes] if classes else [], extra, teacher)


@dataclass
class Experiment:
    """One experiment: its id, recover method and the -n/-w switches."""

    name: str
    method: str
    per_class_bn: bool
    wb: bool
    recover_extra: list[str] = field(default_factory=list)


def _needs_teacher(method: str) -> bool:
    from wmdd.recover.methods import get_method

    return get_method(method).requires_teacher


def _stage_argvs(plan: Plan, exp: Experiment, pretrain: bool) -> dict[str, tuple[list[str], Path]]:
    """Every stage's arguments and output directory for ``exp`` (decode and relabel/train of the
    FKD protocol use the recover images' path that exists once recover has run)."""
    a, teacher_dir, exp_dir = plan.args, plan.teacher_dir, plan.exp_dir(exp.name)
    size = ["--input-size", str(a.input_size)] if a.input_size else []
    epochs = ["--epochs", str(a.epochs)] if a.epochs else (["--epochs", "2"] if a.debug else [])
    common = ["--device", a.device, *plan.subset, *plan.config]
    stages: dict[str, tuple[list[str], Path]] = {}
    if pretrain:
        pre = ["--dataset", a.dataset, "--data-path", str(plan.data), "--model", a.teacher_model, "--output-dir",
               str(teacher_dir), *common, *size]
        if a.teacher_epochs or a.debug:
            pre += ["--epochs", str(a.teacher_epochs or 2)]
        if a.debug:
            pre += ["--train-per-class", "20", "--val-per-class", "10"]
        stages["pretrain"] = (pre, teacher_dir)
    rec = ["--data-path", str(plan.data), "--output-dir", str(exp_dir / "recover"), "--method", exp.method,
           "--ipc", str(a.ipc), "--seed", str(a.seed), *common]
    rec += ["--teacher", str(teacher_dir)] if pretrain or (teacher_dir / "manifest.json").is_file() else \
        ["--dataset", a.dataset, *size]
    for flag, value in (("--r-bn", a.r_bn), ("--lr", a.lr), ("--r-ce", a.r_ce), ("--iterations", a.iterations)):
        if value is not None:
            rec += [flag, str(value)]
    if a.debug:
        # 5 iterations: wmdd's multi-formation makes each one 4 x the published WMDD's work; at least
        # 4 x IPC real images per class: wmdd's 2x2 tiles start from that many medoids
        rec += ([] if a.iterations else ["--iterations", "5"]) + ["--train-per-class",
                                                                   str(max(20, DEBUG_REAL_PER_IMAGE * a.ipc))]
    rec += (["--wb"] if exp.wb else []) + (["--per-class-bn"] if exp.per_class_bn else []) + exp.recover_extra
    stages["recover"] = (rec, exp_dir / "recover")
    images = exp_dir / "recover" / "images"
    batch = ["--batch-size", str(a.batch_size)] if a.batch_size else []
    debug_eval = ["--val-per-class", "10", "--val-every", "1"] if a.debug else []
    if a.protocol != "fkd":
        tr = ["--protocol", a.protocol, "--images", str(images), "--dataset", a.dataset, "--data-path",
              str(plan.data), "--output-dir", str(exp_dir / "train"), "--seed", str(a.seed), *epochs, *common,
              *batch, *size, *debug_eval]
        tr += ["--model", a.student_model] if a.student_model else []
        stages["train"] = (tr, exp_dir / "train")
        return stages
    stages["relabel"] = (["--teacher", str(teacher_dir), "--images", str(images), "--output-dir",
                          str(exp_dir / "relabel"), "--seed", str(a.seed), "--device", a.device, *epochs,
                          *plan.config, *batch], exp_dir / "relabel")
    stages["train"] = (["--images", str(images), "--soft-labels", str(exp_dir / "relabel"), "--teacher",
                        str(teacher_dir), "--data-path", str(plan.data), "--model", a.student_model or "resnet18",
                        "--output-dir", str(exp_dir / "train"), "--seed", str(a.seed), *epochs, *common, *batch,
                        *debug_eval], exp_dir / "train")
    return stages


def _with_batch(argv: list[str], batch: int) -> list[str]:
    return argv if "--batch-size" in argv else [*argv, "--batch-size", str(batch)]


def _with_images(argv: list[str], images: Path) -> list[str]:
    at = argv.index("--images")
    return [*argv[:at + 1], str(images), *argv[at + 2:]]


def check_experiment(plan: Plan, exp: Experiment, pretrain: bool) -> None:
    """Check every stage's arguments with its own parser and that the teacher exists or is made.

    Raises:
        UserError: the first stage that would refuse its arguments, extra arguments for a stage
            that does not run, or a missing teacher.
    """
    stages = _stage_argvs(plan, exp, pretrain)
    for name, extra in plan.extra.items():
        if extra and name not in stages:
            why = (f"--protocol {plan.args.protocol} trains on hard labels without a relabel stage"
                   if name == "relabel" else "no teacher is pretrained in this run (add -p)")
            raise UserError(f"--{name}-args {shlex.join(extra)}: {why}; drop it")
    needs_teacher = plan.args.protocol == "fkd" or _needs_teacher(exp.method)
    if not pretrain and needs_teacher and not (plan.teacher_dir / "manifest.json").is_file():
        if plan.teacher is not None:
            raise UserError(f"--teacher {plan.teacher}: no manifest.json there; give the output directory of a "
                            "finished wmdd pretrain")
        raise UserError(f"teacher {plan.teacher_dir} not found; add -p to pretrain it")
    for name, (argv, _) in stages.items():
        argv = _with_batch(argv, 100) if name in ("relabel", "train") else argv
        check_stage_args(name, argv + plan.extra[name])


def run_experiment(plan: Plan, exp: Experiment, pretrain: bool) -> None:
    """Teacher (shared between experiments), recover, [decode], relabel, train, then the summary row."""
    from wmdd.recover.multiformation import recorded_factor

    stages = _stage_argvs(plan, exp, pretrain)
    exp_dir = plan.exp_dir(exp.name)
    seconds = {name: Stage(plan, name, *stages[name]).run() for name in ("pretrain", "recover") if name in stages}
    images = exp_dir / "recover" / "images"
    if plan.args.protocol == "fkd":
        factor = recorded_factor(images)
        if factor != 1:
            # relabel and FKD training cut their views from whole images: decode the tiles first
            print(f"==> decode (multi-formation factor {factor})", flush=True)
            code = run_module("wmdd.tools.decode_images", ["--images", str(images), "--output-dir",
                                                           str(exp_dir / "decoded")], plan.env)
            if code != 0:
                sys.exit(code)
            images = exp_dir / "decoded" / "images"
        count = sum(1 for _ in images.rglob("*.png"))
        batch = plan.args.batch_size or min(count, 100)
        for name in ("relabel", "train"):
            argv, out = stages[name]
            seconds[name] = Stage(plan, name, _with_batch(_with_images(argv, images), batch), out).run()
    else:
        seconds["train"] = Stage(plan, "train", *stages["train"]).run()
    summarize(plan, exp.name, exp_dir, {k: v for k, v in seconds.items() if v is not None})


def summarize(plan: Plan, name: str, exp_dir: Path, seconds: dict[str, int]) -> None:
    """Print the run's summary and append its row to ``<out>/results.csv`` (a results file that
    cannot take the row is a warning: the experiment itself has finished)."""
    code = run_module("wmdd.tools.summarize_run", ["append", "--experiment-dir", str(exp_dir), "--teacher-dir",
                                                   str(plan.teacher_dir), "--experiment", name, "--results-csv",
                                                   str(plan.out / "results.csv"), "--time",
                                                   *(f"{k}={v}" for k, v in seconds.items())], plan.env)
    if code != 0:
        print(f"warning: {name} finished ({exp_dir / 'train' / 'results.json'}) but its row was not added to "
              f"{plan.out / 'results.csv'}", file=sys.stderr)


DEMO = [Experiment("demo-wmdd", "wmdd", True, True), Experiment("demo-random-real", "random-real", False, False),
        Experiment("demo-random-real-f2", "random-real", False, False, ["--factor", "2"])]


def prepare(argv: list[str]) -> tuple[Plan, list[tuple[Experiment, bool]]]:
    """Parse ``wmdd run``'s arguments and check every stage's arguments of every experiment
    (nothing is written, except the demo's digits).

    Returns:
        The plan and the experiments, each with whether it pretrains the teacher.

    Raises:
        UserError: as :func:`make_plan` and :func:`check_experiment`.
        SystemExit: argparse refused an option (its one-line message is printed).
    """
    args = build_parser().parse_args(joined_stage_args(argv))
    plan = make_plan(args)
    if args.demo:
        runs = [(exp, i == 0) for i, exp in enumerate(DEMO)]
    else:
        runs = [(Experiment(args.exp, args.method, args.per_class_bn, args.wb), args.pretrain)]
    for exp, pretrain in runs:
        check_experiment(plan, exp, pretrain or any(p for _, p in runs))
    return plan, runs


def main(argv: list[str] | None = None) -> int:
    """``wmdd run``: one experiment, or the demo's three and their fair-score tables."""
    plan, runs = prepare(sys.argv[1:] if argv is None else argv)
    args = plan.args
    for exp, pretrain in runs:
        run_experiment(plan, exp, pretrain)
    if args.demo:
        print()
        names = [e.name for e in DEMO]
        for baseline in names[1:]:
            code = run_module("wmdd.tools.summarize_run", ["table", "--results-csv", str(plan.out / "results.csv"),
                                                           "--baseline", baseline, *names], plan.env)
            if code != 0:
                print("warning: no fair-score table (see the error above); the runs are complete", file=sys.stderr)
            print(flush=True)
        code = run_module("wmdd.tools.summarize_run", ["verdict", "--results-csv", str(plan.out / "results.csv"),
                                                       "--candidate", names[0], *names[1:]], plan.env)
        if code != 0:
            print("warning: no verdict (see the error above); the runs are complete", file=sys.stderr)
        print(f"synthetic images: {plan.exp_dir(DEMO[0].name) / 'recover' / 'grid.png'}")
    return 0


if __name__ == "__main__":
    run_main(main)
