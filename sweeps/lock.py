"""One driver per sweep: a lock file in the sweep folder.

The holder keeps an exclusive ``flock`` on ``driver.lock`` for as long as it runs (the kernel
drops it when the process dies, however it dies) and writes who it is into the file: host,
pid, since when, and a heartbeat it refreshes. A second ``run``/``resume`` of the same sweep is
refused with the holder's name. A lock whose holder is gone is taken over with a note:

* on the same host, a dead holder has lost its ``flock``;
* on another host (a folder on a network file system, where ``flock`` may not reach across
  machines), a heartbeat older than :data:`STALE_AFTER_S` marks the holder as gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LOCK_FILE = "driver.lock"
STALE_AFTER_S = 90.0  # three missed heartbeats of DriverHeartbeat (every 30 s at most)


@dataclass
class Holder:
    host: str
    pid: int
    since: float  # epoch seconds
    heartbeat: float
    command: str = ""
    released: bool = False

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return (
            f"{self.command or 'a driver'} on host {self.host}, pid {self.pid}, since {when} "
            f"(last heartbeat {now - self.heartbeat:.0f} s ago)"
        )


class SweepBusy(RuntimeError):
    """Another driver holds the sweep."""

    def __init__(self, path: Path, holder: Holder) -> None:
        self.path = path
        self.holder = holder
        super().__init__(
            f"sweep {path} is held by {holder.describe()}; wait for it to end, or stop it with "
            f"`compsweep stop {path}`"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled with its fields: the default would call ``__init__`` with the message alone.
        return type(self), (self.path, self.holder)


class SweepLock:
    """The lock of the sweep in folder ``path``: :meth:`acquire`, :meth:`beat`, :meth:`release`
    (also a context manager)."""

    def __init__(self, path: str | Path, command: str = "") -> None:
        self.path = Path(path)
        self.file = self.path / LOCK_FILE
        self.command = command
        self.taken_over: Holder | None = None  # a stale holder this lock replaced
        self._fd: int | None = None
        self._me: Holder | None = None

    def acquire(self) -> SweepLock:
        """Take the lock, or raise :class:`SweepBusy` naming the holder."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(_read(fd)) or Holder("?", 0, time.time(), time.time())
            os.close(fd)
            raise SweepBusy(self.path, holder) from None
        previous = _parse(_read(fd))
        host = socket.gethostname()
        if previous is not None and not previous.released:
            fresh = time.time() - previous.heartbeat < STALE_AFTER_S
            if previous.host != host and fresh:  # a live holder flock cannot see
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise SweepBusy(self.path, previous)
            self.taken_over = previous
        now = time.time()
        self._fd = fd
        self._me = Holder(host, os.getpid(), now, now, self.command)
        self._write()
        return self

    def beat(self) -> None:
        """Refresh the heartbeat (raises OSError when the folder cannot be written)."""
        if self._me is not None:
            self._me.heartbeat = time.time()
            self._write()

    def release(self) -> None:
        if self._fd is None or self._me is None:
            return
        # The file stays (unlinking it would let a waiter lock a deleted inode while a third
        # process creates a new file): it says "released" and the flock goes.
        self._me.released = True
        with contextlib.suppress(OSError):
            self._write()
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def _write(self) -> None:
        assert self._fd is not None and self._me is not None
        data = json.dumps(asdict(self._me)).encode()
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, data)
        os.fsync(self._fd)

    def __enter__(self) -> SweepLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def _lock_file(path: str | Path):
    """The sweep's lock file opened for reading (``None`` if there is none). Read-only suffices
    for flock, and works on a folder that turned read-only."""
    try:
        fd = os.open(Path(path) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def read_holder(path: str | Path) -> Holder | None:
    """Who holds (or last held) the sweep in folder ``path``: ``None`` when no driver ever
    locked it."""
    with _lock_file(path) as fd:
        return None if fd is None else _parse(_read(fd))


def holder_alive(path: str | Path) -> bool:
    """Whether a driver holds the sweep right now (its flock is held on this host, or its
    heartbeat is fresh on another)."""
    with _lock_file(path) as fd:
        if fd is None:
            return False
        holder = _parse(_read(fd))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        if holder is None or holder.released:
            return False
        elsewhere = holder.host != socket.gethostname()
        return elsewhere and time.time() - holder.heartbeat < STALE_AFTER_S


def _read(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(raw: bytes) -> Holder | None:
    try:
        d = json.loads(raw.decode())
        return Holder(**{k: d[k] for k in Holder.__dataclass_fields__ if k in d})
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return None
