"""The background sender of a tracker (docs/design.md §7): a daemon thread that finds or
creates the run, then sends the buffer every ``flush_interval`` seconds (sooner when asked),
retrying with backoff through outages and keeping the data meanwhile.

A request the store rejects for its content is split to isolate and drop only the offending
items (recorded in :attr:`Sender.errors`); refused credentials stop the sender for good
(:attr:`Sender.fatal`); a run deleted under it is looked up again, or created anew.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from sweeps.run_resolution import RunTarget, resolve_run
from sweeps.tracking_buffer import TrackingBuffer
from sweeps.tracking_errors import RunGone, is_auth_error, is_run_gone, is_transient
from sweeps.tracking_schema import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH, Point
from sweeps.tracking_transport import Transport

log = logging.getLogger(__name__)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


class Sender:
    """Sends ``buffer`` to ``target``'s run through ``transport`` on its own thread."""

    def __init__(
        self,
        buffer: TrackingBuffer,
        transport: Transport,
        target: RunTarget,
        kind: str,
        name: str,
        *,
        flush_interval: float,
        max_backoff: float,
    ) -> None:
        self.buffer = buffer
        self.transport = transport
        self.target = target
        self.kind = kind  # what is logging: "trial", "final training"
        self.label = f"{kind} {name}"  # for log lines
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self.errors: list[str] = []  # data the store rejected for its content (dropped)
        self.last_error: str | None = None  # the last transient failure (None once it works)
        self.fatal: str | None = None  # the store refused us for good (credentials)
        self.run_ready = False
        self.terminated = False
        self.cpu_s: float | None = None  # CPU seconds this thread used, once it ended
        self._closing: str | None = None  # final status once finish() was called
        self._abort = False
        self._wake = threading.Event()
        self._flush_waiters = 0  # flush() calls waiting for the sender
        self._fail_seq = 0  # failed send attempts so far (flush() watches it)
        self._failures = 0  # consecutive failures (backoff)
        self._last_warn = 0.0
        self.thread = threading.Thread(
            target=self._loop, name=f"compsweep-tracker-{name}", daemon=True
        )

    # ---------------------------------------------------------------- caller side

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        self._wake.set()

    @property
    def aborted(self) -> bool:
        return self._abort

    def has_pending(self) -> bool:
        return self.buffer.has_pending() or not self.run_ready

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the run; True once it is found or created."""
        deadline = time.monotonic() + timeout
        with self.buffer.cond:
            self._wake.set()
            while not self.run_ready and self.fatal is None and self.thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.buffer.cond.wait(min(remaining, 0.2))
        return self.run_ready

    def flush(self, timeout: float, wait_while_down: bool) -> bool:
        """Wait until everything buffered is confirmed (True), ``timeout`` passes, or (unless
        ``wait_while_down``) a send attempt made after this call fails (False)."""
        deadline = time.monotonic() + timeout
        with self.buffer.cond:
            start_fail = self._fail_seq
            self._flush_waiters += 1  # the sender makes passes back to back until we return
            self._wake.set()
            try:
                while self.has_pending():
                    if not self.thread.is_alive():
                        return False
                    if not wait_while_down and self._fail_seq > start_fail:
                        return False
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self.buffer.cond.wait(min(remaining, 0.2))
                return True
            finally:
                self._flush_waiters -= 1

    def finish(self, status: str, timeout: float) -> bool:
        """Send everything, set the run's ``status`` and end the thread, for up to
        ``timeout`` s; True once the run is terminated."""
        with self.buffer.cond:
            self._closing = status
        self._wake.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.halt(1.0)
        return self.terminated

    def halt(self, join_timeout: float) -> None:
        """End the thread now, whatever is unsent (it stays in the buffer)."""
        with self.buffer.cond:
            self._abort = True
            self.buffer.cond.notify_all()
        self._wake.set()
        self.thread.join(join_timeout)

    def reject(self, message: str) -> None:
        log.warning("%s: MLflow rejected %s (dropped)", self.label, message)
        self.errors.append(message)

    # ---------------------------------------------------------------- the thread

    def _loop(self) -> None:
        try:
            self._send_loop()
        finally:
            # What sending cost this process (the trainer's thread competes with it).
            self.cpu_s = time.thread_time()
            self.transport.close()

    def _send_loop(self) -> None:
        delay = 0.0  # first pass right away: find or create the run
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            if self._abort:
                return
            try:
                self._send_all()
                if self._closing is not None:
                    self._terminate()
            except Exception as e:
                if is_auth_error(e):
                    # Refused credentials do not come back by waiting: stop, keep the data
                    # (state() and the spool), and let the training thread raise.
                    self.fatal = (
                        f"MLflow at {self.transport.uri} refused this {self.kind} "
                        f"({_first_line(e)}); give the trials MLFLOW_TRACKING_USERNAME / "
                        "MLFLOW_TRACKING_PASSWORD (e.g. --env on submit/run/resume)"
                    )
                    log.error("%s: %s", self.label, self.fatal)
                    self._failed()
                    return
                # Transient (server down) or not, keep the data and retry with backoff: content
                # errors are handled where they occur, so anything else is a server answer we
                # do not understand (e.g. the experiment was deleted) that a human may fix.
                self._failures += 1
                self.last_error = f"{type(e).__name__}: {e}"
                now = time.monotonic()
                if self._failures == 1 or now - self._last_warn > 60:
                    self._last_warn = now
                    log.warning(
                        "%s: MLflow %s, buffering (%d points pending): %s",
                        self.label,
                        "unreachable" if is_transient(e) else "refuses requests",
                        self.buffer.pending_points(),
                        _first_line(e) if str(e) else repr(e),
                    )
                delay = min(self.max_backoff, 0.25 * 2 ** min(self._failures, 10))
                self._failed()
                continue
            if self._failures:
                log.info("%s: MLflow reachable again", self.label)
            self._failures = 0
            self.last_error = None
            with self.buffer.cond:
                self.buffer.cond.notify_all()
            if self.terminated:
                return
            delay = self.flush_interval
            if self._closing is not None or (self._flush_waiters and self.has_pending()):
                delay = 0.0

    def _failed(self) -> None:
        with self.buffer.cond:
            self._fail_seq += 1
            self.buffer.cond.notify_all()

    def _send_all(self) -> None:
        if not self.run_ready:
            run = resolve_run(self.transport, self.target, self.buffer.run_id, self.label)
            self.buffer.bind_run(run.run_id, run.continued)
            self.run_ready = True
        try:
            self._send_ops()
            self._send_points()
        except RunGone:
            # Deleted under us (e.g. from the UI): look it up again, or create a new one.
            self.run_ready = False
            raise

    def _send_ops(self) -> None:
        run_id, buf = self.buffer.run_id, self.buffer
        assert run_id is not None
        while (op := buf.next_op()) is not None:
            if op[0] == "params":
                items = buf.unsent_params(op[1])
                for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
                    chunk = items[i : i + MAX_PARAMS_TAGS_PER_BATCH]
                    self._send_bisect(
                        chunk, lambda c: self.transport.log_batch(run_id, params=c), "param"
                    )
                    buf.mark_params_sent(chunk)
            elif op[0] == "tags":
                for i in range(0, len(op[1]), MAX_PARAMS_TAGS_PER_BATCH):
                    self._send_bisect(
                        op[1][i : i + MAX_PARAMS_TAGS_PER_BATCH],
                        lambda c: self.transport.log_batch(run_id, tags=c),
                        "tag",
                    )
            elif op[0] == "artifact":
                _, path, artifact_path = op
                if os.path.exists(path):
                    # (Uploading again overwrites the same file: a retry is harmless.)
                    self._send_bisect(
                        [(path, artifact_path)],
                        lambda c: self.transport.log_artifact(run_id, c[0][0], c[0][1]),
                        "artifact",
                    )
                    buf.spool.remove(path)
                else:
                    self.reject(f"artifact {path}: spooled file is missing")
            buf.op_done()

    def _send_points(self) -> None:
        # Only what was buffered when this pass began: points that keep trickling in while it
        # sends wait for the next pass, so a busy trainer is served in a few large requests per
        # flush_interval rather than a stream of tiny ones (each costs a request's overhead in
        # this process, competing with training for the GIL).
        run_id, buf = self.buffer.run_id, self.buffer
        assert run_id is not None
        budget = buf.pending_points()
        while budget > 0:
            pos, chunk = buf.take_points(min(MAX_METRICS_PER_BATCH, budget))
            if not chunk:
                return
            budget -= len(chunk)
            batch = buf.new_points(chunk, lambda key: self.transport.metric_steps(run_id, key))
            if batch:
                self._send_bisect(
                    batch,
                    lambda c: self.transport.log_batch(run_id, metrics=c),
                    "metric",
                    on_sent=buf.mark_stored,
                )
            buf.confirm(pos, len(chunk))

    def _send_bisect(
        self,
        items: list[Any],
        send: Callable[[list[Any]], None],
        what: str,
        on_sent: Callable[[list[Point]], None] | None = None,
    ) -> None:
        """Send ``items``; if the store rejects the request for its content, split it to
        isolate and drop only the offending items. Transient errors propagate (retry later)."""
        try:
            send(items)
        except Exception as e:
            if is_transient(e) or is_auth_error(e):
                raise
            if is_run_gone(e):
                raise RunGone(str(e)) from e
            if len(items) == 1:
                self.reject(f"{what} {str(items[0])[:200]}: {str(e).splitlines()[0][:300]}")
                return
            mid = len(items) // 2
            self._send_bisect(items[:mid], send, what, on_sent)
            self._send_bisect(items[mid:], send, what, on_sent)
            return
        if on_sent is not None:
            on_sent(items)

    def _terminate(self) -> None:
        if self.terminated or self.buffer.has_pending():
            return
        assert self.buffer.run_id is not None
        self.transport.set_terminated(self.buffer.run_id, self._closing or "FINISHED")
        self.terminated = True
