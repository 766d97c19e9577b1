"""How tracking data reaches the store: one small interface, :class:`Transport`, and its
implementations, picked by the tracking URI (:func:`open_transport`):

* :class:`MlflowTransport`: everything through ``MlflowClient`` (file stores, PostgreSQL, …);
* :class:`RestTransport`: an MLflow server; metric batches are posted as plain JSON;
* :class:`SqliteTransport`: the embedded SQLite store; metric batches are written into the
  database directly (:mod:`sweeps.sqlite_metrics`), everything else through MLflow.

MLflow is imported where first used, not at module level: it costs ~1 s, and the CLI imports
this module through ``sweeps.tracking`` before it knows whether it will track anything.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlparse

from sweeps.run_resolution import find_runs
from sweeps.sqlite_metrics import SqliteMetricWriter, UnsupportedStore
from sweeps.tracking_schema import Point
from sweeps.tracking_uri import mlflow_client, sqlite_path

log = logging.getLogger(__name__)

KeyValues = Sequence[tuple[str, str]]


class Transport(Protocol):
    """What a tracker needs from a tracking store. Every call blocks and raises the store's
    own errors (classified by :mod:`sweeps.tracking_errors`)."""

    uri: str

    def get_run(self, run_id: str) -> Any:
        """The MLflow ``Run`` (``info.run_id``, ``info.status``, ``info.lifecycle_stage``)."""
        ...

    def find_runs(self, experiment_id: str, tags: Mapping[str, str]) -> list[Any]:
        """Active runs carrying all ``tags``, oldest first."""
        ...

    def create_run(
        self, experiment_id: str, tags: Mapping[str, str], run_name: str, start_time: int
    ) -> str:
        """A new run's id."""
        ...

    def set_running(self, run_id: str) -> None: ...

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[Point] = (),
        params: KeyValues = (),
        tags: KeyValues = (),
    ) -> None:
        """One request (within MLflow's batch limits)."""
        ...

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None) -> None: ...

    def metric_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which the run holds ``key``."""
        ...

    def set_terminated(self, run_id: str, status: str) -> None: ...

    def close(self) -> None:
        """Release connections (a reused process runs more trials)."""
        ...


class MlflowTransport:
    """Everything through ``MlflowClient``."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = mlflow_client(self.uri)
        return self._client

    def get_run(self, run_id: str) -> Any:
        return self.client.get_run(run_id)

    def find_runs(self, experiment_id: str, tags: Mapping[str, str]) -> list[Any]:
        return find_runs(self.client, experiment_id, tags)

    def create_run(
        self, experiment_id: str, tags: Mapping[str, str], run_name: str, start_time: int
    ) -> str:
        run = self.client.create_run(
            experiment_id, start_time=start_time, tags=dict(tags), run_name=run_name
        )
        return str(run.info.run_id)

    def set_running(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[Point] = (),
        params: KeyValues = (),
        tags: KeyValues = (),
    ) -> None:
        if metrics and not params and not tags:
            self._log_metrics(run_id, metrics)  # the hot path: subclasses make it cheaper
            return
        self._log_with_client(run_id, metrics, params, tags)

    def _log_metrics(self, run_id: str, metrics: Sequence[Point]) -> None:
        self._log_with_client(run_id, metrics, (), ())

    def _log_with_client(
        self, run_id: str, metrics: Sequence[Point], params: KeyValues, tags: KeyValues
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag  # deferred: see the module docstring

        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, ts, s) for k, v, ts, s in metrics],
            params=[Param(k, v) for k, v in params],
            tags=[RunTag(k, v) for k, v in tags],
            synchronous=True,
        )

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None) -> None:
        self.client.log_artifact(run_id, path, artifact_path)

    def metric_steps(self, run_id: str, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(run_id, key)}

    def set_terminated(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def close(self) -> None:
        pass


def _json_float(v: float) -> float | str:
    # Protobuf's JSON form of non-finite doubles (plain JSON has none; requests refuses NaN).
    if math.isfinite(v):
        return v
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


class RestTransport(MlflowTransport):
    """An MLflow tracking server.

    Metric batches are posted as plain JSON: MLflow's client builds protobufs and
    pretty-printed JSON in pure Python (~35 us per point, measured), and that thread then holds
    the GIL in long stretches that stall the training thread. Same endpoint, same body, same
    error handling (``verify_rest_response``) as ``MlflowClient``.
    """

    def _log_metrics(self, run_id: str, metrics: Sequence[Point]) -> None:
        # deferred: see the module docstring
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        body = {
            "run_id": run_id,
            "metrics": [
                {"key": k, "value": _json_float(v), "timestamp": ts, "step": s}
                for k, v, ts, s in metrics
            ],
        }
        endpoint = "/api/2.0/mlflow/runs/log-batch"
        resp = http_request(get_default_host_creds(self.uri), endpoint, "POST", json=body)
        verify_rest_response(resp, endpoint)


class SqliteTransport(MlflowTransport):
    """The embedded SQLite store: metric batches through :class:`SqliteMetricWriter` (~15x
    cheaper than MLflow's ORM), falling back to MLflow's own path for a batch the writer
    cannot take (an invalid point, a run not active) and for good once the writer fails."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self._writer: SqliteMetricWriter | None = None
        self.direct = True  # False once the direct writer proved unusable for this store

    def _log_metrics(self, run_id: str, metrics: Sequence[Point]) -> None:
        if not self._write_direct(run_id, metrics):
            super()._log_metrics(run_id, metrics)

    def _write_direct(self, run_id: str, points: Sequence[Point]) -> bool:
        if not self.direct:
            return False
        if self._writer is None:
            try:
                self._writer = SqliteMetricWriter(sqlite_path(self.uri) or self.uri)
            except sqlite3.OperationalError:
                raise  # locked or unreadable file: retried like an unreachable server
            except (ImportError, UnsupportedStore, sqlite3.DatabaseError) as e:
                # An MLflow without the name check used, a schema without the expected
                # columns, or a file SQLite cannot read: MLflow's own path (and its errors).
                log.warning("direct SQLite metric writes unavailable for %s: %s", self.uri, e)
                self.direct = False
                return False
        if not self._writer.valid(points):
            return False
        try:
            return self._writer.write(run_id, points)
        except sqlite3.OperationalError:
            raise  # locked or unreadable file: retried like an unreachable server
        except sqlite3.Error as e:  # a schema this writer does not know: MLflow's path
            log.warning("direct SQLite metric writes failed, using MLflow's store instead: %s",
                        str(e).splitlines()[0][:300])  # fmt: skip
            self.close()
            self.direct = False
            return False

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def open_transport(uri: str) -> Transport:
    """The transport for ``uri``: REST for http(s), direct SQLite for sqlite, else MLflow's
    client."""
    scheme = urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        return RestTransport(uri)
    if scheme == "sqlite":
        return SqliteTransport(uri)
    return MlflowTransport(uri)
