"""Atomic writes, hashing and safe checkpoint loading.

Every file a stage publishes is written to a temporary file in the same
directory and moved into place with :func:`os.replace`, so a killed process
never leaves a half-written file under the final name.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from wmdd.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if exc.filename is None:  # from flush/fsync/write: name the file being written
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    _atomic_write(Path(path), lambda f: f.write(data))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


#: Free bytes below which a failed ``torch.save`` is reported as a full disk.
NEARLY_FULL_BYTES = 256 << 20


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically.

    Raises:
        OSError: ``ENOSPC`` naming ``path`` when the write failed on a disk with less than
            :data:`NEARLY_FULL_BYTES` free (torch reports a full disk as a ``RuntimeError``
            from its zip writer, "unexpected pos ..."); other errors as ``torch.save`` raises them.
    """
    path = Path(path)

    def write(f):
        try:
            torch.save(obj, f)
        except RuntimeError as exc:
            free = shutil.disk_usage(path.parent).free
            if free >= NEARLY_FULL_BYTES:
                raise
            raise OSError(errno.ENOSPC, f"torch.save stopped writing with {free} bytes free", str(path)) from exc

    _atomic_write(path, write)


def torch_load(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU with clear errors.

    Raises:
        UserError: the file is missing or is not a readable PyTorch file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} file not found; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise UserError(f"{path}: cannot load {what} ({load_failure(exc)}); "
                        "the file is corrupt or not a PyTorch file, recreate it") from None


def load_failure(exc: BaseException) -> str:
    """One line saying why ``torch.load`` failed: its exception type and the reason, without
    the multi-line advice that ``weights_only`` loading adds (which would suggest loading an
    untrusted file unsafely)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    reason = " ".join(text.split())
    return f"{type(exc).__name__}: {reason[:200]}" if reason else type(exc).__name__


def check_output_dir(path: str | Path, option: str = "--output-dir") -> Path:
    """``path`` as a :class:`Path` after checking that it is, or can become, a directory.

    Raises:
        UserError: ``path`` or one of its parents is an existing file (names it and
            the option to change).
    """
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise UserError(f"{option} {path}: {p} is an existing file, not a directory; "
                            "pass a directory path (new or existing)")
    return path


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            h.update(block)
    return h.hexdigest()


def sha256_files(root: str | Path, relpaths: list[str]) -> str:
    """Hex sha256 over the relative paths and contents of ``relpaths`` under ``root``.

    Identifies a set of files (e.g. a distilled image directory): renaming,
    adding, removing or editing any file changes it.
    """
    h = hashlib.sha256()
    for rel in relpaths:
        h.update(rel.encode() + b"\0")
        h.update(bytes.fromhex(sha256_file(Path(root) / rel)))
    return h.hexdigest()


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse the JSON file at ``path``.

    Raises:
        UserError: missing or unparsable file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: {what} is not valid JSON ({exc}); delete it and re-run the stage") from None
