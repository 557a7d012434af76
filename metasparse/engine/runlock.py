"""An exclusive lock on a run directory for the life of a training process.

``metasparse train`` (new or ``--resume``) holds ``RUN_DIR/train.lock`` from before it
looks at the folder until it exits, so two trainings can never write the same
``metrics.jsonl`` / ``last.pt`` / ``best.pt``. The file holds the owner as JSON
(``pid``, ``host``, ``since``, and the process start time on Linux), which the refusal
message of a second training quotes.

Mechanism: an advisory ``flock`` on the lock file (POSIX). The kernel drops it when the
owner exits in any way, ``kill -9`` included, so a lock file left behind by a killed run
is *stale* and the next training takes it over without asking. Where ``flock`` is not
available (no ``fcntl``, or a file system refusing it), the owner recorded in the file
decides: a lock whose owner is on this host and no longer runs (or is another process
with a reused pid, told by the start time) is stale; a lock of another host is
respected (remove the file by hand if that run is gone).

Release: the file is removed on exit, on errors and on Ctrl-C alike (``with RunLock(...)``
or :meth:`RunLock.release`).
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import ConfigError

try:   # POSIX
    import fcntl
except ImportError:   # pragma: no cover - Windows
    fcntl = None

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "lock_owner"]

LOCK_NAME = "train.lock"


class RunLockedError(ConfigError):
    """The run directory is held by another live training."""


def _start_time(pid: int) -> Optional[str]:
    """The start time of process ``pid`` (Linux: field 22 of /proc/PID/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        return stat[stat.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def _alive(owner: Dict[str, Any]) -> bool:
    """Whether the process recorded in ``owner`` (on this host) still runs."""
    try:
        pid = int(owner["pid"])
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # a live process of another user
        return True
    except (KeyError, TypeError, ValueError, OSError):
        return False
    start = owner.get("start")
    return start is None or _start_time(pid) in (None, start)


def lock_owner(run_dir) -> Optional[Dict[str, Any]]:
    """The owner recorded in ``run_dir``'s lock file (None: no file or not readable)."""
    try:
        owner = json.loads((Path(run_dir) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _describe(owner: Optional[Dict[str, Any]]) -> str:
    if not owner:
        return "another process"
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {owner.get('since', '?')}"


class RunLock:
    """``with RunLock(run_dir):`` the exclusive right to write the run in ``run_dir``
    (which must exist). A held lock raises :class:`RunLockedError` (one line naming the
    owner); :attr:`stale_owner` is the owner of a stale lock taken over, if any."""

    def __init__(self, run_dir, flag: str = "--out", name: str = LOCK_NAME, what: str = "training"):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / name
        self.what = what
        self.flag = flag
        self.fd: Optional[int] = None
        self.stale_owner: Optional[Dict[str, Any]] = None
        self._ino: Optional[int] = None

    def _owner(self):
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _refuse(self, owner) -> RunLockedError:
        return RunLockedError(f"{self.flag} {self.run_dir} is in use by another {self.what} ({_describe(owner)}; "
                              f"lock file {self.path}); wait for it to finish or choose another {self.flag}")

    def acquire(self) -> "RunLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()),
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(20):
            try:   # never through a symbolic link: the lock file is written and removed
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
            except IsADirectoryError:
                raise ConfigError(f"{self.flag} {self.run_dir}: {self.path} is a folder; "
                                  f"it is the lock file name of a run") from None
            except OSError as e:
                if e.errno == errno.ELOOP or os.path.islink(self.path):
                    raise ConfigError(f"{self.flag} {self.run_dir}: {self.path} is a symbolic link; a run's lock "
                                      f"file is written and removed, so it is never followed (remove the "
                                      f"link)") from None
                raise
            try:
                if not self._lock(fd):
                    raise self._refuse(self._owner())
                try:   # the path may have been released (removed) between our open and lock
                    if os.lstat(self.path).st_ino != os.fstat(fd).st_ino:
                        raise FileNotFoundError
                except FileNotFoundError:
                    os.close(fd)
                    continue
                previous = os.read(fd, 4096)
                if previous.strip():
                    try:
                        self.stale_owner = json.loads(previous)
                    except ValueError:
                        self.stale_owner = {}
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, (json.dumps(me) + "\n").encode())
                os.fsync(fd)
            except BaseException:
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                raise
            self.fd, self._ino = fd, os.fstat(fd).st_ino
            return self
        raise self._refuse(self._owner())   # pragma: no cover - endless churn

    def _lock(self, fd: int) -> bool:
        """Take the lock on ``fd``; False when another live process holds it."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError as e:   # file systems without flock: decide by the recorded owner
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                    raise
        owner = self._owner()
        if owner is None or owner.get("pid") == os.getpid():
            return True
        if owner.get("host") != socket.gethostname():
            return False
        return not _alive(owner)

    def release(self) -> None:
        """Remove the lock file (if it is still ours) and drop the lock."""
        if self.fd is None:
            return
        try:
            if os.lstat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except OSError:
            pass
        try:
            os.close(self.fd)
        finally:
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
