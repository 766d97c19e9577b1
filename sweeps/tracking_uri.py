"""Where tracking data goes: the tracking URI, whether it is usable, and an ``MlflowClient``
for it (docs/design.md §7).

No Ray import, and MLflow is imported only where a client is made (fast ``compsweep --help``).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from urllib.parse import urlparse, urlsplit

from sweeps.secrets import redact
from sweeps.tracking_schema import safe_name
from trainers.validation import shown

# HTTP settings for trial processes: fail fast while the server is down (our own loop
# retries with backoff and keeps the data) instead of MLflow's default ~4 minutes of retries.
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")

HTTP_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


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
    plugins…) are not checked here. A password in ``uri`` is masked in the message.
    """
    if not uri or not uri.strip():
        return "tracking.uri: empty; leave it out for the embedded SQLite store"
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        problem = server_problem(uri, timeout)
        return f"tracking.uri: {problem}" if problem else None
    if scheme == "sqlite":
        path = sqlite_path(uri)
        if path is None:
            return None  # in-memory database
        problem = _check_writable_file(path)
        return (
            f"tracking.uri: SQLite store {redact(uri)} is not usable: {problem}"
            if problem
            else None
        )
    if scheme in ("", "file"):
        path = Path(parsed.path if scheme == "file" else uri).expanduser()
        problem = _check_writable_dir(path)
        return (
            f"tracking.uri: file store {redact(uri)} is not usable: {problem}" if problem else None
        )
    return None


def server_problem(uri: str, timeout: float) -> str | None:
    """Why the MLflow server at the http(s) ``uri`` cannot be used (it must answer ``/health``,
    or the REST API, within ``timeout`` seconds), else None; the password masked. /health needs
    no credentials, even on a server with basic auth."""
    import requests  # deferred: only http(s) URIs need it

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
            return f"cannot reach the MLflow tracking server at {redact(uri)} ({reason}); start it or fix the URI"
        if resp.status_code == 200:
            return None
        errors.append(f"GET {path} -> HTTP {resp.status_code}")
    return f"{redact(uri)} does not answer like an MLflow tracking server ({'; '.join(errors)})"


def missing_store(uri: str) -> Path | None:
    """The file of a ``sqlite:`` store that does not exist yet (MLflow would create it, empty),
    else None."""
    path = sqlite_path(uri)
    return path if path is not None and not path.is_file() else None


def lookup_problem(uri: str, timeout: float = 5) -> str | None:
    """Why no sweep can be looked up in the tracking store ``uri``, else None: MLflow could not
    use it, it is an SQLite file that does not exist (MLflow would create an empty store
    there), or it is a server that does not answer within ``timeout`` seconds (MLflow's own
    client would retry for minutes). The password masked."""
    problem = tracking_uri_problem(uri)
    if problem:
        return problem
    missing = missing_store(uri)
    if missing is not None:
        return f"no MLflow store at {missing}: check --tracking-uri"
    if urlsplit(uri).scheme.lower() in ("http", "https"):
        return server_problem(uri, timeout)
    return None


_initialized_stores: set[str] = set()
_init_lock = threading.Lock()


def mlflow_client(uri: str):
    """An ``MlflowClient`` for ``uri``. The first use of an SQLite store in this process runs
    under a file lock beside the database: MLflow creates its tables when a client is made,
    and two sweeps starting at once on a new ``mlflow.db`` would otherwise race ("table ...
    already exists", "duplicate column name")."""
    from mlflow import MlflowClient  # deferred: mlflow costs ~1 s to import

    db = sqlite_path(uri)
    if db is None or uri in _initialized_stores:
        return MlflowClient(tracking_uri=uri)

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


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` URI (None for other URIs and in-memory ones)."""
    if not uri.lower().startswith("sqlite:"):
        return None
    rest = uri[len("sqlite://") :].split("?", 1)[0]
    if rest in ("", "/", "/:memory:"):
        return None
    # sqlite:///rel.db is relative to the cwd; sqlite:////abs.db is absolute.
    return Path(rest[1:] if rest.startswith("/") else rest).expanduser()


def local_artifact_location(uri: str, name: str) -> str | None:
    """For the embedded SQLite store: artifacts beside the database. MLflow's default is
    ``./mlruns`` of whichever process creates the experiment, i.e. wherever the driver ran."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.resolve().parent / "mlartifacts" / safe_name(name)).as_uri()


def tracking_uri_problem(uri: str) -> str | None:
    """Why MLflow could not use ``uri`` as its tracking store (from its form alone), or None.
    Credentials in it are fine (and their password masked in the message)."""
    if not uri.strip():
        return "empty; leave it out (null) for the embedded SQLite store ./mlflow.db"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (raises on a malformed port)
    except ValueError as e:
        return f"{shown(redact(uri))} is not a URI ({e})"
    scheme = parts.scheme.lower().split("+")[0]
    if scheme in ("", "file") or len(scheme) == 1:  # a path (C:\ too)
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true"):
            return None
        return (
            f"{shown(redact(uri))} is a file path; MLflow 3 no longer tracks to files: use "
            "sqlite:///PATH/mlflow.db, an http(s)://HOST:PORT server, or leave it out"
        )
    if scheme not in TRACKING_SCHEMES:
        return (
            f"scheme {parts.scheme!r} is not one MLflow can track to; use one of "
            f"{', '.join(TRACKING_SCHEMES)} (e.g. http://HOST:5000 or sqlite:///mlflow.db)"
        )
    if scheme in ("http", "https") and not parts.hostname:
        return f"{shown(redact(uri))} names no host; write {scheme}://HOST:PORT"
    if (
        scheme == "sqlite"
        and not uri.lower().startswith("sqlite:///")
        and uri.lower() != "sqlite://"
    ):
        return (
            f"{shown(redact(uri))}: write sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    return None
