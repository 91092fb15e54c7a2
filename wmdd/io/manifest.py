"""Stage manifests: ``manifest.json``, written last, means the stage finished.

A manifest records the stage, the schema version, the resolved arguments, the
dataset spec and class list, the model, the input artifacts with their sha256
the outputs as paths relative to the stage directory and, for every file under
them, its size and sha256 (``files``). The next stage reads it and refuses a
mismatch with a message naming both values; a stage directory whose listed
files are missing or changed does not count as finished.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Any

from wmdd.data.folders import is_image_file, recorded_classes
from wmdd.errors import UserError
from wmdd.io.files import atomic_write_json, check_output_dir, read_json, sha256_file
from wmdd.io.lock import lock_output_dir

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def jsonable(value: Any) -> Any:
    """``value`` with paths turned into strings and tuples into lists, recursively."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def output_files(out_dir: Path, outputs: list[str]) -> dict[str, dict]:
    """``{relative path: {"bytes": size, "sha256": hex}}`` for every file named in
    ``outputs`` or lying (at any depth) under a directory named there, sorted by path."""
    files = []
    for rel in outputs:
        path = out_dir / rel
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {p.relative_to(out_dir).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(files)}


def verify_output_files(stage_dir: str | Path, manifest: dict, stage: str) -> None:
    """Check that every file the manifest lists (``files``; for manifests without it,
    the ``outputs``) is still there, with the recorded size and sha256.

    Raises:
        UserError: naming the first missing or changed file and the fix.
    """
    stage_dir = Path(stage_dir)
    fix = (f"restore it, or delete {stage_dir} and run the {stage} stage again "
           "(downstream stages made from it are then stale too)")
    recorded = manifest.get("files")
    if recorded is None:
        for rel in manifest.get("outputs", []):
            if not (stage_dir / rel).exists():
                raise UserError(f"{stage_dir / rel}: listed by {stage_dir / MANIFEST} but missing; {fix}")
        return
    for rel, want in recorded.items():
        path = stage_dir / rel
        if not path.is_file():
            raise UserError(f"{path}: listed by {stage_dir / MANIFEST} but missing; {fix}")
        size = path.stat().st_size
        if size != want["bytes"] or sha256_file(path) != want["sha256"]:
            raise UserError(f"{path}: changed since {stage_dir / MANIFEST} was written ({size} bytes, "
                            f"recorded {want['bytes']}; or a different sha256); {fix}")


def write_manifest(out_dir: str | Path, *, stage: str, args: dict, outputs: list[str],
                   dataset: dict | None = None, classes: list[str] | None = None,
                   model: str | None = None, inputs: dict[str, str | Path] | None = None,
                   extra: dict | None = None) -> dict:
    """Write ``out_dir/manifest.json`` atomically and return its content.

    Args:
        out_dir: the stage's output directory.
        stage: ``"pretrain"``, ``"recover"``, ``"relabel"`` or ``"train"``.
        args: the resolved arguments of the run.
        outputs: produced files, relative to ``out_dir``; each must exist.
        dataset: ``DatasetSpec.to_dict()``.
        classes: class folder names in class-index order.
        model: architecture name.
        inputs: name -> path of input artifacts; their sha256 are recorded.
        extra: stage-specific fields (e.g. accuracies).

    Raises:
        FileNotFoundError: an output listed does not exist (a bug, not user input).
    """
    out_dir = Path(out_dir)
    for rel in outputs:
        if not (out_dir / rel).exists():
            raise FileNotFoundError(f"{out_dir / rel}: listed as an output but missing")
    manifest = {
        "stage": stage,
        "schema_version": SCHEMA_VERSION,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "args": jsonable(args),
        "dataset": dataset,
        "classes": classes,
        "model": model,
        "inputs": {name: {"path": str(Path(p).resolve()), "sha256": sha256_file(p)}
                   for name, p in (inputs or {}).items()},
        "outputs": list(outputs),
        "files": output_files(out_dir, list(outputs)),
    }
    if extra:
        manifest.update(jsonable(extra))
    atomic_write_json(out_dir / MANIFEST, manifest)
    return manifest


def read_manifest(stage_dir: str | Path, stage: str) -> dict:
    """The manifest of a finished ``stage`` in ``stage_dir``.

    Raises:
        UserError: no manifest (the stage did not finish), another stage's
            manifest, an unknown schema version, or a listed output file that is
            missing or changed (:func:`verify_output_files`).
    """
    path = Path(stage_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{stage_dir}: no {MANIFEST}, so the {stage} stage did not finish there; "
                        f"run (or re-run) `python -m {stage}` with --output-dir {stage_dir}")
    manifest = _json_object(path, "manifest")
    if "stage" not in manifest:
        raise UserError(f"{path}: has no 'stage', so it is not a manifest this toolkit wrote; restore it, or run "
                        f"the {stage} stage again with --output-dir {stage_dir}")
    if manifest.get("stage") != stage:
        raise UserError(f"{path}: is a {manifest.get('stage')!r} manifest, expected {stage!r}; "
                        f"pass the {stage} stage's output directory")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{path}: schema version {manifest.get('schema_version')} is not "
                        f"{SCHEMA_VERSION}; re-run the {stage} stage with this version of the toolkit")
    verify_output_files(stage_dir, manifest, stage)
    return manifest


#: A small record inside a distilled set's ``images/`` folder (written by recover and decode),
#: so that the set's multi-formation factor and input size travel with the images when the
#: folder is copied without its run's manifest.
SET_RECORD = ".wmdd_set.json"


def write_set_record(images_dir: str | Path, *, stage: str, factor: int, input_size: int) -> None:
    """Write :data:`SET_RECORD` into ``images_dir``: the ``stage`` that wrote the images
    (``"recover"`` or ``"decode"``), the multi-formation ``factor`` of the stored images (1 for
    whole images) and their side ``input_size`` in pixels.

    Raises:
        OSError: the file cannot be written (disk full, read-only; :func:`wmdd.options.parsing.run_main`
            reports it in one line).
    """
    atomic_write_json(Path(images_dir) / SET_RECORD, {"format": "wmdd-distilled-set", "stage": stage,
                                                      "factor": int(factor), "input_size": int(input_size)})


def _json_object(path: Path, what: str) -> dict:
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise UserError(f"{path}: holds a JSON {type(data).__name__}, not a {what} (an object); restore it, or "
                        "rerun the stage that wrote it")
    return data


def recover_record(images_dir: str | Path) -> dict:
    """What is recorded about the distilled set in ``images_dir``: the ``manifest.json`` of the
    run that wrote it (the file next to the folder, read without verifying its outputs),
    overridden by the set's own :data:`SET_RECORD` inside the folder; ``{}`` when there is
    neither (images made elsewhere). Source of a set's recorded properties
    (multi-formation ``"factor"``, ``"input_size"`` in pixels).

    Raises:
        UserError: a record is unreadable or not a JSON object (:func:`wmdd.io.files.read_json`).
    """
    images_dir = Path(images_dir)
    manifest = images_dir.parent / MANIFEST
    record = _json_object(manifest, "recover manifest") if manifest.is_file() else {}
    own = images_dir / SET_RECORD
    if own.is_file():
        record = {**record, **_json_object(own, "distilled-set record")}
    return record


def verify_upstream(images_dir: str | Path) -> None:
    """Check a distilled set against the manifest of the recover or decode run that wrote it
    (``manifest.json`` next to ``images_dir``; a set without one is taken as it is): every
    listed file still there and unchanged, and no image that the manifest does not list.
    Relabel and train call it, as each stage checks its own outputs before reusing them.

    Raises:
        UserError: the manifest is unreadable, not a recover or decode manifest, or an image is
            missing, changed or extra (names the file and the fix).
    """
    images_dir = Path(images_dir)
    path = images_dir.parent / MANIFEST
    if not path.is_file():
        return
    stage = _json_object(path, "manifest").get("stage", "recover")
    if stage not in ("recover", "decode"):
        raise UserError(f"{path}: a {stage!r} manifest next to {images_dir}, not one of recover or decode; pass the "
                        "images folder of a recover or decode output")
    manifest = read_manifest(images_dir.parent, stage)
    listed = set(manifest.get("files", {}))
    prefix = images_dir.name + "/"
    if listed:
        for file in sorted(p for p in images_dir.rglob("*") if p.is_file() and is_image_file(str(p), str(images_dir))):
            rel = prefix + file.relative_to(images_dir).as_posix()
            if rel not in listed:
                raise UserError(f"{file}: not listed by {path}, so not part of the {stage} run's set; move it away "
                                f"(or delete {images_dir.parent} and run {stage} again)")


RUN_ARGS = ".run_args.json"


#: Options added after runs were recorded, with the value those earlier runs used (their
#: arguments lack the key): ``--bn-reduction`` arrived when ``wmdd-paper`` switched to the
#: authors' mean over classes; every earlier WMDD-family run summed.
LEGACY_VALUES = {"bn_reduction": "sum"}


def _recorded(args: dict, key: str):
    return args[key] if key in args else LEGACY_VALUES.get(key)


def same_args(old: dict, new: dict) -> bool:
    """Whether two recorded argument dicts define the same run; an option missing from one
    equals its :data:`LEGACY_VALUES` entry, else ``None`` (unset), in the other, so options
    added by a later version of the toolkit do not make earlier runs look different."""
    return all(_recorded(old, k) == _recorded(new, k) for k in set(old) | set(new))


def _first_difference(old: dict, new: dict) -> str:
    k = sorted(k for k in set(old) | set(new) if _recorded(old, k) != _recorded(new, k))[0]
    return f"{k}: {_recorded(old, k)!r} there, {_recorded(new, k)!r} now"


def record_run_args(stage_dir: str | Path, stage: str, args: dict) -> None:
    """Record the arguments of an unfinished run in ``stage_dir/.run_args.json``, or
    check them against those recorded by the run being resumed.

    Stages that resume per unit of work (recover per class batch, relabel per
    epoch) call this before writing anything else, so a resumed run can never
    mix outputs of two different configurations.

    It first takes the directory's writer lock (:func:`wmdd.io.lock.lock_output_dir`), so two
    runs started on one directory never both write there.

    Raises:
        UserError: the directory holds an unfinished run with other arguments, or another
            process is writing there.
    """
    lock_output_dir(stage_dir, stage)
    path = Path(stage_dir) / RUN_ARGS
    new = jsonable(args)
    if path.exists():
        old = read_json(path, "run arguments")
        if not same_args(old, new):
            raise UserError(f"{stage_dir}: holds an unfinished {stage} run with different arguments "
                            f"({_first_difference(old, new)}); re-run with the same arguments to resume, "
                            "or use another --output-dir")
        return
    atomic_write_json(path, new)


def run_arguments(args, ignore: tuple[str, ...] = ()) -> dict:
    """The arguments that define a run: ``vars(args)`` as JSON values, without ``ignore``
    (options such as ``--workers`` that may change without changing the result); a
    ``--classes FILE`` as the class names it lists (:func:`wmdd.data.folders.recorded_classes`).

    Raises:
        UserError: a ``--classes`` file that cannot be used (as :func:`wmdd.data.folders.resolve_classes`).
    """
    run = {k: v for k, v in jsonable(vars(args)).items() if k not in ignore}
    if "classes" in run:
        run["classes"] = recorded_classes(args.classes, getattr(args, "data_path", None))
    return run


def finished_with_same_args(stage_dir: str | Path, stage: str, args: dict) -> bool:
    """True (and logged) when ``stage_dir`` holds a finished ``stage`` run with exactly ``args``
    and every output file its manifest lists, unchanged.

    Raises:
        UserError: ``stage_dir`` is not a usable directory (:func:`wmdd.io.files.check_output_dir`);
            it holds a finished run with different arguments (names the first
            differing argument; use a new output directory) or whose outputs are
            missing or changed (names the file).
    """
    check_output_dir(stage_dir)
    path = Path(stage_dir) / MANIFEST
    if not path.is_file():
        return False
    old = read_manifest(stage_dir, stage)["args"]
    new = jsonable(args)
    if same_args(old, new):
        logging.getLogger("wmdd").info("%s: already finished with these arguments; nothing to do", stage_dir)
        return True
    raise UserError(f"{path}: a finished {stage} run with different arguments is already there "
                    f"({_first_difference(old, new)}); use another --output-dir or delete that directory")
