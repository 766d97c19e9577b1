"""The driver's pulse: a background thread that keeps a running sweep visible and stoppable.

Every few seconds it

* refreshes the sweep lock's heartbeat (and so notices a sweep folder that cannot be written);
* sets ``compsweep.heartbeat`` on the parent run, so ``status`` can tell a live sweep from one
  whose driver died (on any machine that reaches the tracking store);
* reads ``compsweep.stop_requested`` from the parent run: ``compsweep stop`` asks for a stop
  there, and the driver then stops Tune the way Ctrl-C does (``SIGUSR1``, which Tune handles
  like ``SIGINT`` and which Ray does not block in job drivers);
* prints one line when the tracking server becomes unreachable (trials keep training and
  buffer their points) and one when it is back, or when it refuses the credentials.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from typing import TextIO
from urllib.parse import urlparse

from sweeps.lock import SweepLock
from sweeps.secrets import redact
from sweeps.tracking import is_auth_error

DRIVER_TAG = "compsweep.driver"
HEARTBEAT_TAG = "compsweep.heartbeat"
STOP_TAG = "compsweep.stop_requested"
PATH_TAG = "compsweep.path"
RAY_JOB_TAG = "compsweep.ray_job"
HEARTBEAT_S = 10.0
DRIVER_GONE_AFTER_S = 90.0  # no heartbeat for this long: the driver is gone


class RunGone(RuntimeError):
    """The parent run no longer exists (deleted from the UI, or another store)."""


def parent_run_state(uri: str, run_id: str, timeout: float = 10.0) -> tuple[str, dict[str, str]]:
    """(status, tags) of a run, failing fast (no retries) when the server does not answer."""
    # MLflow at call: `status` and `stop` import this module and must start fast.
    from mlflow.exceptions import MlflowException

    if urlparse(uri).scheme.lower() in ("http", "https"):
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint = "/api/2.0/mlflow/runs/get"
        resp = http_request(get_default_host_creds(uri), endpoint, "GET", max_retries=0,
                            timeout=timeout, params={"run_id": run_id})  # fmt: skip
        try:
            run = verify_rest_response(resp, endpoint).json()["run"]
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise RunGone(run_id) from e
            raise
        tags = {t["key"]: t.get("value", "") for t in run.get("data", {}).get("tags", [])}
        return run["info"]["status"], tags
    from mlflow import MlflowClient  # (at call, as above)

    try:
        run = MlflowClient(uri).get_run(run_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RunGone(run_id) from e
        raise
    return run.info.status, dict(run.data.tags)


def set_run_tags(uri: str, run_id: str, tags: dict[str, str], timeout: float = 10.0) -> None:
    """Set tags on a run in one request, failing fast (no retries)."""
    # MLflow at call, as in parent_run_state.
    if urlparse(uri).scheme.lower() in ("http", "https"):
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint = "/api/2.0/mlflow/runs/log-batch"
        body = {"run_id": run_id, "tags": [{"key": k, "value": v} for k, v in tags.items()]}
        resp = http_request(get_default_host_creds(uri), endpoint, "POST", max_retries=0,
                            timeout=timeout, json=body)  # fmt: skip
        verify_rest_response(resp, endpoint)
        return
    from mlflow import MlflowClient  # (at call, as above)
    from mlflow.entities import RunTag

    MlflowClient(uri).log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def driver_identity() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


class DriverHeartbeat:
    """Start with :meth:`start` once the parent run exists; :meth:`stop` before settling."""

    def __init__(
        self,
        tracking_uri: str,
        parent_run_id: str,
        lock: SweepLock | None,
        stream: TextIO | None,
        interval: float = HEARTBEAT_S,
    ) -> None:
        self.uri = tracking_uri
        self.parent_run_id = parent_run_id
        self.lock = lock
        self.stream = stream
        self.interval = interval
        self.stop_request: str | None = None  # set once a stop was asked for
        self.storage_problem: str | None = None
        self._tracking_down_since: float | None = None
        self._auth_reported = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="compsweep-heartbeat", daemon=True)

    def start(self) -> DriverHeartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        if self._tracking_down_since is not None:  # say whether it came back before the end
            self._beat_tracking(act_on_stop=False)

    def _say(self, text: str) -> None:
        print(redact(text), file=self.stream or sys.stdout, flush=True)

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            self._beat_lock()
            self._beat_tracking()

    def _beat_lock(self) -> None:
        if self.lock is None:
            return
        try:
            self.lock.beat()
        except OSError as e:
            if self.storage_problem is None:
                self.storage_problem = f"{self.lock.path}: {e.strerror or e}"
                self._say(
                    f"sweep folder {self.storage_problem}: trials cannot save checkpoints "
                    "and will fail; make it writable, then `compsweep resume --retry-failed`"
                )
            return
        if self.storage_problem is not None:
            self._say(f"sweep folder {self.lock.path} is writable again")
            self.storage_problem = None

    def _beat_tracking(self, act_on_stop: bool = True) -> None:
        try:
            set_run_tags(self.uri, self.parent_run_id, {HEARTBEAT_TAG: str(int(time.time()))})
            _, tags = parent_run_state(self.uri, self.parent_run_id)
        except Exception as e:  # the tracking server is down, or refuses us
            if is_auth_error(e):
                if not self._auth_reported:
                    self._auth_reported = True
                    self._say(
                        f"MLflow at {self.uri} refused the credentials ({str(e).splitlines()[0][:200]}); "
                        "set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
                    )
            elif self._tracking_down_since is None:
                self._tracking_down_since = time.monotonic()
                self._say(
                    f"MLflow at {self.uri} is unreachable: trials keep training and buffer their "
                    "points until it is back (nothing is lost)"
                )
            return
        if self._tracking_down_since is not None:
            down = time.monotonic() - self._tracking_down_since
            self._say(f"MLflow at {self.uri} is reachable again after ~{down:.0f} s")
            self._tracking_down_since = None
        request = tags.get(STOP_TAG)
        if request and self.stop_request is None and act_on_stop:
            self.stop_request = request
            self._say(f"stop requested ({request}): stopping the trials and saving the sweep")
            # Tune's own graceful stop (as Ctrl-C): trials end, the experiment state is saved.
            os.kill(os.getpid(), signal.SIGUSR1)
