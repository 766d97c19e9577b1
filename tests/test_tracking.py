"""sweeps.tracking against a real MLflow server (``mlflow_server`` fixture): never mocked."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow_server import free_port

from sweeps.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MAX_PARAM_VAL_LENGTH,
    TrialTracker,
    check_tracking_uri,
    default_tracking_uri,
    ensure_experiment,
    find_trial_runs,
    finish_run,
    start_sweep_run,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
FAST = {"flush_interval": 0.2, "max_backoff": 1.0}  # keep the tests quick


@pytest.fixture
def sweep(mlflow_server, tmp_path):
    """A fresh experiment, sweep id and parent run on the shared server."""
    uri = mlflow_server.uri
    name = f"test-{uuid.uuid4().hex[:8]}"
    exp_id = ensure_experiment(uri, name)
    sweep_id = f"{name}-sweep"
    parent = start_sweep_run(uri, exp_id, sweep_id, {"name": name})
    return {
        "uri": uri,
        "experiment_id": exp_id,
        "sweep_id": sweep_id,
        "parent": parent,
        "spool": tmp_path / "spool",
    }


def tracker(sweep, trial_id: str, **kw) -> TrialTracker:
    kw = {**FAST, "spool_dir": sweep["spool"] / trial_id, **kw}
    return TrialTracker(
        tracking_uri=kw.pop("uri", sweep["uri"]),
        experiment_id=sweep["experiment_id"],
        sweep_id=sweep["sweep_id"],
        trial_id=trial_id,
        parent_run_id=sweep["parent"],
        **kw,
    )


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    """step -> value; fails if any step is stored twice."""
    points = client.get_metric_history(run_id, key)
    steps = [m.step for m in points]
    dups = sorted({s for s in steps if steps.count(s) > 1})
    assert not dups, f"{key}: steps stored more than once: {dups}"
    return {m.step: m.value for m in points}


def trial_runs(sweep, trial_id: str) -> list:
    return [
        r
        for r in find_trial_runs(sweep["uri"], sweep["experiment_id"], sweep["sweep_id"])
        if r.data.tags.get("compsweep.trial_id") == trial_id
    ]


def test_check_tracking_uri(mlflow_server, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    msg = check_tracking_uri(dead, timeout=2)
    assert msg and "tracking.uri" in msg and dead in msg
    assert check_tracking_uri(mlflow_server.uri) is None
    assert check_tracking_uri(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}") is None
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad = f"sqlite:///{blocker / 'mlflow.db'}"
    msg = check_tracking_uri(bad)
    assert msg and "tracking.uri" in msg and bad in msg
    assert default_tracking_uri() == f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def test_parent_run_get_or_create(mlflow_server, tmp_path):
    uri = mlflow_server.uri
    client = MlflowClient(uri)
    name = f"parent-{uuid.uuid4().hex[:8]}"
    exp_id = ensure_experiment(uri, name)
    assert ensure_experiment(uri, name) == exp_id
    assert client.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND

    spec = {"name": name, "budget": {"num_trials": 3}}
    run_id = start_sweep_run(uri, exp_id, "sw1", spec)
    finish_run(uri, run_id, "FAILED")
    # A resumed sweep continues the same parent run, running again.
    assert start_sweep_run(uri, exp_id, "sw1", spec) == run_id
    assert start_sweep_run(uri, exp_id, "sw2", spec) != run_id
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags["compsweep.role"] == "sweep"
    assert run.data.tags["compsweep.sweep_id"] == "sw1"
    path = client.download_artifacts(run_id, "spec.yaml", str(tmp_path))
    assert yaml.safe_load(Path(path).read_text()) == spec
    finish_run(uri, run_id)
    assert client.get_run(run_id).info.status == "FINISHED"


def test_trial_logs_everything(sweep, tmp_path):
    client = MlflowClient(sweep["uri"])
    t = tracker(sweep, "trial_a")
    t.log_params({"optim": {"lr": 0.05, "momentum": 0.9}, "method": "prune", "long": "x" * 9000})
    t.set_tags({"compsweep.method": "prune"})
    for step in range(0, 300, 3):
        t.log_metrics({"e_w": step * 0.01, "loss_pre": 1.0 / (step + 1), "val_accuracy": 0.5}, step)
    t.log_metrics({"delta_loss_ratio": math.nan, "loss_post": math.inf}, 300)
    art = tmp_path / "config.yaml"
    art.write_text("model: small_cnn\n")
    t.log_artifact(str(art))
    art.unlink()  # spooled: the tracker must not need the original any more
    assert t.close(timeout=60)
    assert t.errors == []

    runs = trial_runs(sweep, "trial_a")
    assert len(runs) == 1
    run = client.get_run(runs[0].info.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "trial_a"
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == sweep["parent"]
    assert tags["compsweep.role"] == "trial"
    assert tags["compsweep.sweep_id"] == sweep["sweep_id"]
    assert tags["compsweep.trial_id"] == "trial_a"
    assert tags["compsweep.method"] == "prune"
    params = run.data.params
    assert params["optim.lr"] == "0.05" and params["optim.momentum"] == "0.9"
    assert params["method"] == "prune"
    assert params["long"] == "x" * MAX_PARAM_VAL_LENGTH
    steps = list(range(0, 300, 3))
    e_w = history(client, run.info.run_id, "e_w")
    assert sorted(e_w) == steps
    assert e_w[297] == pytest.approx(2.97)
    assert sorted(history(client, run.info.run_id, "loss_pre")) == steps
    assert math.isnan(history(client, run.info.run_id, "delta_loss_ratio")[300])
    assert history(client, run.info.run_id, "loss_post")[300] > 1e300  # SQL stores inf as max
    assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["config.yaml"]
    path = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "dl"))
    assert Path(path).read_text() == "model: small_cnn\n"


def test_exact_duplicate_log_batch_is_idempotent(sweep):
    """What the tracker relies on after an ambiguous failure: re-sending the very same points
    (same key, value, timestamp, step) through the SQL store stores them once."""
    client = MlflowClient(sweep["uri"])
    run_id = client.create_run(sweep["experiment_id"]).info.run_id
    points = [Metric("m", float(s), 1_700_000_000_000 + s, s) for s in range(20)]
    client.log_batch(run_id, metrics=points)
    client.log_batch(run_id, metrics=points[5:] + [Metric("m", 99.0, 1_700_000_000_099, 99)])
    assert sorted(history(client, run_id, "m")) == [*range(20), 99]


def test_retried_trial_continues_its_run(sweep):
    """A trial retried without any checkpoint finds its run by (sweep_id, trial_id)."""
    client = MlflowClient(sweep["uri"])
    first = tracker(sweep, "trial_b")
    first.log_params({"lr": 0.1})
    for step in range(10):
        first.log_metrics({"loss": float(step)}, step)
    assert first.close("FAILED", timeout=60)

    second = tracker(sweep, "trial_b")  # no state: a retry before any checkpoint
    second.log_params({"lr": 0.1})  # same value again: not an error
    second.log_params({"lr": 0.3, "extra": 1})  # a changed value is refused, alone
    for step in range(5, 15):
        second.log_metrics({"loss": 100.0 + step}, step)
    assert second.close(timeout=60)
    assert len(second.errors) == 1 and "lr" in second.errors[0]
    assert second.run_id == first.run_id
    assert client.get_run(first.run_id).data.params == {"lr": "0.1", "extra": "1"}

    runs = trial_runs(sweep, "trial_b")
    assert [r.info.run_id for r in runs] == [first.run_id]
    assert client.get_run(first.run_id).info.status == "FINISHED"
    loss = history(client, first.run_id, "loss")
    assert sorted(loss) == list(range(15))
    assert loss[4] == 4.0 and loss[5] == 5.0  # steps already stored keep their first value
    assert loss[14] == 114.0


def test_stop_sends_everything_and_leaves_the_status_alone(sweep):
    """A stopped (not finished) trial: its points arrive, its run stays RUNNING for the next
    attempt or the driver to settle, and no sender thread outlives it in a reused process."""
    client = MlflowClient(sweep["uri"])
    t = tracker(sweep, "trial_stopped", flush_interval=3600)  # only stop() sends
    for step in range(12):
        t.log_metrics({"loss": float(step)}, step)
    assert t.stop(timeout=60)
    assert not t.sender_thread.is_alive()
    assert client.get_run(t.run_id).info.status == "RUNNING"
    assert sorted(history(client, t.run_id, "loss")) == list(range(12))
    t.log_metrics({"loss": 99.0}, 99)  # after stop: refused with a warning, not queued
    assert t.state()["points"] == []


CRASHING_TRIAL = textwrap.dedent(
    """
    import os, pickle, signal, sys
    from sweeps.tracking import TrialTracker

    uri, exp_id, sweep_id, parent, state_path, spool = sys.argv[1:]
    # A long flush interval: only explicit flushes send, so what is unsent is known.
    t = TrialTracker(uri, exp_id, sweep_id, "trial_c", parent, flush_interval=3600, spool_dir=spool)
    t.log_params({"lr": 0.1})
    for step in range(0, 20):
        t.log_metrics({"loss": float(step), "acc": step / 100}, step)
    assert t.flush(60)
    for step in range(20, 30):
        t.log_metrics({"loss": float(step), "acc": step / 100}, step)
    with open(state_path, "wb") as f:  # the checkpoint: 20..29 still unsent
        pickle.dump(t.state(), f)
    for step in range(30, 40):
        t.log_metrics({"loss": float(step), "acc": step / 100}, step)
    assert t.flush(60)  # 20..39 now stored
    for step in range(40, 45):
        t.log_metrics({"loss": float(step), "acc": step / 100}, step)
    os.kill(os.getpid(), signal.SIGKILL)  # the worker dies; 40..44 are lost with it
    """
)


def test_restore_from_state_no_duplicates(sweep, tmp_path):
    client = MlflowClient(sweep["uri"])
    state_path = tmp_path / "tracker.pkl"
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_TRIAL)
    args = [sweep["uri"], sweep["experiment_id"], sweep["sweep_id"], sweep["parent"]]
    proc = subprocess.run(
        [sys.executable, str(script), *args, str(state_path), str(sweep["spool"] / "trial_c")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr[-3000:]

    state = pickle.loads(state_path.read_bytes())
    assert state["run_id"] and len(state["points"]) == 20  # steps 20..29, two keys
    t = tracker(sweep, "trial_c", state=state)
    # The resumed trial re-trains from step 25 (values differ: new random batches).
    for step in range(25, 60):
        t.log_metrics({"loss": 1000.0 + step, "acc": 0.5}, step)
    assert t.close(timeout=60)
    assert t.run_id == state["run_id"]

    assert len(trial_runs(sweep, "trial_c")) == 1
    loss = history(client, t.run_id, "loss")
    assert sorted(loss) == list(range(60))
    assert all(loss[s] == float(s) for s in range(40))  # stored before the crash: kept
    assert all(loss[s] == 1000.0 + s for s in range(40, 60))  # lost in the crash: re-logged
    assert sorted(history(client, t.run_id, "acc")) == list(range(60))
    assert client.get_run(t.run_id).info.status == "FINISHED"


def test_outage(sweep, mlflow_server):
    """Stop the server mid-trial, keep logging, restart it: every point arrives exactly once.
    A second tracker created while the server is down creates its run when it is back."""
    client = MlflowClient(sweep["uri"])
    t = tracker(sweep, "trial_d")
    durations: list[float] = []
    step = 0

    def log_some(seconds: float) -> None:
        nonlocal step
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            t.log_metrics({"e_w": step * 0.1, "delta_loss_ratio": 0.01}, step)
            durations.append(time.perf_counter() - t0)
            step += 1
            time.sleep(0.01)

    log_some(1.0)
    assert t.flush(30)
    try:
        mlflow_server.stop()
        log_some(2.0)
        late = tracker(sweep, "trial_e")  # the server is down at trial start
        late.log_params({"lr": 0.2})
        late.log_metrics({"loss": 1.0}, 0)
        log_some(4.0)
        t0 = time.monotonic()
        assert not t.flush(10)  # gives up at the first failed attempt, not after 10 s
        assert time.monotonic() - t0 < 5
        assert t.last_error and late.run_id is None
        assert len(t.state()["points"]) > 0
        # Keep logging while the server restarts (~15 s here).
        logger = threading.Thread(target=log_some, args=(3.0,))
        logger.start()
        mlflow_server.start()
        logger.join()
    finally:
        if not mlflow_server.running:
            mlflow_server.start()
    log_some(1.0)
    assert t.close(timeout=60)
    assert late.close(timeout=60)

    assert max(durations) < 0.05, f"slowest log_metrics call: {max(durations) * 1000:.1f} ms"
    assert sorted(history(client, t.run_id, "e_w")) == list(range(step))
    assert sorted(history(client, t.run_id, "delta_loss_ratio")) == list(range(step))
    assert len(trial_runs(sweep, "trial_d")) == 1
    runs = trial_runs(sweep, "trial_e")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params == {"lr": "0.2"}
    assert sorted(history(client, late.run_id, "loss")) == [0]


def test_deleted_run_is_recreated(sweep):
    """A trial run deleted mid-trial (e.g. from the UI) is recreated; logging goes on."""
    client = MlflowClient(sweep["uri"])
    t = tracker(sweep, "trial_h")
    for step in range(10):
        t.log_metrics({"loss": float(step)}, step)
    assert t.flush(30)
    old = t.run_id
    client.delete_run(old)
    for step in range(10, 20):
        t.log_metrics({"loss": float(step)}, step)
    assert t.close(timeout=60)
    assert t.run_id != old
    assert sorted(history(client, t.run_id, "loss")) == list(range(10, 20))
    assert [r.info.run_id for r in trial_runs(sweep, "trial_h")] == [t.run_id]


def test_back_pressure_and_close_timeout_keep_data(sweep):
    """With no server: a full buffer blocks log_metrics instead of dropping; close() times out
    and leaves the data spooled, and the next tracker of the trial delivers it."""
    dead = f"http://127.0.0.1:{free_port()}"
    t = tracker(sweep, "trial_f", uri=dead, max_buffer=100)
    for step in range(50):
        t.log_metrics({"a": 1.0, "b": 2.0}, step)  # 100 points: the buffer is full
    blocked = threading.Thread(target=t.log_metrics, args=({"a": 1.0}, 50))
    blocked.start()
    blocked.join(1.0)
    assert blocked.is_alive()  # waits for room rather than dropping
    assert not t.close(timeout=1.0)
    blocked.join(5.0)
    assert not blocked.is_alive()
    assert (sweep["spool"] / "trial_f" / "pending.pkl").is_file()

    again = tracker(sweep, "trial_f")  # same trial, live server: picks up the spooled data
    assert again.close(timeout=60)
    assert not (sweep["spool"] / "trial_f" / "pending.pkl").exists()
    client = MlflowClient(sweep["uri"])
    assert sorted(history(client, again.run_id, "a")) == list(range(50))
    assert sorted(history(client, again.run_id, "b")) == list(range(50))


def test_log_metrics_is_cheap(sweep):
    """The training thread only appends under a lock: a call costs microseconds, with the
    sender busy in the background."""
    t = tracker(sweep, "trial_g", flush_points=2000)
    n = 2000
    metrics = {f"k{i}": 0.1 * i for i in range(6)}
    t0 = time.perf_counter()
    for step in range(n):
        t.log_metrics(metrics, step)
    per_call = (time.perf_counter() - t0) / n
    assert t.close(timeout=120)
    assert per_call < 500e-6, f"{per_call * 1e6:.0f} us per log_metrics call"
    assert len(MlflowClient(sweep["uri"]).get_metric_history(t.run_id, "k5")) == n


@pytest.mark.parametrize("writer", ["direct", "mlflow"])
def test_embedded_sqlite_store(tmp_path, monkeypatch, writer):
    """The default local mode: no server, the trial writes the SQLite file itself (directly,
    or through MLflow when the database lacks a column the direct writer expects)."""
    if writer == "mlflow":
        import sweeps.sqlite_metrics as sm

        monkeypatch.setitem(sm._COLUMNS, "metrics", (*sm._COLUMNS["metrics"], "no_such_column"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert check_tracking_uri(uri) is None
    exp_id = ensure_experiment(uri, "local")
    parent = start_sweep_run(uri, exp_id, "sw", {"name": "local"})
    sweep = {
        "uri": uri,
        "experiment_id": exp_id,
        "sweep_id": "sw",
        "parent": parent,
        "spool": tmp_path / "spool",
    }
    t = tracker(sweep, "t1")
    t.log_params({"lr": 0.1})
    (tmp_path / "model.txt").write_text("weights")
    t.log_artifact(str(tmp_path / "model.txt"), "export")
    for step in range(20):
        t.log_metrics({"loss": float(step)}, step)
    state = t.state()
    assert t.close(timeout=60)
    again = tracker(sweep, "t1", state=state)  # restored: re-sends what state() held
    for step in range(10, 30):
        again.log_metrics({"loss": -1.0}, step)
    assert again.close(timeout=60)
    client = MlflowClient(uri)
    loss = history(client, t.run_id, "loss")
    assert sorted(loss) == list(range(30)) and loss[19] == 19.0 and loss[20] == -1.0
    assert (t.transport.direct is False) == (writer == "mlflow")  # which path the points took
    assert [r.info.run_id for r in find_trial_runs(uri, exp_id, "sw")] == [t.run_id]
    # Artifacts live beside the database, not in the cwd of whoever created the experiment.
    assert client.get_experiment(exp_id).artifact_location.startswith(
        (tmp_path / "mlartifacts").as_uri()
    )
    assert (tmp_path / "mlartifacts" / "local" / parent / "artifacts" / "spec.yaml").is_file()
    assert [f.path for f in client.list_artifacts(t.run_id, "export")] == ["export/model.txt"]
