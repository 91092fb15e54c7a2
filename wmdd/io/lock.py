"""One writer per output directory: an advisory POSIX lock (``fcntl.lockf``) on ``OUT/.lock``,
taken before a stage writes its first file and held until the process ends. The kernel
releases it when the process dies, even by SIGKILL, and, unlike ``flock``, processes the
stage forks (DataLoader workers) do not hold it, so a killed run never blocks its resume."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

from wmdd.errors import UserError

LOCK_FILE = ".lock"
#: Locking errors of file systems that do not support it (some NFS and Lustre mounts).
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}

#: Open lock files of this process, by resolved directory.
_HELD: dict[Path, int] = {}


def lock_output_dir(out: str | Path, stage: str) -> None:
    """Take the writer lock of ``out`` (created if needed) for ``stage``; a no-op when this
    process already holds it.

    On a file system without locks it logs a warning and goes on without the lock.

    Raises:
        UserError: another process holds it (names it by pid and the stage it runs).
    """
    out = Path(out)
    key = out.resolve()
    if key in _HELD:
        return
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{out}: in use by {holder}; wait for it to finish (then rerun: finished work is "
                            "kept) or pass another --output-dir") from None
        if exc.errno not in UNSUPPORTED:
            raise
        os.close(fd)
        logging.getLogger("wmdd").warning("%s: this file system has no file locks (%s); running without "
                                          "the one-writer lock", out, exc.strerror)
        return
    os.ftruncate(fd, 0)
    os.write(fd, f"wmdd {stage} (pid {os.getpid()})\n".encode())
    _HELD[key] = fd


def release_output_locks() -> None:
    """Release every lock this process holds (at the end of a stage's command)."""
    while _HELD:
        _, fd = _HELD.popitem()
        os.close(fd)
