"""The Optuna study behind ``wmdd tune``: opened or resumed from its storage, with interrupted
trials retried.

A study lives in a database (by default a SQLite file in the output directory; any storage URL
that Optuna takes, e.g. a PostgreSQL server shared by several machines). Its user attributes
record the settings it was started with, so that a resumed study with other settings is refused
instead of mixing scores of two questions. Each trial records the host and process that runs it:
a trial still marked running whose process on this host is gone (killed, or the machine
restarted) is marked failed and enqueued again with the same parameters, so its run directory
(named after the parameters) resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket

import optuna
from optuna.trial import FrozenTrial, TrialState

from wmdd.errors import UserError

#: Trial user attributes: where it runs, which trial an enqueued retry replaces, and whether it
#: is the method's own recipe.
HOST, PID, RETRY_OF, OWN_RECIPE = "host", "pid", "retry_of", "own_recipe"


def open_study(storage: str, name: str, settings: dict, seed: int) -> optuna.Study:
    """Create the study ``name`` in ``storage`` (direction: maximise the held-out top-1, TPE
    sampler seeded with ``seed``), or load it when it exists.

    Raises:
        UserError: the storage cannot be opened, or the stored study was started with other
            ``settings`` (each differing key is named).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                                    sampler=optuna.samplers.TPESampler(seed=seed))
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's and Optuna's errors for a storage that cannot be used
        raise UserError(f"--storage {storage}: cannot open the study database ({type(exc).__name__}: {exc}); give a "
                        "writable path or a reachable database URL") from None
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
    elif stored != settings:
        diff = [f"{k}: {stored.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(stored) | set(settings))
                if stored.get(k) != settings.get(k)]
        raise UserError(f"study {name!r} in {storage} was started with other settings ({'; '.join(diff)}); rerun "
                        "with the study's settings, or give another --out / --study-name")
    return study


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def retry_interrupted(study: optuna.Study) -> list[int]:
    """Mark failed the trials left running by a process of this host that no longer exists, and
    enqueue each one's parameters again (once).

    Returns:
        The numbers of the trials enqueued again.
    """
    host, retried = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get(HOST) == host and isinstance(attrs.get(PID), int) and not _alive(attrs[PID]):
            study.tell(trial.number, state=TrialState.FAIL)
            own = {OWN_RECIPE: True} if attrs.get(OWN_RECIPE) else {}
            study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number, **own})
            retried.append(trial.number)
    return retried


def enqueue_own_recipe(study: optuna.Study, params: dict) -> bool:
    """In a study with no trials yet, enqueue the method's own recipe ``params`` as its first
    trial (user attribute ``own_recipe``), so that the study scores the recipe as it stands beside
    the ones it samples and the preset replaces it only with one that did better on held-out data.

    Returns:
        Whether it was enqueued (False for a study that already has trials).
    """
    if study.get_trials(deepcopy=False):
        return False
    study.enqueue_trial(params, user_attrs={OWN_RECIPE: True})
    return True


def own_recipe_trial(study: optuna.Study) -> FrozenTrial | None:
    """The finished trial that ran the method's own recipe (the latest, if it was retried), or ``None``."""
    own = [t for t in completed(study) if t.user_attrs.get(OWN_RECIPE)]
    return own[-1] if own else None


def completed(study: optuna.Study) -> list[FrozenTrial]:
    """The study's finished trials (each with its held-out top-1 as its value)."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def run_name(params: dict) -> str:
    """The run directory name of a trial's parameters: ``trial-`` and 10 hex digits of their
    SHA-256 (sorted JSON), so a retried or repeated trial finds its own stages' outputs."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    return f"trial-{digest[:10]}"
