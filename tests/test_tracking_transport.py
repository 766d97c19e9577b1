"""sweeps.tracking_transport (which transport a URI gets, the direct SQLite path) and
sweeps.run_resolution, against a real embedded MLflow SQLite store (no server needed)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from sweeps.run_resolution import RunTarget, ensure_experiment, resolve_run
from sweeps.tracking_errors import is_transient
from sweeps.tracking_transport import (
    MlflowTransport,
    RestTransport,
    SqliteTransport,
    open_transport,
)


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("http://127.0.0.1:5000", RestTransport),
        ("HTTPS://mlflow.example.org", RestTransport),
        ("sqlite:////tmp/x/mlflow.db", SqliteTransport),
        ("file:///tmp/mlruns", MlflowTransport),
        ("/tmp/mlruns", MlflowTransport),
        ("postgresql://u@db/mlflow", MlflowTransport),
    ],
)
def test_transport_is_chosen_by_the_uri_scheme(uri, kind):
    transport = open_transport(uri)
    assert type(transport) is kind and transport.uri == uri


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module (MLflow creates its tables in seconds); tests use own ids."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    return uri, ensure_experiment(uri, "transport")


def target(exp_id: str, trial: str, **extra: str) -> RunTarget:
    return RunTarget(
        exp_id, {"compsweep.trial_id": trial}, f"run {trial}", extra, 1_700_000_000_000
    )


def test_sqlite_transport_writes_metrics_directly_and_the_rest_through_mlflow(store):
    uri, exp_id = store
    transport = SqliteTransport(uri)
    run_id = resolve_run(transport, target(exp_id, "t0"), None, "trial t0").run_id
    transport.log_batch(run_id, params=[("lr", "0.1")], tags=[("compsweep.method", "prune")])
    transport.log_batch(run_id, metrics=[("loss", 0.5, 1_700_000_000_000, s) for s in range(3)])
    assert transport.direct  # the direct writer took the points
    assert transport.metric_steps(run_id, "loss") == {0, 1, 2}
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.params == {"lr": "0.1"} and run.data.metrics == {"loss": 0.5}
    # A name MLflow refuses goes through MLflow's path, which raises its content error.
    with pytest.raises(MlflowException) as err:
        transport.log_batch(run_id, metrics=[("bad name?!", 1.0, 1_700_000_000_000, 0)])
    assert not is_transient(err.value)
    transport.close()


def test_a_trials_run_is_found_again_not_created_twice(store):
    uri, exp_id = store
    transport = open_transport(uri)
    first = resolve_run(transport, target(exp_id, "t1", **{"mlflow.parentRunId": "p"}), None, "t1")
    assert not first.continued
    transport.set_terminated(first.run_id, "FAILED")
    again = resolve_run(transport, target(exp_id, "t1"), None, "t1")  # a retry, no state
    assert again.run_id == first.run_id and again.continued
    run = MlflowClient(uri).get_run(first.run_id)
    assert run.info.status == "RUNNING"  # continued: running again
    assert run.info.run_name == "run t1" and run.data.tags["mlflow.parentRunId"] == "p"
    other = resolve_run(transport, target(exp_id, "t2"), None, "t2")
    assert other.run_id != first.run_id


def test_a_deleted_run_is_replaced(store):
    uri, exp_id = store
    transport = open_transport(uri)
    first = resolve_run(transport, target(exp_id, "t9"), None, "t9")
    MlflowClient(uri).delete_run(first.run_id)
    again = resolve_run(transport, target(exp_id, "t9"), first.run_id, "t9")  # from a state
    assert again.run_id != first.run_id and not again.continued
