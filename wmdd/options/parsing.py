"""Entry-point helpers shared by every stage's ``__main__``: logging set-up, a parser
with one-line errors, and turning :class:`UserError` into a clear message and exit
status 2."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from typing import Callable, Iterable

from tqdm import tqdm

from wmdd.errors import UserError
from wmdd.options.bounds import Bounded

log = logging.getLogger("wmdd")


class StageParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``error: MESSAGE (see PROG --help)``,
    with exit status 2 (argparse's default prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        """argparse's parse, then a check that every range-checked option holds a number:
        ``--lr=--`` makes argparse store ``[]`` without calling the option's type."""
        parsed, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            value = getattr(parsed, action.dest, None)
            if isinstance(action.type, Bounded) and value is not None and value is not action.default \
                    and not isinstance(value, action.type.kind):
                self.error(f"argument {'/'.join(action.option_strings)}: {value!r} is not {action.type.describe()}")
        return parsed, extras


def setup_logging() -> None:
    """INFO logging on rank 0, warnings only on other ranks."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def user_message(exc: UserError) -> str:
    """The message of ``exc`` without the worker traceback that a DataLoader
    worker adds when it re-raises the error in the main process."""
    text = str(exc)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split("UserError: ", 1)[-1]
    return text


#: ``errno`` values of a write that the machine refused, with what to tell the user.
WRITE_FAULTS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied"}


def fault_message(exc: OSError) -> str | None:
    """One line for an :class:`OSError` that the machine, not the code, caused (disk full,
    read-only, no permission): the path, the cause and that a rerun resumes; ``None`` for
    any other error (which stays a traceback: a bug to report)."""
    cause = WRITE_FAULTS.get(exc.errno)
    if cause is None:
        return None
    where = exc.filename or "a file of this stage"
    return (f"{where}: {cause} ({exc.strerror}); fix that, then rerun the same command: finished work is kept "
            "and the stage resumes")


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run ``main(argv)`` and exit: 0 on success; 2 with one ``error:`` line on a
    :class:`UserError` or a write the machine refused (:func:`fault_message`); 130 with one
    line on Ctrl-C (SIGINT), which leaves a resumable run like SIGTERM does."""
    from wmdd.io.lock import release_output_locks
    from wmdd.runtime.distributed import cleanup

    setup_logging()
    try:
        code = main(argv)
    except UserError as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C); rerun the same command to resume where it stopped", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        message = fault_message(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    finally:
        release_output_locks()
        cleanup()
    sys.exit(code or 0)


def progress(iterable: Iterable, desc: str, enabled: bool = True, total: int | None = None) -> Iterable:
    """A tqdm progress bar on rank 0 (``enabled``) when stderr is a terminal; log
    files get the stages' log lines only."""
    return tqdm(iterable, desc=desc, total=total, disable=not (enabled and sys.stderr.isatty()), leave=False,
                dynamic_ncols=True)
