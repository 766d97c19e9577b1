"""What a tracker holds between the training thread and the store (docs/design.md §7): the
points and operations not yet confirmed sent, what is known to be in the run already (so a
(key, step) is never sent twice), and spooled artifact copies.

:meth:`TrackingBuffer.state` is picklable and travels in the trial's checkpoint
(``tracker.pkl``); :meth:`TrackingBuffer.restore` takes it back after a restore, on this node or
another. Pure bookkeeping: no network, no threads of its own (it is thread-safe).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sweeps.tracking_schema import Point

log = logging.getLogger(__name__)

STATE_VERSION = 1
PENDING_FILE = "pending.pkl"
INLINE_ARTIFACT_MAX = 1 << 20  # spooled artifacts up to 1 MiB travel inside state()

# ("params" | "tags", [(key, value)]) or ("artifact", spooled path, artifact dir)
Op = tuple[Any, ...]


class Spool:
    """A directory of artifact copies (the caller may delete its file at once) and, when a
    tracker could not deliver everything before it stopped, its unsent state
    (``pending.pkl``) for the next tracker of the same run."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory)
        self._seq = 0
        self._lock = threading.Lock()
        self._pending_file: Path | None = None

    def copy_in(self, src: Path) -> Path:
        """A copy of ``src`` in a directory of its own. Raises OSError."""
        with self._lock:
            self._seq += 1
            seq = self._seq
        dest = self.dir / f"{seq:06d}-{uuid.uuid4().hex[:8]}" / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        return dest

    def rebuild(self, name: str, data: bytes) -> str:
        """An artifact restored from a state, on a node (or after a /tmp cleanup) where its
        spooled copy is missing."""
        path = self.dir / f"restored-{uuid.uuid4().hex[:8]}" / Path(name).name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)

    @staticmethod
    def remove(path: str) -> None:
        """Forget a delivered copy. Each has its own directory; rmdir leaves anything else."""
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))

    def load_pending(self) -> Mapping[str, Any] | None:
        """What an earlier tracker of this run left unsent (its close() timed out)."""
        pending = self.dir / PENDING_FILE
        if not pending.is_file():
            return None
        try:
            with open(pending, "rb") as f:
                state = pickle.load(f)
        except Exception as e:  # a torn file must not stop the trial
            log.warning("ignoring unreadable %s: %s", pending, e)
            return None
        self._pending_file = pending
        return state  # type: ignore[no-any-return]

    def save_pending(self, state: Mapping[str, Any]) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / (PENDING_FILE + ".tmp")
            with open(tmp, "wb") as f:
                pickle.dump(dict(state), f)
            os.replace(tmp, self.dir / PENDING_FILE)
        except OSError as e:
            log.warning("cannot save unsent tracking data to %s: %s", self.dir, e)

    def clear(self) -> None:
        """Everything was delivered: drop the pending file and the directory if empty (it may
        be shared)."""
        if self._pending_file is not None:
            with contextlib.suppress(OSError):
                self._pending_file.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()


class TrackingBuffer:
    """Pending points and operations, the one being sent, and what the run already holds.

    Points move from the buffer to an in-flight list taken by the sender; a point stays
    pending (and in :meth:`state`) until :meth:`confirm` says it is stored or a known
    duplicate. ``cond`` (over a re-entrant lock) guards everything; waiters are notified on
    each confirmation.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.cond = threading.Condition(threading.RLock())
        self._buf: list[Point] = []
        self._inflight: list[Point] = []  # taken from _buf by the sender, not yet confirmed
        self._inflight_pos = 0  # _inflight[:pos] are confirmed (sent or known duplicates)
        self._ops: deque[Op] = deque()
        self.run_id: str | None = None
        self.continued = False  # the run existed before: check its history before sending
        self._stored: dict[str, set[int]] = {}  # steps known to be in the run, per key
        self._checked_keys: set[str] = set()  # keys whose stored history has been read
        self._sent_params: dict[str, str] = {}

    # ------------------------------------------------------------------ pending data

    def pending_points(self) -> int:
        with self.cond:
            return len(self._buf) + len(self._inflight) - self._inflight_pos

    def has_pending(self) -> bool:
        with self.cond:
            return bool(self.pending_points() or self._ops)

    def add_points(self, points: Iterable[Point]) -> int:
        """Buffer ``points``; the number buffered since the sender last took them."""
        with self.cond:
            self._buf.extend(points)
            return len(self._buf)

    def add_op(self, op: Op) -> None:
        with self.cond:
            self._ops.append(op)

    def next_op(self) -> Op | None:
        with self.cond:
            return self._ops[0] if self._ops else None

    def op_done(self) -> None:
        with self.cond:
            self._ops.popleft()
            self.cond.notify_all()

    def take_points(self, limit: int) -> tuple[int, list[Point]]:
        """(position, up to ``limit`` in-flight points), taking the buffer in flight when the
        previous in-flight points are all confirmed; an empty list when nothing is pending."""
        with self.cond:
            if self._inflight_pos >= len(self._inflight):
                if not self._buf:
                    return 0, []
                self._inflight, self._buf, self._inflight_pos = self._buf, [], 0
            pos = self._inflight_pos
            return pos, self._inflight[pos : pos + limit]

    def confirm(self, pos: int, count: int) -> None:
        """The ``count`` in-flight points from ``pos`` are stored (or known duplicates)."""
        with self.cond:
            self._inflight_pos = pos + count
            if self._inflight_pos >= len(self._inflight):
                self._inflight, self._inflight_pos = [], 0
            self.cond.notify_all()

    # ------------------------------------------------------------------ what the run holds

    def bind_run(self, run_id: str, continued: bool) -> None:
        """Log into ``run_id`` from now on. What is known to be stored belongs to one run: a
        different one (the old was deleted) starts over."""
        with self.cond:
            if run_id != self.run_id:
                self._stored, self._checked_keys, self._sent_params = {}, set(), {}
            self.run_id = run_id
            self.continued = continued

    def new_points(
        self, chunk: list[Point], stored_steps: Callable[[str], set[int]]
    ) -> list[Point]:
        """The points of ``chunk`` whose (key, step) is not in the run yet (the first one
        wins). For a continued run, each key's stored steps are read once via
        ``stored_steps(key)``."""
        if self.continued:
            for key in {p[0] for p in chunk} - self._checked_keys:
                self._stored.setdefault(key, set()).update(stored_steps(key))
                self._checked_keys.add(key)
        out, seen = [], set()
        for p in chunk:
            ident = (p[0], p[3])
            if ident in seen or p[3] in self._stored.get(p[0], ()):
                continue
            seen.add(ident)
            out.append(p)
        return out

    def mark_stored(self, points: Iterable[Point]) -> None:
        for key, _, _, step in points:
            self._stored.setdefault(key, set()).add(step)

    def unsent_params(self, items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Params not already sent with the same value (a repeat is not an error; a changed
        value is sent so that the store refuses it, alone)."""
        return [(k, v) for k, v in items if self._sent_params.get(k) != v]

    def mark_params_sent(self, items: Iterable[tuple[str, str]]) -> None:
        self._sent_params.update(items)

    # ------------------------------------------------------------------ checkpoint

    def state(self) -> dict[str, Any]:
        """Everything not yet confirmed sent, plus the run id: picklable."""
        with self.cond:
            points = self._inflight[self._inflight_pos :] + self._buf
            ops = list(self._ops)
            run_id = self.run_id
        out_ops: list[Op] = []
        for op in ops:
            if op[0] == "artifact":
                data = None
                with contextlib.suppress(OSError):
                    if os.path.getsize(op[1]) <= INLINE_ARTIFACT_MAX:
                        data = Path(op[1]).read_bytes()
                out_ops.append(("artifact", op[1], op[2], data))
            else:
                out_ops.append((op[0], list(op[1])))
        return {"version": STATE_VERSION, "run_id": run_id, "points": points, "ops": out_ops}

    def restore(self, state: Mapping[str, Any] | None) -> None:
        """Take back what :meth:`state` returned (possibly in another process or node)."""
        if not state:
            return
        if state.get("version") != STATE_VERSION:
            log.warning("ignoring tracker state of version %r", state.get("version"))
            return
        with self.cond:
            if state.get("run_id") and self.run_id is None:
                self.run_id = state["run_id"]
                self.continued = True
            self._buf.extend(tuple(p) for p in state.get("points", ()))
            for op in state.get("ops", ()):
                if op[0] == "artifact":
                    _, path, artifact_path, data = op
                    if not os.path.exists(path) and data is not None:
                        path = self.spool.rebuild(path, data)
                    self._ops.append(("artifact", path, artifact_path))
                else:
                    self._ops.append((op[0], list(op[1])))
