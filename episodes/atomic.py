"""Atomic file writes that respect the umask.

Every result, checkpoint and prepared dataset file is written to a temporary file in
the destination folder and renamed into place (``os.replace``), so a reader never sees
half a file and a crash leaves the previous version intact.  ``tempfile.mkstemp``
creates its file with mode 0600; :func:`atomic_write` gives it the mode a plain
``open(path, "w")`` would have (``0o666`` minus the umask) before the rename, so
colleagues sharing a data or run folder can read what was written.
"""
from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "default_file_mode"]


def default_file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open()`` gives a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path, write: Callable[[BinaryIO], None], fsync: bool = True) -> None:
    """Call ``write(f)`` on a binary temp file next to ``path``, then rename it to ``path``
    (folders are created; on any error the temp file is removed and ``path`` untouched)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if e.filename is None:   # a write or fsync error (disk full) names no file: name the one written
            raise OSError(e.errno, e.strerror or str(e), path) from None
        raise
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
