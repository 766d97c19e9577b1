"""The MLflow side of a sweep (docs/design.md §7): experiment, parent run, one child run per
trial, and the run of a final training.

The driver uses the plain helpers (:func:`ensure_experiment`, :func:`start_sweep_run`, …).
Trial processes and `compsweep train` log through a :class:`RunTracker`
(:class:`TrialTracker` for a trial), which never blocks training on the network: points are
appended to a :class:`~sweeps.tracking_buffer.TrackingBuffer` and a
:class:`~sweeps.tracking_sender.Sender` thread sends them in batches through the
:mod:`transport <sweeps.tracking_transport>` for the URI, retrying through outages, and never
sending a (key, step) twice to the same run (:mod:`sweeps.run_resolution` finds the run).

No Ray import here: the same tracker serves ``compsweep train`` and unit tests.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sweeps.run_resolution import (
    RunTarget,
    ensure_experiment,
    find_runs,
    find_trial_runs,
    finish_run,
    start_sweep_run,
)
from sweeps.tracking_buffer import Spool, TrackingBuffer
from sweeps.tracking_errors import TrackingRefused, is_auth_error
from sweeps.tracking_schema import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    FINAL_ID_TAG,
    MAX_PARAM_VAL_LENGTH,
    MAX_TAG_VAL_LENGTH,
    METHOD_TAG,
    PARENT_TAG,
    ROLE_TAG,
    SOURCE_RUN_ID_TAG,
    SOURCE_TRIAL_ID_TAG,
    STATUS_REASON_TAG,
    STATUS_TAG,
    SWEEP_ID_TAG,
    TRIAL_ID_TAG,
    flatten_params,
    safe_name,
    search_literal,
    tag_items,
)
from sweeps.tracking_sender import Sender
from sweeps.tracking_transport import Transport, open_transport
from sweeps.tracking_uri import (
    HTTP_ENV_DEFAULTS,
    check_tracking_uri,
    default_tracking_uri,
    embedded_tracking_uri,
    mlflow_client,
)

__all__ = [
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "FINAL_ID_TAG",
    "MAX_PARAM_VAL_LENGTH",
    "MAX_TAG_VAL_LENGTH",
    "METHOD_TAG",
    "PARENT_TAG",
    "ROLE_TAG",
    "SOURCE_RUN_ID_TAG",
    "SOURCE_TRIAL_ID_TAG",
    "STATUS_REASON_TAG",
    "STATUS_TAG",
    "SWEEP_ID_TAG",
    "TRIAL_ID_TAG",
    "FinalTracker",
    "RunTracker",
    "TrackingRefused",
    "TrialTracker",
    "check_tracking_uri",
    "default_spool_dir",
    "default_tracking_uri",
    "embedded_tracking_uri",
    "ensure_experiment",
    "find_runs",
    "find_trial_runs",
    "finish_run",
    "flatten_params",
    "is_auth_error",
    "mlflow_client",
    "start_sweep_run",
]

log = logging.getLogger(__name__)


def default_spool_dir(*parts: str) -> Path:
    """Where a tracker spools artifacts and leaves unsent data: per run, under the temp dir."""
    return Path(tempfile.gettempdir(), "compsweep-spool", *(safe_name(p) for p in parts))


class RunTracker:
    """Logs into one run, in the background, through server outages.

    Every call made by the training thread only appends to the buffer; the sender thread sends
    it every ``flush_interval`` seconds (or sooner once it holds ``flush_points`` points).
    While the server is down the data stays buffered (and in :meth:`state`, for a checkpoint)
    and sending is retried with backoff.

    A point is identified by (key, step): the first value logged for a (key, step) is the one
    kept; later ones — re-logged after a restore, or re-sent after an ambiguous failure — are
    dropped (via the run's stored metric history) or are exact duplicates, which the SQL store
    ignores.
    """

    def __init__(
        self,
        tracking_uri: str,
        target: RunTarget,
        *,
        kind: str,
        name: str,
        spool_dir: str | Path,
        state: Mapping[str, Any] | None = None,
        flush_interval: float = 2.0,
        flush_points: int = 20_000,
        max_buffer: int = 200_000,
        max_backoff: float = 5.0,
    ) -> None:
        for k, v in HTTP_ENV_DEFAULTS.items():
            os.environ.setdefault(k, v)
        for value in target.identity.values():
            search_literal(value)  # validate early: the identity ends up in search filters
        self.tracking_uri = tracking_uri
        self.experiment_id = target.experiment_id
        self.flush_points = flush_points
        self.max_buffer = max_buffer
        self.spool_dir = Path(spool_dir)
        self.transport: Transport = open_transport(tracking_uri)
        self.buffer = TrackingBuffer(Spool(self.spool_dir))
        self.buffer.restore(state)
        # A previous close() of this run timed out and left its unsent data in the spool.
        self.buffer.restore(self.buffer.spool.load_pending())
        self._sender = Sender(
            self.buffer,
            self.transport,
            target,
            kind,
            name,
            flush_interval=flush_interval,
            max_backoff=max_backoff,
        )
        self._closed = False
        self._sender.start()

    # ---------------------------------------------------------------- what the caller sees

    @property
    def run_id(self) -> str | None:
        """The run's id (None until the run could be found or created)."""
        return self.buffer.run_id

    @property
    def errors(self) -> list[str]:
        """Data the server rejected for its content (dropped), or that could not be spooled."""
        return self._sender.errors

    @property
    def last_error(self) -> str | None:
        """The last transient send failure (None once sending works again)."""
        return self._sender.last_error

    @property
    def refused(self) -> str | None:
        """Why the server refused this tracker for good (credentials, permission), else None."""
        return self._sender.fatal

    @property
    def sender_cpu_s(self) -> float | None:
        """CPU seconds the sender thread used, once it ended."""
        return self._sender.cpu_s

    @property
    def sender_thread(self) -> Any:
        """The background sender thread (alive until close() or stop() ended it)."""
        return self._sender.thread

    def _raise_if_refused(self) -> None:
        if self._sender.fatal is not None:
            raise TrackingRefused(self._sender.fatal)

    # ---------------------------------------------------------------- training-thread API

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Wait up to ``timeout`` s for the run to be found or created: True once it is, False
        while the server is unreachable (training goes on and points buffer). Raises
        :class:`TrackingRefused` as soon as the server refuses the credentials."""
        ready = self._sender.wait_ready(timeout)
        self._raise_if_refused()
        return ready

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer one point per key at ``step``, timestamped now. Blocks only when the buffer
        is full (back-pressure during a long outage); raises :class:`TrackingRefused` once the
        server has refused the credentials, never for an outage."""
        self._raise_if_refused()
        ts = int(time.time() * 1000)
        step = int(step)
        points = []
        for k, v in metrics.items():
            try:
                points.append((str(k), float(v), ts, step))
            except (TypeError, ValueError):
                log.warning("metric %r=%r is not a number; not logged", k, v)
        if not points or self._closed:
            if self._closed:
                log.warning("log_metrics after close(); %d points not logged", len(points))
            return
        buf, sender = self.buffer, self._sender
        with buf.cond:
            while (
                buf.pending_points() + len(points) > self.max_buffer
                and buf.pending_points() > 0
                and not sender.aborted
                and sender.thread.is_alive()
            ):
                sender.wake()
                buf.cond.wait(0.5)
            if sender.aborted:  # close() gave up while we waited for room
                log.warning("tracker closed; %d points not logged", len(points))
                return
            full = buf.add_points(points) >= self.flush_points
        if full:
            sender.wake()

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Buffer params (nested mappings flattened to dotted keys, values stringified)."""
        self._raise_if_refused()
        items = list(flatten_params(params).items())
        if items:
            self._add_op(("params", items))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Buffer run tags (values stringified)."""
        self._raise_if_refused()
        items = tag_items(tags)
        if items:
            self._add_op(("tags", items))

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy the file into the spool directory now (the caller may delete it) and upload it
        in the background."""
        self._raise_if_refused()
        if self._closed:
            log.warning("tracker closed; artifact %s not logged", local_path)
            return
        src = Path(local_path)
        try:
            dest = self.buffer.spool.copy_in(src)
        except OSError as e:
            log.warning("cannot spool artifact %s: %s; not logged", src, e)
            self.errors.append(f"artifact {src}: {e}")
            return
        self._add_op(("artifact", str(dest), artifact_path))

    def _add_op(self, op: tuple[Any, ...]) -> None:
        if self._closed:
            log.warning("tracker closed; %s not logged", op[0])
            return
        self.buffer.add_op(op)
        self._sender.wake()

    def state(self) -> dict[str, Any]:
        """Everything not yet confirmed sent, plus the run id: picklable, for the checkpoint."""
        return self.buffer.state()

    def flush(self, timeout: float = 10.0, wait_while_down: bool = False) -> bool:
        """Send everything buffered; True once all of it is confirmed.

        Returns False after ``timeout`` seconds, or as soon as a send attempt made after this
        call fails (unless ``wait_while_down``), so a checkpoint is not held up by a dead
        server: the unsent data is in :meth:`state`.
        """
        return self._sender.flush(timeout, wait_while_down)

    def close(self, status: str = "FINISHED", timeout: float = 60.0) -> bool:
        """Send everything, then set the run's status; stop the background thread.

        Keeps retrying through an outage for up to ``timeout`` seconds. On timeout returns False
        and leaves the unsent data in the spool directory (a later tracker of the same run
        picks it up) as well as in :meth:`state`.
        """
        if self._closed:
            return self._sender.terminated
        self._closed = True
        if self._sender.finish(status, timeout):
            self.buffer.spool.clear()
            return True
        self.buffer.spool.save_pending(self.state())
        log.warning(
            "%s: could not finish MLflow run within %gs (%s); unsent data kept in %s",
            self._sender.label,
            timeout,
            self._sender.last_error,
            self.spool_dir,
        )
        return False

    def stop(self, timeout: float = 10.0) -> bool:
        """Send what is buffered (for up to ``timeout`` s) and stop the background thread,
        leaving the run's status alone: for a trial that did not end here (it failed, or a
        scheduler stopped it) and whose run is settled, or continued, by someone else.

        Returns True when everything was sent; otherwise the rest is saved in the spool
        directory (a later tracker of the same run picks it up) and in :meth:`state`.
        """
        if self._closed:
            return self._sender.terminated
        sent = self.flush(timeout)
        self._closed = True
        self._sender.halt(2.0)
        if not sent:
            self.buffer.spool.save_pending(self.state())
        return sent

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close("FAILED" if exc_type else "FINISHED")


class TrialTracker(RunTracker):
    """Logs one trial into its own child run of the sweep's parent run, found by (sweep id,
    trial id) so that a restored or retried trial continues it."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        sweep_id: str,
        trial_id: str,
        parent_run_id: str | None = None,
        *,
        run_name: str | None = None,
        state: Mapping[str, Any] | None = None,
        flush_interval: float = 2.0,
        flush_points: int = 20_000,
        max_buffer: int = 200_000,
        max_backoff: float = 5.0,
        spool_dir: str | Path | None = None,
    ) -> None:
        self.sweep_id = sweep_id
        self.trial_id = trial_id
        self.parent_run_id = parent_run_id
        self.run_name = run_name or trial_id
        target = RunTarget(
            experiment_id=str(experiment_id),
            identity={ROLE_TAG: "trial", SWEEP_ID_TAG: sweep_id, TRIAL_ID_TAG: trial_id},
            run_name=self.run_name,
            extra_tags={PARENT_TAG: parent_run_id} if parent_run_id else {},
            created_ms=int(time.time() * 1000),
        )
        super().__init__(
            tracking_uri,
            target,
            kind="trial",
            name=trial_id,
            spool_dir=spool_dir or default_spool_dir(sweep_id, trial_id),
            state=state,
            flush_interval=flush_interval,
            flush_points=flush_points,
            max_buffer=max_buffer,
            max_backoff=max_backoff,
        )

    def state(self) -> dict[str, Any]:
        """Everything not yet confirmed sent, plus the run id: picklable, for the checkpoint."""
        return {**super().state(), "sweep_id": self.sweep_id, "trial_id": self.trial_id}


class FinalTracker(RunTracker):
    """Logs one final training (`compsweep train`) into a new run of its own, tagged with
    ``tags`` (the method and, from a `best` file, where the config came from)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        run_name: str,
        tags: Mapping[str, str],
        *,
        flush_interval: float = 2.0,
    ) -> None:
        # A fresh id: a create whose answer was lost is found again, never another training's.
        self.final_id = uuid.uuid4().hex
        target = RunTarget(
            experiment_id=str(experiment_id),
            identity={ROLE_TAG: "final", FINAL_ID_TAG: self.final_id},
            run_name=run_name,
            extra_tags=dict(tag_items(tags)),
            created_ms=int(time.time() * 1000),
        )
        super().__init__(
            tracking_uri,
            target,
            kind="final training",
            name=self.final_id[:8],
            spool_dir=default_spool_dir("final", self.final_id),
            flush_interval=flush_interval,
        )
