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

from sweeps.records import SweepRecord
from sweeps.runner import run_sweep
from sweeps.spec_checks import parse_spec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
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
            "val_accuracy",
            "test_accuracy",
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
    # Trials ran in reused worker processes (reuse_actors) and still landed complete above.
    assert len({r.data.tags["compsweep.worker_pid"] for r in children}) < 4
    text = capsys.readouterr().out
    assert "4/4 done" in text and "4/4 trials: 4 finished" in text
    assert "best finished trials by val_accuracy" in text
    assert record.outcome.exit_code() == 0


def _kill_a_trial_worker_after_checkpoint(
    storage: Path, killed: list[int], stop: threading.Event
) -> None:
    """Wait until some trial has saved a checkpoint, then SIGKILL a trial worker process of
    this test's own Ray (a descendant of this process: other Ray clusters on the machine are
    none of its business)."""
    while not stop.is_set():
        if any(storage.glob("*/*/checkpoint_*")):
            for p in psutil.Process().children(recursive=True):
                try:
                    cmdline = " ".join(p.cmdline())
                except psutil.Error:  # ended meanwhile
                    continue
                if "ray::ImplicitFunc" in cmdline:
                    os.kill(p.pid, signal.SIGKILL)
                    killed.append(p.pid)
                    return
        time.sleep(0.1)


def test_a_sweep_whose_ray_fails_to_start_leaves_no_running_parent(
    mlflow_server, tmp_path, monkeypatch
):
    # The parent run is opened once Ray is up and can run a trial: a Ray that cannot start
    # leaves no parent run behind (and the sweep's lock is released).
    def no_ray(address=None, **kwargs):
        raise ConnectionError(f"no Ray cluster at {address}")

    monkeypatch.setattr("sweeps.runner.connect_ray", no_ray)
    spec = parse_spec(tiny_spec("no-ray", mlflow_server.uri, str(tmp_path / "results")))
    with pytest.raises(ConnectionError, match="no Ray cluster at 127.0.0.1:1"):
        run_sweep(spec, address="127.0.0.1:1")
    parents, children = sweep_runs(mlflow_server.uri, "no-ray")
    assert parents == [] and children == []
    from sweeps.lock import holder_alive

    (folder,) = (tmp_path / "results").iterdir()
    assert not holder_alive(folder)


def _run_killing_a_worker(spec, storage):
    """Run ``spec`` while a thread SIGKILLs one trial's worker after its first checkpoint;
    (the sweep's record, the pids killed)."""
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
    return record, killed


def test_killed_worker_resumes_into_its_own_run(local_ray, mlflow_server, tmp_path, capsys):
    storage = tmp_path / "results"
    spec = parse_spec(tiny_spec("kill", mlflow_server.uri, str(storage), steps=400, n_train=256))
    record, killed = _run_killing_a_worker(spec, storage)
    assert killed, "no trial worker was killed: the trials finished too fast"
    assert "retrying from its last checkpoint" in capsys.readouterr().out
    parents, children = sweep_runs(mlflow_server.uri, "kill", record.sweep_id)
    assert len(parents) == 1 and len(children) == 4  # no duplicate, no orphan run
    for run in children:
        assert run.info.status == "FINISHED"
        assert_complete_series(mlflow_server.uri, run)


def test_a_trial_whose_worker_dies_fails_saying_so(local_ray, mlflow_server, tmp_path, capsys):
    """With no retries, a killed trial worker fails its trial, and the reason (terminal and
    MLflow) says the worker died, not a field of Ray's report such as ``ip: 127.0.0.1``."""
    storage = tmp_path / "results"
    data = tiny_spec("kill-once", mlflow_server.uri, str(storage), trials=2, steps=400, n_train=256)
    data["failure"] = {"max_failures": 0}
    record, killed = _run_killing_a_worker(parse_spec(data), storage)
    assert killed, "no trial worker was killed: the trials finished too fast"
    out = capsys.readouterr().out
    assert record.outcome.exit_code() == 1
    died = "the trial's worker process died (killed by a signal or out of memory)"
    assert f"FAILED: {died}" in out, out[-3000:]
    _, children = sweep_runs(mlflow_server.uri, "kill-once", record.sweep_id)
    failed = [r for r in children if r.info.status == "FAILED"]
    assert len(failed) == 1, [r.info.status for r in children]
    tags = failed[0].data.tags
    assert tags["compsweep.status"] == "failed"
    assert tags["compsweep.status_reason"].startswith(died), tags["compsweep.status_reason"]


def test_tracking_server_down_for_30s_loses_nothing(local_ray, mlflow_server, tmp_path, capsys):
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
    # The driver said so, once, and said when it was over.
    out = capsys.readouterr().out
    assert out.count("is unreachable: trials keep training and buffer their points") == 1, out
    assert "is reachable again after" in out
    for run in children:
        assert run.info.status == "FINISHED"
        assert_complete_series(mlflow_server.uri, run)


def test_asha_stops_trials_and_their_runs_are_settled(local_ray, mlflow_server, tmp_path):
    """ASHA stops the hopeless trials (a learning rate of 1e-5 against 0.1 on digits): their
    runs end KILLED with every point they reported, the others FINISHED, none left RUNNING."""
    spec_dict = tiny_spec("asha", mlflow_server.uri, str(tmp_path / "results"), trials=6)
    spec_dict["train"]["data"] = {"name": "digits", "batch_size": 32, "limit_train": 256}
    spec_dict["train"]["run"] = {"epochs": 6, "eval_every": 1.0, "device": "cpu"}
    spec_dict["space"]["overrides"] = {"pnr": {"low": 2, "high": 4}, "lr": {"choices": [0.1, 1e-5]}}
    spec_dict["scheduler"] = {"name": "asha", "grace_period": 1, "reduction_factor": 2}
    record = run_sweep(parse_spec(spec_dict))

    parents, children = sweep_runs(mlflow_server.uri, "asha", record.sweep_id)
    assert len(parents) == 1 and len(children) == 6
    statuses = sorted(r.info.status for r in children)
    assert set(statuses) <= {"FINISHED", "KILLED"} and "KILLED" in statuses, statuses
    client = MlflowClient(mlflow_server.uri)
    for run in children:
        acc = client.get_metric_history(run.info.run_id, "val_accuracy")
        steps = [m.step for m in acc]
        assert acc and len(steps) == len(set(steps)), steps  # each evaluation once
        if run.info.status == "KILLED":
            assert "compression_ratio" not in run.data.metrics  # stopped before its final metrics
        else:
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
    assert proc.returncode == 130  # interrupted, resumable
    (sweep_dir,) = storage.iterdir()
    parents, children = sweep_runs(mlflow_server.uri, "resume")
    assert sum(r.info.status == "FINISHED" for r in children) < 4
    # Nothing is left RUNNING: the interrupted trials' runs are KILLED, and say why.
    assert [p.info.status for p in parents] == ["KILLED"]
    for run in children:
        assert run.info.status in ("FINISHED", "KILLED")
        if run.info.status == "KILLED":
            assert run.data.tags["compsweep.status_reason"] == "interrupted (Ctrl-C)"

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


def test_analyze_best_train_register_on_a_digits_sweep(
    local_ray, mlflow_server, tmp_path, capsys, monkeypatch
):
    """After a real sweep on digits: analyze → best → final train → registry → load and predict."""
    import mlflow.pytorch
    import torch
    import yaml

    from sweeps.cli import main

    data = tiny_spec("digits-e2e", mlflow_server.uri, str(tmp_path / "results"), trials=4)
    data["train"]["data"] = {"name": "digits", "batch_size": 32}
    data["train"]["run"] = {"epochs": 2, "eval_every": 1.0, "device": "cpu"}
    data["space"]["overrides"] = {
        "pnr": {"choices": [1, 10, 40]},
        "rate": {"choices": [0.5, 0.8]},
        "lr": 0.05,
    }
    record = run_sweep(parse_spec(data))
    capsys.readouterr()

    assert main(["analyze", record.path, "--output", str(tmp_path / "analysis")]) == 0
    out = capsys.readouterr().out
    client = MlflowClient(mlflow_server.uri)
    # Trials count once they report validation accuracy; one without it is listed as skipped.
    _, children = sweep_runs(mlflow_server.uri, "digits-e2e", record.sweep_id)
    with_val = sum("val_accuracy" in r.data.metrics for r in children)
    assert f"4 trial run(s) in MLflow; {with_val} analyzed, {4 - with_val} skipped" in out
    parent = client.get_run(record.parent_run_id)
    # 4 trials over 2 rates x 3 pNR: whether a rate has an interior optimum depends on the
    # draw; e_opt is logged exactly when some group supports it.
    groups = parent.data.metrics["e_opt_groups"]
    assert ("e_opt" in parent.data.metrics) == (groups > 0)
    assert ("e_opt = " in out) == (groups > 0) and ("cannot support" in out) == (groups == 0)
    logged = {a.path for a in client.list_artifacts(record.parent_run_id, "analysis")}
    assert {"analysis/report.txt", "analysis/trials.csv", "analysis/groups.csv",
            "analysis/accuracy_vs_e_w_per_pnr.png", "analysis/accuracy_over_pnr.png"} <= logged  # fmt: skip
    assert ("analysis/pareto_front.png" in logged) == (with_val > 0)  # every rate compresses
    for png in (tmp_path / "analysis").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    best = tmp_path / "best.yaml"
    assert main(["best", record.path, "-o", str(best), "--top", "2"]) == 0
    doc = yaml.safe_load(best.read_text())
    assert len(doc["configs"]) == 2
    accs = [c["provenance"]["metrics"]["val_accuracy"] for c in doc["configs"]]
    assert accs == sorted(accs, reverse=True)
    assert doc["configs"][0]["provenance"]["sweep_id"] == record.sweep_id

    # Registered under its documented name, <sweep name>-<method> (`--register` is optional).
    assert main(["train", str(best), "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "final model: test_accuracy" in out and "models:/digits-e2e-prune/1" in out
    version = client.get_model_version("digits-e2e-prune", "1")
    assert {"test_accuracy", "compression_ratio_weights", "compression_ratio_bytes", "macs"} <= set(
        version.tags
    )
    assert float(version.tags["source_val_accuracy"]) == accs[0]  # what it was selected on
    final_run = client.get_run(version.run_id)
    assert final_run.data.tags["compsweep.role"] == "final"
    # The MACs printed are the ones logged and tagged; the exported model's count is labelled.
    fm = final_run.data.metrics
    assert float(version.tags["macs"]) == fm["macs"]
    assert f"{fm['macs']:.0f} of {fm['macs_dense']:.0f} MACs per sample, " in out
    assert f"{fm['exported_macs']:.0f} as the exported model computes them" in out
    # selection is over: the final model trains on train + validation and reports test only
    assert final_run.data.params["data.val_fraction"] == "0.0"
    assert (
        "test_accuracy" in final_run.data.metrics and "val_accuracy" not in final_run.data.metrics
    )
    assert (
        final_run.data.tags["compsweep.source_run_id"] == doc["configs"][0]["provenance"]["run_id"]
    )

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    model = mlflow.pytorch.load_model("models:/digits-e2e-prune/1")
    from trainers.data import load_dataset
    from trainers.inputs import to_raw

    data = load_dataset("digits", batch_size=32, test_batch_size=400)
    x, y = next(iter(data.test.epoch(0, 0)))
    with torch.no_grad():  # the registered model takes raw digits (0-16) and standardizes them
        predicted = model(torch.from_numpy(to_raw(x, data.info.raw))).argmax(1)
    acc = (predicted == y).float().mean().item()
    assert acc == pytest.approx(float(version.tags["test_accuracy"]), abs=1e-6)


def test_funnel_sweep_over_c_schedules(local_ray, mlflow_server, tmp_path):
    """A small funnel sweep (gated Tucker-2, C-schedule searched) end to end: every trial runs
    its four phases and logs the fine-tuned compressed model and the per-phase metrics."""
    from trainers.export import load_exported

    data = tiny_spec("funnel-e2e", mlflow_server.uri, str(tmp_path / "results"), trials=3, steps=24)
    data["train"]["compression"]["params"] = {"finetune_epochs": 1.0}
    data["space"] = {
        "name": "funnel",
        "overrides": {
            "c_schedule": {"choices": ["constant", "linear", "exp"]},
            "c0": {"low": 0.5, "high": 2.0},
            "c_final": 0.1,
            "c_gamma": 0.5,
            "c_every": 1,
            "lam": 0.05,
            "threshold": 0.3,
            "penalty": "funnel",
            "lr": 0.05,
        },
    }
    data["search"] = {"sampler": "random"}
    record = run_sweep(parse_spec(data))

    parents, children = sweep_runs(mlflow_server.uri, "funnel-e2e", record.sweep_id)
    assert len(parents) == 1 and len(children) == 3
    client = MlflowClient(mlflow_server.uri)
    schedules = set()
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.params["compression.method"] == "funnel"
        schedules.add(run.data.params["knob.c_schedule"])
        m = run.data.metrics
        for phase in ("decompose", "train", "compress", "finetune"):
            names = {f"{phase}_val_accuracy", f"{phase}_test_accuracy", f"{phase}_params"}
            assert names | {f"{phase}_macs"} <= set(m), phase
        assert 0 <= m["compress_pruning_ratio"] <= 1
        assert m["val_accuracy"] == m["finetune_val_accuracy"]
        # one epoch of fine-tuning: 115 training samples after the hold-out, 7 batches of 16
        assert m["params"] == m["compress_params"] and m["steps"] == 24 + 7
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) > 1
        assert client.list_artifacts(run.info.run_id, "phases")  # gate histograms per layer
        path = client.download_artifacts(run.info.run_id, "compressed_model.pt", str(tmp_path))
        model = load_exported(path)
        assert sum(p.numel() for p in model.parameters()) == m["params"]
    assert len(schedules) >= 2


def test_a_diverging_trial_fails_with_its_reason_and_the_sweep_goes_on(
    local_ray, mlflow_server, tmp_path, capsys
):
    """One learning rate of 1e6: those trials end FAILED, tagged diverged with the step, without
    a retry; the others finish; the summary counts them failed; best and analyze skip them."""
    import yaml

    from sweeps.cli import main

    data = tiny_spec("diverge", mlflow_server.uri, str(tmp_path / "results"), trials=4, steps=40)
    data["space"]["overrides"] = {"pnr": {"choices": [2, 4]}, "lr": {"choices": [0.05, 1e6]}}
    data["search"] = {"sampler": "random"}
    data["seed"] = 1
    record = run_sweep(parse_spec(data))
    text = capsys.readouterr().out

    parents, children = sweep_runs(mlflow_server.uri, "diverge", record.sweep_id)
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].info.status == "FINISHED"  # the sweep itself went on to the end
    diverged = [r for r in children if r.data.params["knob.lr"] == "1000000.0"]
    healthy = [r for r in children if r.data.params["knob.lr"] == "0.05"]
    assert diverged and healthy, "the seeded random sampler should draw both learning rates"
    client = MlflowClient(mlflow_server.uri)
    for r in diverged:
        assert r.info.status == "FAILED"
        assert r.data.tags["compsweep.status"] == "diverged"
        reason = r.data.tags["compsweep.status_reason"]
        assert reason.startswith("non-finite") and "lower optim.lr" in reason
        step = int(reason.split(" at step ")[1].split(";")[0])
        assert 0 < step < 40
        assert f"trial {r.data.tags['compsweep.trial_id']} DIVERGED: {reason}" in text
        assert "compression_ratio" not in r.data.metrics  # no final metrics
        # tried once, not retried from a checkpoint: one point per logged step
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "e_w")]
        assert len(steps) == len(set(steps)) and all(s <= step for s in steps)
    for r in healthy:
        assert r.info.status == "FINISHED" and "compsweep.status" not in r.data.tags
        assert_complete_series(mlflow_server.uri, r)
    n = len(diverged)
    assert f"4/4 trials: {4 - n} finished, {n} diverged" in text
    assert "retrying" not in text

    best = tmp_path / "best.yaml"
    assert main(["best", record.path, "-o", str(best), "--top", "4"]) == 0
    out = capsys.readouterr().out
    chosen = {c["provenance"]["run_id"] for c in yaml.safe_load(best.read_text())["configs"]}
    assert chosen == {r.info.run_id for r in healthy}
    for r in diverged:
        trial_id = r.data.tags["compsweep.trial_id"]
        assert f"skipped trial {trial_id} diverged: " in out

    assert main(["analyze", record.path]) == 0
    out = capsys.readouterr().out
    assert f"4 trial run(s) in MLflow; {4 - n} analyzed, {n} skipped" in out
    for r in diverged:
        trial_id, reason = r.data.tags["compsweep.trial_id"], r.data.tags["compsweep.status_reason"]
        assert f"trial {trial_id} (run {r.info.run_id}): diverged: {reason}" in out
