"""Entry-point helpers shared by every stage's ``__main__``: logging set-up, a parser
with one-line errors, and turning :class:`UserError` into a clear message and exit
status 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Iterable

from tqdm import tqdm

from wmdd.errors import UserError

log = logging.getLogger("wmdd")


class StageParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``error: MESSAGE (see PROG --help)``,
    with exit status 2 (argparse's default prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


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


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run ``main(argv)`` and exit: 0 on success, 2 on :class:`UserError`."""
    from wmdd.runtime.distributed import cleanup

    setup_logging()
    try:
        code = main(argv)
    except UserError as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        sys.exit(2)
    finally:
        cleanup()
    sys.exit(code or 0)


def progress(iterable: Iterable, desc: str, enabled: bool = True, total: int | None = None) -> Iterable:
    """A tqdm progress bar on rank 0 (``enabled``) when stderr is a terminal; log
    files get the stages' log lines only."""
    return tqdm(iterable, desc=desc, total=total, disable=not (enabled and sys.stderr.isatty()), leave=False,
                dynamic_ncols=True)
