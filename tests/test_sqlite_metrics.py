"""Direct metric inserts into MLflow's SQLite store give what MLflow's own log_batch gives."""

from __future__ import annotations

import math
import sqlite3

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from sweeps.sqlite_metrics import SqliteMetricWriter, UnsupportedStore

INF = float("inf")
# (key, value, timestamp ms, step): out of order, non-finite, an int, a point logged twice,
# the same (key, step) with another value, and a later timestamp at the top step.
BATCHES = [
    [("e_w", 0.5, 1000, 2), ("e_w", 0.25, 1001, 1), ("loss", math.nan, 1002, 3),
     ("loss", 1.5, 1003, 1), ("acc", 1, 1004, 5), ("big", INF, 1005, 1), ("big", -INF, 1006, 0)],
    [("e_w", 0.5, 1000, 2), ("e_w", 0.75, 1007, 2), ("loss", 2.0, 1008, 2), ("acc", 0.5, 1009, 5),
     ("acc", 0.9, 1010, 4), ("new", -3.0, 1011, 7)],
]  # fmt: skip


def _history(client: MlflowClient, run_id: str) -> dict:
    run = client.get_run(run_id)
    out = {}
    for key in run.data.metrics:
        points = client.get_metric_history(run_id, key)
        out[key] = sorted(
            (m.step, m.timestamp, "nan" if math.isnan(m.value) else m.value) for m in points
        )
    return out


def _latest(client: MlflowClient, run_id: str) -> dict:
    metrics = client.get_run(run_id).data.metrics
    return {k: "nan" if math.isnan(v) else v for k, v in metrics.items()}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module: MLflow's schema migrations take seconds per new database, and
    each test works on runs of its own."""
    db = tmp_path_factory.mktemp("sqlite-store") / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.create_experiment("direct")
    writer = SqliteMetricWriter(db)
    yield f"sqlite:///{db}", client, exp, writer
    writer.close()


def test_direct_inserts_equal_mlflows_log_batch(store):
    uri, client, exp, writer = store
    ours, theirs = client.create_run(exp).info.run_id, client.create_run(exp).info.run_id
    for batch in BATCHES:
        assert writer.valid(batch)
        assert writer.write(ours, batch)
        client.log_batch(theirs, metrics=[Metric(*p) for p in batch], synchronous=True)
    assert _history(client, ours) == _history(client, theirs)
    assert _latest(client, ours) == _latest(client, theirs)
    assert _latest(client, ours)["acc"] == 0.5  # step 5 beats step 4; the later timestamp wins
    assert len(client.get_metric_history(ours, "e_w")) == 3  # the exact duplicate is stored once


def test_a_deleted_run_gets_nothing(store):
    uri, client, exp, writer = store
    run = client.create_run(exp).info.run_id
    client.delete_run(run)
    assert writer.write(run, BATCHES[0]) is False
    client.restore_run(run)
    assert client.get_run(run).data.metrics == {}


def test_points_mlflow_would_refuse_are_left_to_mlflow(store):
    _, _, _, writer = store
    assert not writer.valid([("ok", True, 0, 0)])
    assert not writer.valid([("ok", "1.0", 0, 0)])
    assert not writer.valid([("no*stars", 1.0, 0, 0)])
    assert writer.valid([("fine/name-1.0 x", 1.0, 0, 0)])


def test_a_database_without_mlflows_tables_is_refused(tmp_path):
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE metrics (key TEXT, value REAL)")
    con.close()
    with pytest.raises(UnsupportedStore, match="metrics"):
        SqliteMetricWriter(db)
    with pytest.raises(UnsupportedStore, match="not an SQLite database file"):
        SqliteMetricWriter(tmp_path / "missing.db")
