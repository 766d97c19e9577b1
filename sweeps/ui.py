"""``compsweep ui``: a light MLflow UI on an existing tracking store.

``mlflow server`` starts 4 web workers and, on a database store, job consumers for MLflow's
GenAI features by default: tens of seconds of CPU before it answers on a small machine, and as
long to stop. Browsing sweeps needs one worker and no jobs. The store must exist (MLflow
would create an empty ``mlflow.db`` wherever it is started); when it does not, the message
names the stores the sweeps under ``--storage`` track into.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from sweeps.naming import runs_view_link
from sweeps.tracking_uri import missing_store

SERVER_LOG = "mlflow-ui.log"


class StoreMissing(FileNotFoundError):
    """The tracking store to browse does not exist (nothing is created)."""


def sqlite_file(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def sweep_stores(storage: str | os.PathLike) -> list[str]:
    """The tracking URIs of the sweeps under ``storage`` (their ``compsweep.json``), most
    used first."""
    counts: dict[str, int] = {}
    for f in Path(storage).glob("*/compsweep.json"):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            uri = json.loads(f.read_text()).get("tracking_uri")
            if uri:
                counts[uri] = counts.get(uri, 0) + 1
    return sorted(counts, key=lambda u: -counts[u])


def check_store(uri: str, storage: str | os.PathLike) -> None:
    """Refuse a ``sqlite:///`` store whose file does not exist, saying where the sweeps' are.

    Raises:
        StoreMissing: with the message to print.
    """
    path = missing_store(uri)
    if path is None:
        return
    known = [u for u in sweep_stores(storage) if (sqlite_file(u) or Path("/")) != path]
    where = (
        "the sweeps under " + str(storage) + " track into " + ", ".join(known)
        if known
        else f"no sweep under {storage} names a store; `compsweep run SPEC` creates ./mlflow.db"
    )
    raise StoreMissing(
        f"no MLflow store at {path} (compsweep ui opens an existing store and creates none); "
        f"{where}; pass it with --tracking-uri, or start the UI in the folder the sweeps ran in"
    )


def experiments(uri: str) -> list[tuple[str, str, int]]:
    """(id, name, runs) of the active experiments of an SQLite store that hold runs, read
    without importing MLflow."""
    path = sqlite_file(uri)
    if path is None:
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute(
                "SELECT e.experiment_id, e.name, COUNT(r.run_uuid) FROM experiments e "
                "JOIN runs r ON r.experiment_id = e.experiment_id "
                "WHERE e.lifecycle_stage = 'active' AND r.lifecycle_stage = 'active' "
                "GROUP BY e.experiment_id, e.name ORDER BY e.experiment_id"
            ).fetchall()
    except sqlite3.Error:
        return []
    return [(str(i), str(n), int(c)) for i, n, c in rows]


def server_command(uri: str, host: str, port: int, workers: int) -> list[str]:
    """``mlflow server`` with ``workers`` web workers. The UI reads artifacts where the runs
    put them; new experiments of an SQLite store get theirs beside it (as sweeps do), and no
    ``./mlartifacts`` appears in the working folder."""
    mlflow = str(Path(sys.executable).parent / "mlflow")
    cmd = [mlflow, "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", str(workers), "--no-serve-artifacts"]  # fmt: skip
    store = sqlite_file(uri)
    if store is not None:
        cmd += ["--default-artifact-root", (store.resolve().parent / "mlartifacts").as_uri()]
    return cmd


def direct_command(uri: str, host: str, port: int, workers: int) -> tuple[list[str], dict]:
    """MLflow's web app under uvicorn, started the way ``mlflow server`` starts it (the same
    variables), without the ``mlflow`` command's own process, which imports all of MLflow once
    more only to start this one: about half the time to the first answer. Falls back to
    :func:`server_command` if a later MLflow moves the app (see :func:`serve`)."""
    env = {
        "_MLFLOW_SERVER_FILE_STORE": uri,
        "_MLFLOW_SERVER_REGISTRY_STORE": uri,
        "_MLFLOW_SGI_NAME": "uvicorn",
        "_MLFLOW_SERVER_BOOT_ID": uuid.uuid4().hex,
        "_MLFLOW_IN_JOB_EXECUTOR": "false",
    }
    store = sqlite_file(uri)
    if store is not None:
        env["_MLFLOW_SERVER_ARTIFACT_ROOT"] = (store.resolve().parent / "mlartifacts").as_uri()
    cmd = [sys.executable, "-m", "uvicorn", "--host", host, "--port", str(port),
           "--workers", str(workers), "mlflow.server.fastapi_app:app"]  # fmt: skip
    return cmd, env


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """True once ``url``/health answers 200; False if the server ends or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:  # noqa: S310 (loopback)
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def serve(
    uri: str,
    *,
    host: str,
    port: int,
    workers: int = 1,
    jobs: bool = False,
    verbose: bool = False,
    log_dir: Path | None = None,
    timeout: float = 120.0,
) -> int:
    """Run the MLflow UI until Ctrl-C; print the runs view of each experiment once it answers.
    Returns the exit code."""
    t0 = time.monotonic()
    env = dict(os.environ)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if jobs else "false"
    launches = [(server_command(uri, host, port, workers), {})]
    if not jobs:  # the job consumers are set up by the `mlflow server` command only
        launches.insert(0, direct_command(uri, host, port, workers))
    log_path = (log_dir or Path.cwd()) / SERVER_LOG
    out = None if verbose else open(log_path, "a", encoding="utf-8")  # noqa: SIM115
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    # `kill`, a closed terminal: stop the server too (it has its own process group).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    proc = None
    try:
        for cmd, extra in launches:
            # Its own process group: Ctrl-C reaches only us, and we stop the server in one go.
            proc = subprocess.Popen(cmd, env={**env, **extra}, stdout=out, start_new_session=True,
                                    stderr=subprocess.STDOUT if out else None)  # fmt: skip
            if wait_ready(base, proc, timeout):
                break
        else:
            code = proc.poll()
            why = f"ended with code {code}" if code is not None else f"no answer in {timeout:.0f} s"
            print(f"error: the MLflow UI did not start ({why}); see {log_path}", file=sys.stderr)
            return 1
        print(f"MLflow UI ready in {time.monotonic() - t0:.1f} s on {base} for {uri} "
              "(Ctrl-C to stop)", flush=True)  # fmt: skip
        for exp_id, name, runs in experiments(uri):
            print(f"  {name} ({runs} runs): {runs_view_link(base, exp_id)}", flush=True)
        proc.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if proc is not None:
            _stop(proc)
        if out is not None:
            out.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
