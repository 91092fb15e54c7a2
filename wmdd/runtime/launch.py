"""Starting a stage's command (``python -m wmdd.<stage> ARGS``) from ``wmdd run`` as its own process.

On Linux the orchestrator imports the stage's module once and forks a child that runs its
``main`` (through :func:`wmdd.options.parsing.run_main`, as ``python -m`` does): the child is a
separate process with the stage's own exit status, signals and memory, but does not spend
seconds importing torch and torchvision again for every stage (most of a short stage's time
on a CPU). The orchestrator itself never runs torch code or touches CUDA, so forking it is
safe. Elsewhere, and under ``torchrun``, the stage is a new interpreter.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable


def can_fork() -> bool:
    """Whether stages are forked from this process rather than started afresh: on Linux, while
    this process runs no other thread and has not initialised CUDA (a fork copies neither a
    thread nor a usable CUDA context)."""
    if not (sys.platform.startswith("linux") and hasattr(os, "fork")) or threading.active_count() > 1:
        return False
    cuda = sys.modules.get("torch.cuda")
    return not (cuda is not None and cuda.is_initialized())


def stage_main(module: str):
    """The ``main(argv)`` that ``python -m module`` runs (``module.__main__`` for a package).

    Raises:
        ModuleNotFoundError: no such module (a programming error: the stages are fixed).
    """
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise ModuleNotFoundError(f"no module {module!r}")
    return importlib.import_module(f"{module}.__main__" if spec.submodule_search_locations else module).main


def run_module(module: str, argv: list[str], env: dict[str, str], launch: list[str] | None = None,
               started: Callable[[], None] | None = None) -> int:
    """Run ``python -m module argv`` with the environment ``env`` and wait for it.

    Args:
        module: e.g. ``"wmdd.recover"``.
        argv: its arguments.
        env: the whole environment of the stage process.
        launch: the command before the module name; ``None`` or ``[python, "-m"]`` forks when
            :func:`can_fork`, anything else (``torchrun ... -m``) starts that command.
        started: called in this process once the stage process exists (e.g. to start a
            thread: threads are started after the fork, never copied into the stage).

    Ctrl-C reaches the stage process (the terminal signals the whole process group); this
    process ignores it while it waits, so that the stage's one-line message and exit status
    (130) are what the user sees, not a second message from here.

    Returns:
        The exit status (negative: killed by that signal, as :func:`subprocess.call` returns).
    """
    plain = launch is None or launch == [sys.executable, "-m"]
    if not (plain and can_fork()):
        proc = subprocess.Popen([*(launch or [sys.executable, "-m"]), module, *argv], env=env)
        if started:
            started()
        with _sigint_ignored():
            return proc.wait()
    main = stage_main(module)
    sys.stdout.flush()
    sys.stderr.flush()
    with _sigint_ignored():  # from before the fork: no moment where Ctrl-C ends only this process
        pid = os.fork()
        if pid == 0:  # the stage process
            _stage_process(module, main, argv, env)
        if started:
            started()
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def exit_status(main: Callable[[list[str] | None], int | None], argv: list[str]) -> int:
    """Run a stage's ``main(argv)`` as ``python -m`` runs it (through
    :func:`wmdd.options.parsing.run_main`) and return the exit status that process would
    have, printing what the interpreter would print on the way out (a ``sys.exit`` message,
    an uncaught exception's traceback)."""
    from wmdd.options.parsing import run_main

    try:
        run_main(main, argv)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 1
        return 0 if exc.code is None else exc.code
    except Exception:  # noqa: BLE001 - what the interpreter prints before exiting with status 1
        traceback.print_exc()
        return 1
    return 0


def _stage_process(module: str, main, argv: list[str], env: dict[str, str]) -> None:
    """The forked stage: run ``main(argv)`` as ``python -m module`` would, then exit (never returns)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 1
    try:
        os.environ.clear()
        os.environ.update(env)
        sys.argv = [module, *argv]
        code = exit_status(main, argv)
    except BaseException:  # noqa: BLE001 - e.g. a second Ctrl-C while run_main was reporting the first
        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()  # as at a normal exit: e.g. DataLoader workers are stopped and joined
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


@contextlib.contextmanager
def _sigint_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
