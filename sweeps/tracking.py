"""The MLflow side of a sweep (docs/design.md §7): experiment, parent run, and one child run
per trial.

The driver uses the plain helpers (:func:`ensure_experiment`, :func:`start_sweep_run`, …).
Trial processes use :class:`TrialTracker`, which never blocks training on the network: points
are appended to an in-memory buffer and a background thread sends them in batches, retrying
through server outages, and never sending a (key, step) twice to the same run.

No Ray import here: the same tracker serves ``compsweep train`` and unit tests.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from sweeps.records import flatten

log = logging.getLogger(__name__)

ROLE_TAG = "compsweep.role"
SWEEP_ID_TAG = "compsweep.sweep_id"
TRIAL_ID_TAG = "compsweep.trial_id"
PARENT_TAG = "mlflow.parentRunId"
# How a trial (or sweep) ended, beyond MLflow's FINISHED / FAILED / KILLED: finished, failed,
# diverged, stopped (early, by the scheduler) or killed (by the user); and why, in words.
STATUS_TAG = "compsweep.status"
STATUS_REASON_TAG = "compsweep.status_reason"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # the MLflow 3 UI then opens on runs and charts

# MLflow limits (mlflow.utils.validation in 3.x; hard-coded so the hot path imports nothing).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_PARAM_VAL_LENGTH = 6000  # was 500 before MLflow 2.x; the server enforces its own
MAX_TAG_VAL_LENGTH = 8000

# HTTP settings for trial processes: fail fast while the server is down (our own loop
# retries with backoff and keeps the data) instead of MLflow's default ~4 minutes of retries.
HTTP_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}

STATE_VERSION = 1
PENDING_FILE = "pending.pkl"
INLINE_ARTIFACT_MAX = 1 << 20  # spooled artifacts up to 1 MiB travel inside state()

# A point: (key, value, timestamp in ms, step).
Point = tuple[str, float, int, int]


# --------------------------------------------------------------------------------------------
# URIs


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set (MLflow's own convention), else the embedded SQLite
    store in the working directory, as an absolute URI so Ray workers running in other
    directories write to the same file."""
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_tracking_uri()


def embedded_tracking_uri() -> str:
    """The embedded SQLite store ``./mlflow.db``, as an absolute URI."""
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable_file(path: Path) -> str | None:
    """None if ``path`` can be written (created if missing), else the reason."""
    if path.exists():
        if path.is_dir():
            return f"{path} is a directory"
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create files in {parent}"
    return None


def _check_writable_dir(path: Path) -> str | None:
    if path.exists():
        if not path.is_dir():
            return f"{path} is not a directory"
        return None if os.access(path, os.W_OK | os.X_OK) else f"{path} is not writable"
    parent = _nearest_existing(path)
    if not parent.is_dir():
        return f"{parent} is not a directory"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"cannot create {path}"


def check_tracking_uri(uri: str, timeout: float = 10) -> str | None:
    """A problem message naming ``tracking.uri`` if the tracking store cannot be used, else None.

    http(s): the server must answer ``/health`` (or the REST API) within ``timeout`` seconds;
    sqlite / file: the database file or directory must be writable. Other schemes (PostgreSQL,
    plugins…) are not checked here.
    """
    if not uri or not uri.strip():
        return "tracking.uri: empty; leave it out for the embedded SQLite store"
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        import requests

        base = uri.rstrip("/")
        errors = []
        for path in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
            try:
                resp = requests.get(base + path, timeout=timeout)
            except requests.RequestException as e:
                reason = type(e).__name__
                if isinstance(e, requests.ConnectionError):
                    reason = "connection refused or host unreachable"
                elif isinstance(e, requests.Timeout):
                    reason = f"no answer within {timeout:g}s"
                return f"tracking.uri: cannot reach the MLflow tracking server at {uri} ({reason}); start it or fix the URI"
            if resp.status_code == 200:
                return None
            errors.append(f"GET {path} -> HTTP {resp.status_code}")
        return f"tracking.uri: {uri} does not answer like an MLflow tracking server ({'; '.join(errors)})"
    if scheme == "sqlite":
        path = _sqlite_path(uri)
        if path is None:
            return None  # in-memory database
        problem = _check_writable_file(path)
        return f"tracking.uri: SQLite store {uri} is not usable: {problem}" if problem else None
    if scheme in ("", "file"):
        path = Path(parsed.path if scheme == "file" else uri).expanduser()
        problem = _check_writable_dir(path)
        return f"tracking.uri: file store {uri} is not usable: {problem}" if problem else None
    return None


# --------------------------------------------------------------------------------------------
# Driver helpers (blocking; called before and after the trials)


_initialized_stores: set[str] = set()
_init_lock = threading.Lock()


def mlflow_client(uri: str):
    """An ``MlflowClient`` for ``uri``. The first use of an SQLite store in this process runs
    under a file lock beside the database: MLflow creates its tables when a client is made,
    and two sweeps starting at once on a new ``mlflow.db`` would otherwise race ("table ...
    already exists", "duplicate column name")."""
    from mlflow import MlflowClient

    db = _sqlite_path(uri)
    if db is None or uri in _initialized_stores:
        return MlflowClient(tracking_uri=uri)
    import fcntl

    with _init_lock:
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{db}-init.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                client = MlflowClient(tracking_uri=uri)  # creates or upgrades the tables
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        _initialized_stores.add(uri)
    return client


def _q(value: str) -> str:
    """A string literal for an MLflow search filter."""
    if "'" in value:
        raise ValueError(f"ids used in MLflow searches may not contain quotes: {value!r}")
    return f"'{value}'"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` URI (None for other URIs and in-memory ones)."""
    if not uri.lower().startswith("sqlite:"):
        return None
    rest = uri[len("sqlite://") :].split("?", 1)[0]
    if rest in ("", "/", "/:memory:"):
        return None
    # sqlite:///rel.db is relative to the cwd; sqlite:////abs.db is absolute.
    return Path(rest[1:] if rest.startswith("/") else rest).expanduser()


def _local_artifact_location(uri: str, name: str) -> str | None:
    """For the embedded SQLite store: artifacts beside the database. MLflow's default is
    ``./mlruns`` of whichever process creates the experiment, i.e. wherever the driver ran."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    return (db.resolve().parent / "mlartifacts" / _safe_name(name)).as_uri()


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name`` (created, or restored if deleted), tagged as a custom model
    development experiment."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(
                name,
                artifact_location=_local_artifact_location(uri, name),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except MlflowException as e:
            # Another driver created it between our lookup and create.
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise e from None
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def _search_all(client, experiment_id: str, filter_string: str, order_by: list[str] | None):
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            max_results=1000,
            order_by=order_by,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _find_runs(client, experiment_id: str, tags: Mapping[str, str]) -> list:
    """Active runs carrying all ``tags``, oldest first."""
    filt = " and ".join(f"tags.`{k}` = {_q(v)}" for k, v in tags.items())
    return _search_all(client, experiment_id, filt, ["attributes.start_time ASC"])


def start_sweep_run(
    uri: str,
    experiment_id: str,
    sweep_id: str,
    spec: dict[str, Any] | None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Get or create the parent run of sweep ``sweep_id``, set ``tags`` on it and log
    ``spec.yaml`` into it (unless ``spec`` is None).

    A resumed sweep finds its existing parent run (set back to RUNNING) and continues it.
    """
    from mlflow.entities import RunTag

    client = mlflow_client(uri)
    ident = {ROLE_TAG: "sweep", SWEEP_ID_TAG: sweep_id}
    runs = _find_runs(client, experiment_id, ident)
    if runs:
        run = runs[0]
        run_id = run.info.run_id
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(experiment_id, tags=ident, run_name=sweep_id).info.run_id
    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    if spec is not None:
        client.log_text(run_id, yaml.safe_dump(spec, sort_keys=False), "spec.yaml")
    return run_id


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Set a run's final status (FINISHED, FAILED or KILLED)."""
    mlflow_client(uri).set_terminated(run_id, status=status)


def find_trial_runs(uri: str, experiment_id: str, sweep_id: str) -> list:
    """Every trial (child) run of a sweep, oldest first."""
    client = mlflow_client(uri)
    return _find_runs(client, experiment_id, {ROLE_TAG: "trial", SWEEP_ID_TAG: sweep_id})


# --------------------------------------------------------------------------------------------
# The per-trial tracker


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """``{"optim": {"lr": 0.1}}`` → ``{"optim.lr": "0.1"}``: :func:`sweeps.records.flatten`
    with values stringified and cut to MLflow's length limit."""
    return {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in flatten(params).items()}


def _is_transient(exc: BaseException) -> bool:
    """Worth retrying: the server is down or overloaded (5xx / 408 / 429). Requests that the
    server rejects for their content (4xx: invalid value, changed param, deleted run) are not,
    and neither are refused credentials (401 / 403: see :func:`is_auth_error`)."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return True  # connection errors, timeouts, a locked SQLite file, …
    status = exc.get_http_status_code()
    return status >= 500 or status in (408, 429) or exc.error_code == "ENDPOINT_NOT_FOUND"


def is_auth_error(exc: BaseException) -> bool:
    """The server refused the credentials or the permission: retrying cannot help, and a trial
    must not train for hours into a store that will never take its data."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return False
    return exc.get_http_status_code() in (401, 403) or exc.error_code in (
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
    )


class TrackingRefused(RuntimeError):
    """The tracking server refused this trial's credentials or permission."""


class _RunGone(Exception):
    """The trial's run was deleted or does not exist any more."""


def _is_run_gone(exc: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and (
        exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "must be in the 'active' state" in str(exc)
    )


def _json_float(v: float) -> float | str:
    # Protobuf's JSON form of non-finite doubles (plain JSON has none; requests refuses NaN).
    if math.isfinite(v):
        return v
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "_"


class TrialTracker:
    """Logs one trial into its own child run, in the background, through server outages.

    Every call made by the training thread only appends to a buffer under a lock; a daemon
    thread sends the buffer every ``flush_interval`` seconds (or sooner once it holds
    ``flush_points`` points) with ``log_batch``. While the server is down the data stays buffered
    (and in :meth:`state`, for the trial's checkpoint) and sending is retried with backoff.

    A point is identified by (key, step): the first value logged for a (key, step) is the one
    kept; later ones — re-logged after a restore, or re-sent after an ambiguous failure — are
    dropped (via the run's stored metric history) or are exact duplicates, which the SQL store
    ignores.
    """

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
        for k, v in HTTP_ENV_DEFAULTS.items():
            os.environ.setdefault(k, v)
        # Validate early: both ids end up in search filters.
        _q(sweep_id)
        _q(trial_id)
        self.tracking_uri = tracking_uri
        self.experiment_id = str(experiment_id)
        self.sweep_id = sweep_id
        self.trial_id = trial_id
        self.parent_run_id = parent_run_id
        self.run_name = run_name or trial_id
        self.flush_interval = flush_interval
        self.flush_points = flush_points
        self.max_buffer = max_buffer
        self.max_backoff = max_backoff
        self.spool_dir = Path(
            spool_dir
            or Path(tempfile.gettempdir())
            / "compsweep-spool"
            / _safe_name(sweep_id)
            / _safe_name(trial_id)
        )
        self.errors: list[str] = []  # data the server rejected for its content (dropped)

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._buf: list[Point] = []
        self._inflight: list[Point] = []  # taken from _buf by the sender, not yet confirmed
        self._inflight_pos = 0  # _inflight[:pos] are confirmed (sent or known duplicates)
        self._ops: deque[tuple] = deque()  # ("params"|"tags", [(k, v)]) | ("artifact", path, dir)
        self._run_id: str | None = None
        self._continued = False  # the run existed before: check its history before sending
        self._run_ready = False
        self._stored: dict[str, set[int]] = {}  # steps known to be in the run, per key
        self._dedup_run: str | None = None  # the run that _stored describes
        self._checked_keys: set[str] = set()  # keys whose stored history has been read
        self._sent_params: dict[str, str] = {}
        self._closing: str | None = None  # final status once close() was called
        self._closed = False
        self._abort = False
        self._terminated = False
        self._flush_waiters = 0  # flush() calls waiting for the sender
        self._fail_seq = 0  # failed send attempts so far (flush() watches it)
        self._failures = 0  # consecutive failures (backoff)
        self._last_error: str | None = None
        self._fatal: str | None = None  # the server refused us for good (credentials)
        self._last_warn = 0.0
        self._seq = 0
        self._created_ms = int(time.time() * 1000)
        self._pending_file: Path | None = None
        self._client = None
        # Embedded store: points go in through SqliteMetricWriter (False once it has failed).
        self._sqlite: Any = None if self.tracking_uri.startswith("sqlite:") else False

        self._restore(state)
        pending = self.spool_dir / PENDING_FILE
        if pending.is_file():
            # A previous close() of this trial timed out and left its unsent data here.
            try:
                with open(pending, "rb") as f:
                    self._restore(pickle.load(f))
                self._pending_file = pending
            except Exception as e:  # a torn file must not stop the trial
                log.warning("ignoring unreadable %s: %s", pending, e)

        self.sender_cpu_s: float | None = None  # CPU seconds of the sender, once it ended
        self._thread = threading.Thread(
            target=self._loop, name=f"compsweep-tracker-{trial_id}", daemon=True
        )
        self._thread.start()

    # ---------------------------------------------------------------- training-thread API

    @property
    def run_id(self) -> str | None:
        """The child run's id (None until the run could be found or created)."""
        return self._run_id

    @property
    def last_error(self) -> str | None:
        """The last transient send failure (None once sending works again)."""
        return self._last_error

    @property
    def refused(self) -> str | None:
        """Why the server refused this tracker for good (credentials, permission), else None."""
        return self._fatal

    def _raise_if_refused(self) -> None:
        if self._fatal is not None:
            raise TrackingRefused(self._fatal)

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Wait up to ``timeout`` s for the run to be found or created: True once it is, False
        while the server is unreachable (training goes on and points buffer). Raises
        :class:`TrackingRefused` as soon as the server refuses the credentials."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._wake.set()
            while not self._run_ready and self._fatal is None and self._thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.2))
        self._raise_if_refused()
        return self._run_ready

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
        with self._cond:
            while (
                self._pending_points() + len(points) > self.max_buffer
                and self._pending_points() > 0
                and not self._abort
                and self._thread.is_alive()
            ):
                self._wake.set()
                self._cond.wait(0.5)
            if self._abort:  # close() gave up while we waited for room
                log.warning("tracker closed; %d points not logged", len(points))
                return
            self._buf.extend(points)
            full = len(self._buf) >= self.flush_points
        if full:
            self._wake.set()

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Buffer params (nested mappings flattened to dotted keys, values stringified)."""
        self._raise_if_refused()
        items = list(flatten_params(params).items())
        if items:
            self._add_op(("params", items))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Buffer run tags (values stringified)."""
        self._raise_if_refused()
        items = [(str(k), str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]
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
        with self._lock:
            self._seq += 1
            seq = self._seq
        dest = self.spool_dir / f"{seq:06d}-{uuid.uuid4().hex[:8]}" / src.name
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
        except OSError as e:
            log.warning("cannot spool artifact %s: %s; not logged", src, e)
            self.errors.append(f"artifact {src}: {e}")
            return
        self._add_op(("artifact", str(dest), artifact_path))

    def state(self) -> dict[str, Any]:
        """Everything not yet confirmed sent, plus the run id: picklable, for the checkpoint."""
        with self._lock:
            points = self._inflight[self._inflight_pos :] + self._buf
            ops = list(self._ops)
            run_id = self._run_id
        out_ops = []
        for op in ops:
            if op[0] == "artifact":
                data = None
                with contextlib.suppress(OSError):
                    if os.path.getsize(op[1]) <= INLINE_ARTIFACT_MAX:
                        data = Path(op[1]).read_bytes()
                out_ops.append(("artifact", op[1], op[2], data))
            else:
                out_ops.append((op[0], list(op[1])))
        return {
            "version": STATE_VERSION,
            "run_id": run_id,
            "sweep_id": self.sweep_id,
            "trial_id": self.trial_id,
            "points": points,
            "ops": out_ops,
        }

    def flush(self, timeout: float = 10.0, wait_while_down: bool = False) -> bool:
        """Send everything buffered; True once all of it is confirmed.

        Returns False after ``timeout`` seconds, or as soon as a send attempt made after this
        call fails (unless ``wait_while_down``), so a checkpoint is not held up by a dead
        server: the unsent data is in :meth:`state`.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            start_fail = self._fail_seq
            self._flush_waiters += 1  # the sender makes passes back to back until we return
            self._wake.set()
            try:
                while self._has_pending():
                    if not self._thread.is_alive():
                        return False
                    if not wait_while_down and self._fail_seq > start_fail:
                        return False
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(min(remaining, 0.2))
                return True
            finally:
                self._flush_waiters -= 1

    def close(self, status: str = "FINISHED", timeout: float = 60.0) -> bool:
        """Send everything, then set the run's status; stop the background thread.

        Keeps retrying through an outage for up to ``timeout`` seconds. On timeout returns False
        and leaves the unsent data in the spool directory (a later tracker of the same trial
        picks it up) as well as in :meth:`state`.
        """
        if self._closed:
            return self._terminated
        with self._cond:
            self._closing = status
            self._closed = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cond:
                self._abort = True
                self._cond.notify_all()
            self._wake.set()
            self._thread.join(1.0)
        if self._terminated:
            if self._pending_file is not None:
                with contextlib.suppress(OSError):
                    self._pending_file.unlink()
            # Only removes it if empty: the directory may be shared (spool_dir=...).
            with contextlib.suppress(OSError):
                self.spool_dir.rmdir()
            return True
        self._save_pending()
        log.warning(
            "trial %s: could not finish MLflow run within %gs (%s); unsent data kept in %s",
            self.trial_id,
            timeout,
            self._last_error,
            self.spool_dir,
        )
        return False

    def stop(self, timeout: float = 10.0) -> bool:
        """Send what is buffered (for up to ``timeout`` s) and stop the background thread,
        leaving the run's status alone: for a trial that did not end here (it failed, or a
        scheduler stopped it) and whose run is settled, or continued, by someone else.

        Returns True when everything was sent; otherwise the rest is saved in the spool
        directory (a later tracker of the same trial picks it up) and in :meth:`state`.
        """
        if self._closed:
            return self._terminated
        sent = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._abort = True
            self._cond.notify_all()
        self._wake.set()
        self._thread.join(2.0)
        if not sent:
            self._save_pending()
        return sent

    def __enter__(self) -> TrialTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("FAILED" if exc_type else "FINISHED")

    # ---------------------------------------------------------------- internals (any thread)

    def _pending_points(self) -> int:
        return len(self._buf) + len(self._inflight) - self._inflight_pos

    def _has_pending(self) -> bool:
        return bool(self._pending_points() or self._ops or not self._run_ready)

    def _add_op(self, op: tuple) -> None:
        if self._closed:
            log.warning("tracker closed; %s not logged", op[0])
            return
        with self._lock:
            self._ops.append(op)
        self._wake.set()

    def _restore(self, state: Mapping[str, Any] | None) -> None:
        if not state:
            return
        if state.get("version") != STATE_VERSION:
            log.warning("ignoring tracker state of version %r", state.get("version"))
            return
        if state.get("run_id") and self._run_id is None:
            self._run_id = state["run_id"]
            self._continued = True
        self._buf.extend(tuple(p) for p in state.get("points", ()))
        for op in state.get("ops", ()):
            if op[0] == "artifact":
                _, path, artifact_path, data = op
                if not os.path.exists(path) and data is not None:
                    # Restored on another node (or after /tmp was cleaned): rebuild the spool.
                    path = str(
                        self.spool_dir / f"restored-{uuid.uuid4().hex[:8]}" / Path(path).name
                    )
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                    Path(path).write_bytes(data)
                self._ops.append(("artifact", path, artifact_path))
            else:
                self._ops.append((op[0], list(op[1])))

    def _save_pending(self) -> None:
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.spool_dir / (PENDING_FILE + ".tmp")
            with open(tmp, "wb") as f:
                pickle.dump(self.state(), f)
            os.replace(tmp, self.spool_dir / PENDING_FILE)
        except OSError as e:
            log.warning("cannot save unsent tracking data to %s: %s", self.spool_dir, e)

    # ---------------------------------------------------------------- background thread

    def _loop(self) -> None:
        try:
            self._send_loop()
        finally:
            # What sending cost this process (the trainer's thread competes with it).
            self.sender_cpu_s = time.thread_time()
            if self._sqlite:  # the writer's connections: a reused process runs more trials
                self._sqlite.close()

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
                    self._fatal = (
                        f"MLflow at {self.tracking_uri} refused this trial "
                        f"({str(e).splitlines()[0][:300] if str(e) else type(e).__name__}); "
                        "give the trials MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD "
                        "(e.g. --env on submit/run/resume)"
                    )
                    log.error("trial %s: %s", self.trial_id, self._fatal)
                    with self._cond:
                        self._fail_seq += 1
                        self._cond.notify_all()
                    return
                # Transient (server down) or not, keep the data and retry with backoff: content
                # errors are handled where they occur, so anything else is a server answer we
                # do not understand (e.g. the experiment was deleted) that a human may fix.
                self._failures += 1
                self._last_error = f"{type(e).__name__}: {e}"
                now = time.monotonic()
                if self._failures == 1 or now - self._last_warn > 60:
                    self._last_warn = now
                    what = "unreachable" if _is_transient(e) else "refuses requests"
                    log.warning(
                        "trial %s: MLflow %s, buffering (%d points pending): %s",
                        self.trial_id,
                        what,
                        self._pending_points(),
                        str(e).splitlines()[0][:300] if str(e) else repr(e),
                    )
                delay = min(self.max_backoff, 0.25 * 2 ** min(self._failures, 10))
                with self._cond:
                    self._fail_seq += 1
                    self._cond.notify_all()
                continue
            if self._failures:
                log.info("trial %s: MLflow reachable again", self.trial_id)
            self._failures = 0
            self._last_error = None
            with self._cond:
                self._cond.notify_all()
            if self._terminated:
                return
            delay = self.flush_interval
            if self._closing is not None or (self._flush_waiters and self._has_pending()):
                delay = 0.0

    def _mlflow(self):
        if self._client is None:
            self._client = mlflow_client(self.tracking_uri)
        return self._client

    def _send_all(self) -> None:
        self._ensure_run()
        try:
            self._send_ops()
            self._send_points()
        except _RunGone:
            # Deleted under us (e.g. from the UI): look it up again, or create a new one.
            self._run_ready = False
            raise

    def _ensure_run(self) -> None:
        """Find this trial's run (by id from a restored state, else by its tags) or create it."""
        if self._run_ready:
            return
        from mlflow.exceptions import MlflowException

        client = self._mlflow()
        run = None
        if self._run_id is not None:
            try:
                run = client.get_run(self._run_id)
                if run.info.lifecycle_stage == "deleted":
                    run = None
            except MlflowException as e:
                if _is_transient(e) or is_auth_error(e):
                    raise
            if run is None:
                log.warning(
                    "run %s of trial %s is gone; looking up or creating",
                    self._run_id,
                    self.trial_id,
                )
                self._run_id = None
        if run is None:
            # Search before creating, every time: a create whose answer was lost may have
            # succeeded, and a retried trial must find its own earlier run.
            runs = _find_runs(
                client,
                self.experiment_id,
                {ROLE_TAG: "trial", SWEEP_ID_TAG: self.sweep_id, TRIAL_ID_TAG: self.trial_id},
            )
            if runs:
                run = runs[0]
                self._continued = True
        if run is not None:
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
        else:
            tags = {ROLE_TAG: "trial", SWEEP_ID_TAG: self.sweep_id, TRIAL_ID_TAG: self.trial_id}
            if self.parent_run_id:
                tags[PARENT_TAG] = self.parent_run_id
            run = client.create_run(
                self.experiment_id, start_time=self._created_ms, tags=tags, run_name=self.run_name
            )
            self._continued = False
        if run.info.run_id != self._dedup_run:
            # What we know was sent belongs to another (deleted) run: start over.
            self._stored, self._checked_keys, self._sent_params = {}, set(), {}
            self._dedup_run = run.info.run_id
        with self._lock:
            self._run_id = run.info.run_id
        self._run_ready = True

    def _send_ops(self) -> None:
        from mlflow.entities import Param, RunTag

        client = self._mlflow()
        while True:
            with self._lock:
                if not self._ops:
                    return
                op = self._ops[0]
            kind = op[0]
            if kind == "params":
                items = [(k, v) for k, v in op[1] if self._sent_params.get(k) != v]
                for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
                    chunk = items[i : i + MAX_PARAMS_TAGS_PER_BATCH]
                    self._send_bisect(
                        chunk,
                        lambda c: client.log_batch(
                            self._run_id, params=[Param(k, v) for k, v in c], synchronous=True
                        ),
                        "param",
                    )
                    self._sent_params.update(chunk)
            elif kind == "tags":
                for i in range(0, len(op[1]), MAX_PARAMS_TAGS_PER_BATCH):
                    self._send_bisect(
                        op[1][i : i + MAX_PARAMS_TAGS_PER_BATCH],
                        lambda c: client.log_batch(
                            self._run_id, tags=[RunTag(k, v) for k, v in c], synchronous=True
                        ),
                        "tag",
                    )
            elif kind == "artifact":
                _, path, artifact_path = op
                if os.path.exists(path):
                    # (Uploading again overwrites the same file: a retry is harmless.)
                    self._send_bisect(
                        [(path, artifact_path)],
                        lambda c: client.log_artifact(self._run_id, c[0][0], c[0][1]),
                        "artifact",
                    )
                    self._unspool(path)
                else:
                    self._reject(f"artifact {path}: spooled file is missing")
            with self._cond:
                self._ops.popleft()
                self._cond.notify_all()

    def _send_points(self) -> None:
        # Only what was buffered when this pass began: points that keep trickling in while it
        # sends wait for the next pass, so a busy trainer is served in a few large requests per
        # flush_interval rather than a stream of tiny ones (each costs a request's overhead in
        # this process, competing with training for the GIL).
        with self._lock:
            budget = self._pending_points()
        while budget > 0:
            with self._lock:
                if self._inflight_pos >= len(self._inflight):
                    if not self._buf:
                        return
                    self._inflight, self._buf, self._inflight_pos = self._buf, [], 0
                pos = self._inflight_pos
                chunk = self._inflight[pos : pos + min(MAX_METRICS_PER_BATCH, budget)]
            budget -= len(chunk)
            batch = self._new_points(chunk)
            if batch:
                self._send_bisect(batch, self._log_points, "metric", on_sent=self._mark_stored)
            with self._cond:
                self._inflight_pos = pos + len(chunk)
                if self._inflight_pos >= len(self._inflight):
                    self._inflight, self._inflight_pos = [], 0
                self._cond.notify_all()

    def _log_points(self, points: list[Point]) -> None:
        """One ``log_batch`` call (at most 1000 points).

        For an MLflow server the request is posted as plain JSON: MLflow's client builds
        protobufs and pretty-printed JSON in pure Python (~35 us per point, measured), and that
        thread then holds the GIL in long stretches that stall the training thread. Same
        endpoint, same body, same error handling (``verify_rest_response``) as MlflowClient.
        """
        if urlparse(self.tracking_uri).scheme.lower() in ("http", "https"):
            from mlflow.utils.credentials import get_default_host_creds
            from mlflow.utils.rest_utils import http_request, verify_rest_response

            body = {
                "run_id": self._run_id,
                "metrics": [
                    {"key": k, "value": _json_float(v), "timestamp": ts, "step": s}
                    for k, v, ts, s in points
                ],
            }
            endpoint = "/api/2.0/mlflow/runs/log-batch"
            resp = http_request(
                get_default_host_creds(self.tracking_uri), endpoint, "POST", json=body
            )
            verify_rest_response(resp, endpoint)
            return
        if self._sqlite is not False and self._write_sqlite(points):
            return
        from mlflow.entities import Metric

        self._mlflow().log_batch(
            self._run_id, metrics=[Metric(k, v, ts, s) for k, v, ts, s in points], synchronous=True
        )

    def _write_sqlite(self, points: list[Point]) -> bool:
        """Points into the embedded store directly (see :mod:`sweeps.sqlite_metrics`); False
        to let MLflow's own path handle them (an invalid point, a run not active)."""
        import sqlite3

        from sweeps.sqlite_metrics import SqliteMetricWriter, UnsupportedStore

        if self._sqlite is None:
            try:
                self._sqlite = SqliteMetricWriter(
                    _sqlite_path(self.tracking_uri) or self.tracking_uri
                )
            except sqlite3.OperationalError:
                raise  # locked or unreadable file: retried like an unreachable server
            except (ImportError, UnsupportedStore, sqlite3.DatabaseError) as e:
                # An MLflow without the name check used, a schema without the expected
                # columns, or a file SQLite cannot read: MLflow's own path (and its errors).
                log.warning(
                    "trial %s: direct SQLite metric writes unavailable: %s", self.trial_id, e
                )
                self._sqlite = False
                return False
        if not self._sqlite.valid(points):
            return False
        try:
            return self._sqlite.write(self._run_id, points)
        except sqlite3.OperationalError:
            raise  # locked or unreadable file: retried like an unreachable server
        except sqlite3.Error as e:  # a schema this writer does not know: MLflow's path
            log.warning("trial %s: direct SQLite metric writes failed, using MLflow's "
                        "store instead: %s", self.trial_id, str(e).splitlines()[0][:300])  # fmt: skip
            self._sqlite.close()
            self._sqlite = False
            return False

    def _new_points(self, chunk: list[Point]) -> list[Point]:
        """The points of ``chunk`` whose (key, step) is not in the run yet (first one wins)."""
        if self._continued:
            client = self._mlflow()
            for key in {p[0] for p in chunk} - self._checked_keys:
                history = client.get_metric_history(self._run_id, key)
                self._stored.setdefault(key, set()).update(m.step for m in history)
                self._checked_keys.add(key)
        out, seen = [], set()
        for p in chunk:
            ident = (p[0], p[3])
            if ident in seen or p[3] in self._stored.get(p[0], ()):
                continue
            seen.add(ident)
            out.append(p)
        return out

    def _mark_stored(self, points: list[Point]) -> None:
        for key, _, _, step in points:
            self._stored.setdefault(key, set()).add(step)

    def _send_bisect(self, items: list, send, what: str, on_sent=None) -> None:
        """Send ``items``; if the server rejects the request for its content, split it to
        isolate and drop only the offending items. Transient errors propagate (retry later)."""
        try:
            send(items)
        except Exception as e:
            if _is_transient(e) or is_auth_error(e):
                raise
            if _is_run_gone(e):
                raise _RunGone(str(e)) from e
            if len(items) == 1:
                self._reject(f"{what} {str(items[0])[:200]}: {str(e).splitlines()[0][:300]}")
                return
            mid = len(items) // 2
            self._send_bisect(items[:mid], send, what, on_sent)
            self._send_bisect(items[mid:], send, what, on_sent)
            return
        if on_sent is not None:
            on_sent(items)

    @staticmethod
    def _unspool(path: str) -> None:
        # Each spooled file has its own directory; rmdir leaves anything else alone.
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))

    def _reject(self, message: str) -> None:
        log.warning("trial %s: MLflow rejected %s (dropped)", self.trial_id, message)
        self.errors.append(message)

    def _terminate(self) -> None:
        if self._terminated or self._has_pending():
            return
        self._mlflow().set_terminated(self._run_id, status=self._closing)
        self._terminated = True
