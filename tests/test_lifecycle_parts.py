"""The pieces of a sweep's lifecycle that need no Ray: the driver lock, credentials in URIs,
outcome counts and exit codes, and what `submit` refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from sweeps.lock import LOCK_FILE, STALE_AFTER_S, SweepBusy, SweepLock, holder_alive
from sweeps.outcomes import Outcome, run_state
from sweeps.secrets import move_credentials_to_env, redact, split_credentials
from sweeps.spec_checks import parse_spec
from sweeps.submit import submit_problems


def test_a_second_driver_is_refused_with_the_holders_name(tmp_path):
    with SweepLock(tmp_path, "compsweep run") as first:
        assert holder_alive(tmp_path)
        # Another process: flock is per open file description, so a child is a true second driver.
        code = (
            "import sys; from sweeps.lock import SweepLock, SweepBusy\n"
            f"try: SweepLock({str(tmp_path)!r}, 'compsweep resume').acquire()\n"
            "except SweepBusy as e: print(e); sys.exit(3)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
        assert out.returncode == 3, out.stderr
        assert f"pid {os.getpid()}" in out.stdout and "compsweep run" in out.stdout
        assert first.taken_over is None
    assert not holder_alive(tmp_path)
    # Released: the next driver takes it without a note.
    with SweepLock(tmp_path) as again:
        assert again.taken_over is None


def test_a_dead_holder_is_taken_over_with_a_note(tmp_path):
    # A driver that died without releasing: its flock is gone, its record says "not released".
    proc = subprocess.run(
        [sys.executable, "-c", f"from sweeps.lock import SweepLock; SweepLock({str(tmp_path)!r}, 'compsweep run').acquire()"],
        env={**os.environ, "PYTHONPATH": os.getcwd()}, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not json.loads((tmp_path / LOCK_FILE).read_text())["released"]
    with SweepLock(tmp_path, "compsweep resume") as lock:
        assert lock.taken_over is not None and lock.taken_over.command == "compsweep run"


def test_a_fresh_holder_on_another_host_is_respected_a_stale_one_is_not(tmp_path):
    record = {"host": "elsewhere", "pid": 1, "since": time.time(), "heartbeat": time.time(),
              "command": "compsweep run", "released": False}  # fmt: skip
    (tmp_path / LOCK_FILE).write_text(json.dumps(record))
    with pytest.raises(SweepBusy, match="host elsewhere"):
        SweepLock(tmp_path).acquire()
    record["heartbeat"] = time.time() - STALE_AFTER_S - 1
    (tmp_path / LOCK_FILE).write_text(json.dumps(record))
    with SweepLock(tmp_path) as lock:
        assert lock.taken_over.host == "elsewhere"


def test_credentials_leave_the_uri():
    assert split_credentials("http://bob:s3cr%40t@mlflow:5000/x") == (
        "http://mlflow:5000/x",
        "bob",
        "s3cr@t",
    )
    assert split_credentials("http://mlflow:5000") == ("http://mlflow:5000", None, None)
    assert split_credentials(None) == (None, None, None)
    assert (
        redact("see http://bob:pw@h:1/api and https://a:b@c")
        == "see http://bob:***@h:1/api and https://a:***@c"
    )


def test_move_credentials_to_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert move_credentials_to_env("http://u:p@127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "u"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p"


def _run(status: str, **tags: str):
    return SimpleNamespace(info=SimpleNamespace(status=status), data=SimpleNamespace(tags=tags))


def test_outcomes_count_what_happened_and_exit_codes_say_it():
    assert run_state("FAILED", {"compsweep.status": "diverged"}) == "diverged"
    assert run_state("KILLED", {"compsweep.status": "killed"}) == "killed"
    assert run_state("KILLED", {}) == "stopped"
    ok = Outcome.from_runs(
        [_run("FINISHED"), _run("KILLED", **{"compsweep.status": "stopped"})], False, 2
    )
    assert ok.exit_code() == 0 and ok.parent_status() == "FINISHED"
    assert ok.summary() == "2/2 trials: 1 finished, 1 stopped"
    some = Outcome.from_runs([_run("FINISHED"), _run("FAILED")], False, 2)
    assert some.exit_code() == 1 and some.parent_status() == "FINISHED"
    none = Outcome.from_runs(
        [_run("FAILED"), _run("FAILED", **{"compsweep.status": "diverged"})], False, 2
    )
    assert none.exit_code() == 1 and none.parent_status() == "FAILED"
    assert none.summary() == "2/2 trials: 1 failed, 1 diverged"
    stopped = Outcome.from_runs(
        [_run("FINISHED"), _run("KILLED", **{"compsweep.status": "killed"})], True, 4
    )
    assert stopped.exit_code() == 130 and stopped.parent_status() == "KILLED"
    assert stopped.metrics()["trials_killed"] == 1.0


def _tiny(uri: str | None, storage: str) -> dict:
    return {
        "name": "sub",
        "train": {"data": {"name": "synthetic", "batch_size": 8,
                           "options": {"n_train": 32, "n_test": 16}},
                  "model": {"name": "small_cnn"}, "run": {"steps": 4}},
        "space": {"name": "prune", "overrides": {"pnr": 2}},
        "storage": {"path": storage},
        "tracking": {"uri": uri},
    }  # fmt: skip


def test_submit_refuses_what_the_job_folder_would_swallow():
    remote = "http://10.1.2.3:8265"
    spec = parse_spec(_tiny(None, "compsweep_results"), check_tracking=False)
    problems = submit_problems(spec, remote)
    assert any(p.startswith("tracking.uri: none given") for p in problems)
    assert any(p.startswith("storage.path: 'compsweep_results' is relative") for p in problems)
    spec = parse_spec(_tiny("sqlite:////srv/mlflow.db", "/srv/results"), check_tracking=False)
    assert [p[:13] for p in submit_problems(spec, remote)] == ["tracking.uri:"]
    assert submit_problems(spec, "http://127.0.0.1:8265") == []  # a cluster on this machine
    spec = parse_spec(_tiny("http://mlflow:5000", "/srv/results"), check_tracking=False)
    assert submit_problems(spec, remote) == []


def test_a_restored_trial_whose_checkpoint_was_deleted_continues_from_its_newest_one(tmp_path):
    """Tune deletes old checkpoints at once but saves its state now and then: a state that names
    a deleted checkpoint is pointed at the newest one on disk (a stand-in for Tune's trial)."""
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult

    from sweeps.settling import repoint_stale_checkpoint

    trial_dir = tmp_path / "train_trial_abc"
    for i in (6, 7):
        (trial_dir / f"checkpoint_{i:06d}").mkdir(parents=True)
    stale = _TrainingResult(
        checkpoint=Checkpoint(str(trial_dir / "checkpoint_000005")), metrics={"step": 5}
    )
    manager = SimpleNamespace(_checkpoint_results=[stale], _latest_checkpoint_result=stale,
                              latest_checkpoint_result=stale)  # fmt: skip
    trial = SimpleNamespace(
        checkpoint=stale.checkpoint,
        storage=SimpleNamespace(trial_fs_path=str(trial_dir), current_checkpoint_index=6),
        run_metadata=SimpleNamespace(checkpoint_manager=manager, invalidate_cache=lambda: None),
    )
    assert repoint_stale_checkpoint(trial)
    assert manager._latest_checkpoint_result.checkpoint.path.endswith("checkpoint_000007")
    assert [r.checkpoint.path[-17:] for r in manager._checkpoint_results] == ["checkpoint_000007"]
    assert trial.storage.current_checkpoint_index == 8  # never over an existing checkpoint
    # A checkpoint that exists is left alone.
    trial.checkpoint = manager._latest_checkpoint_result.checkpoint
    assert not repoint_stale_checkpoint(trial)


# error.txt files Ray 2.60 wrote for failed trials (paths shortened): an exception raised in the
# trainable, a trial worker killed with SIGKILL (a compsweep sweep), a worker killed by Ray's
# memory monitor.
RAY_ERRORS = Path(__file__).parent / "ray_errors"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("raised.txt", "ValueError: cannot read the data at /nonexistent"),
        ("worker_killed.txt",
         "the trial's worker process died (killed by a signal or out of memory): Worker "
         "unexpectedly exits with a connection error code 2. End of file."),
        ("memory_monitor.txt",
         "the trial's worker was killed by Ray for running low on memory: Memory usage "
         "2058412032B exceeded threshold of 505530016B (2.0% of 25276502016B limit)"),
    ],
)  # fmt: skip
def test_a_failed_trials_reason_says_what_happened(name, reason, tmp_path):
    from sweeps.settling import error_reason

    text = (RAY_ERRORS / name).read_text()
    (tmp_path / "error.txt").write_text(text)
    assert error_reason(SimpleNamespace(error_file=str(tmp_path / "error.txt"))) == reason
    assert "ip:" not in reason


def test_the_exception_is_the_one_after_the_last_frame_even_over_several_lines():
    from sweeps.settling import reason_from_error_text

    chained = (
        "Failure # 1 (occurred at 2026-12-02_02-36-56)\n"
        "\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=5095, ip=127.0.0.1, repr=trainable)\n"
        '  File "/srv/trainers/data.py", line 3, in load\n'
        "    open(path)\n"
        "FileNotFoundError: [Errno 2] No such file or directory: '/data'\n"
        "\n"
        "The above exception was the direct cause of the following exception:\n"
        "\n"
        '  File "/srv/sweeps/trial.py", line 9, in run\n'
        "    raise TrackingUnavailable(msg) from e\n"
        "    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        "sweeps.tracking.TrackingUnavailable: cannot reach http://mlflow:5000\n"
        "  retried: 3 times\n"
        "  last: ConnectionRefusedError: [Errno 111]\n"
    )
    assert reason_from_error_text(chained) == "TrackingUnavailable: cannot reach http://mlflow:5000"
    node = "The actor died unexpectedly before finishing this task.\n\tip: 10.0.0.7\n" \
        "The actor is dead because its node has died. Node Id: ab12\n"  # fmt: skip
    assert reason_from_error_text(node) == "the node running the trial's worker died"
    assert reason_from_error_text("") == "unknown error (see the trial's log)"
