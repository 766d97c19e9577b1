"""Sweeps end to end on a real Ray runtime and a real `mlflow server` on 127.0.0.1.

A 4-trial sweep lands in MLflow as 1 parent + 4 child runs; a trial whose worker is killed
resumes from its checkpoint into its own run; a tracking server that is down for 30 s mid-sweep
loses nothing; an interrupted driver is completed by `compsweep resume`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray
from mlflow import MlflowClient
from sweep_helpers import assert_complete_series, sweep_runs, tiny_spec

from sweeps.runner import SweepRecord, run_sweep
from sweeps.spec import parse_spec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_four_trial_sweep_lands_in_mlflow(local_ray, mlflow_server, tmp_path, capsys):
    spec = parse_spec(tiny_spec("e2e", mlflow_server.uri, str(tmp_path / "results")))
    record = run_sweep(spec)

    parents, children = sweep_runs(mlflow_server.uri, "e2e", record.sweep_id)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    client = MlflowClient(mlflow_server.uri)
    assert "spec.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["compsweep.sweep_id"] == record.sweep_id
        assert {"knob.pnr", "knob.rate", "compression.method", "optim.lr"} <= set(run.data.params)
        assert {
            "accuracy",
            "compression_ratio",
            "params",
            "macs",
            "mean_e_w",
            "mean_e_w_per_pnr",
        } <= set(run.data.metrics)
        assert_complete_series(mlflow_server.uri, run)
        assert {"config.yaml", "compressed_model.pt"} <= {
            a.path for a in client.list_artifacts(run.info.run_id)
        }
    text = capsys.readouterr().out
    assert "4/4 done" in text and "best trials by accuracy" in text


def _kill_a_trial_worker_after_checkpoint(
    storage: Path, killed: list[int], stop: threading.Event
) -> None:
    """Wait until some trial has saved a checkpoint, then SIGKILL a trial worker process."""
    while not stop.is_set():
        if any(storage.glob("*/*/checkpoint_*")):
            for p in psutil.process_iter(["pid", "cmdline"]):
                if "ray::ImplicitFunc" in " ".join(p.info["cmdline"] or []):
                    os.kill(p.info["pid"], signal.SIGKILL)
                    killed.append(p.info["pid"])
                    return
        time.sleep(0.1)


def test_killed_worker_resumes_into_its_own_run(local_ray, mlflow_server, tmp_path, capsys):
    storage = tmp_path / "results"
    spec = parse_spec(tiny_spec("kill", mlflow_server.uri, str(storage), steps=400, n_train=256))
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(
        target=_kill_a_trial_worker_after_checkpoint, args=(storage, killed, stop)
    )
    killer.start()
    try:
        record = run_sweep(spec)
    finally:
        stop.set()
        killer.join()
    assert killed, "no trial worker was killed: the trials finished too fast"
    assert "retrying from its last checkpoint" in capsys.readouterr().out
    parents, children = sweep_runs(mlflow_server.uri, "kill", record.sweep_id)
    assert len(parents) == 1 and len(children) == 4  # no duplicate, no orphan run
    for run in children:
        assert run.info.status == "FINISHED"
        assert_complete_series(mlflow_server.uri, run)


def test_tracking_server_down_for_30s_loses_nothing(local_ray, mlflow_server, tmp_path):
    storage = tmp_path / "results"
    spec = parse_spec(tiny_spec("outage", mlflow_server.uri, str(storage), steps=600, n_train=256))
    result: dict = {}

    def sweep():
        result["record"] = run_sweep(spec)

    t = threading.Thread(target=sweep)
    t.start()
    try:
        deadline = time.monotonic() + 120
        while not any(storage.glob("*/*/checkpoint_*")):  # trials are training
            assert time.monotonic() < deadline and t.is_alive(), "no trial started"
            time.sleep(0.2)
        mlflow_server.stop()
        time.sleep(30)
    finally:
        mlflow_server.start()
    t.join(timeout=600)
    assert not t.is_alive()
    parents, children = sweep_runs(mlflow_server.uri, "outage", result["record"].sweep_id)
    assert len(parents) == 1 and len(children) == 4
    for run in children:
        assert run.info.status == "FINISHED"
        assert_complete_series(mlflow_server.uri, run)


def test_interrupted_driver_is_completed_by_resume(mlflow_server, tmp_path):
    """A real `compsweep run` process gets Ctrl-C after its first finished trial; `compsweep
    resume` then finishes the sweep, every trial exactly once in MLflow."""
    import yaml

    spec_path = tmp_path / "spec.yaml"
    storage = tmp_path / "results"
    spec_path.write_text(
        yaml.safe_dump(
            tiny_spec(
                "resume",
                mlflow_server.uri,
                str(storage),
                trials=4,
                concurrent=1,
                steps=300,
                n_train=256,
            )
        )
    )
    exe = str(Path(sys.executable).parent / "compsweep")
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.Popen(
        [exe, "run", str(spec_path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = MlflowClient(mlflow_server.uri)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, (
                "driver ended before any trial finished"
            )
            exp = client.get_experiment_by_name("resume")
            if exp and client.search_runs(
                [exp.experiment_id],
                "attributes.status = 'FINISHED' and tags.`compsweep.role` = 'trial'",
            ):
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "compsweep resume" in output, output[-3000:]
    (sweep_dir,) = storage.iterdir()
    _, children = sweep_runs(mlflow_server.uri, "resume")
    assert sum(r.info.status == "FINISHED" for r in children) < 4

    resumed = subprocess.run(
        [exe, "resume", str(sweep_dir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    record = SweepRecord.load(sweep_dir)
    parents, children = sweep_runs(mlflow_server.uri, "resume", record.sweep_id)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4
    for run in children:
        assert run.info.status == "FINISHED"
        assert_complete_series(mlflow_server.uri, run)
