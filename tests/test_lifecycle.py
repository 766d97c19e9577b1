"""A sweep as a service, on a real local Ray and a real `mlflow server` (no mocks of either):
one driver per sweep, `stop` and `resume`, honest outcomes and exit codes when the storage goes
read-only, a Ray of its own on loopback only, credentials nowhere, concurrent first use of an
embedded store, impossible resources refused before anything starts.

Drivers run as real `compsweep` processes, each with its own short Ray temp dir.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from mlflow import MlflowClient
from sweep_helpers import assert_complete_series, sweep_runs, tiny_spec

from sweeps.eopt_sampler import E_W_ATTR, PHASE_ATTR, SLOT_ATTR
from sweeps.records import SweepRecord

pytestmark = pytest.mark.integration

COMPSWEEP = str(Path(sys.executable).parent / "compsweep")


@pytest.fixture
def ray_tmp():
    """A short Ray temp dir of the test's own (Unix socket paths are limited to ~107 chars)."""
    d = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _env(ray_tmp: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_"))}
    return {**env, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0", **extra}


def _write_spec(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([COMPSWEEP, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _wait_for(predicate, proc: subprocess.Popen | None, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"driver ended before {what}:\n{proc.stdout.read()[-4000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _finished_trials(uri: str, experiment: str) -> int:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    return len(client.search_runs([exp.experiment_id],
               "attributes.status = 'FINISHED' and tags.`compsweep.role` = 'trial'"))  # fmt: skip


def test_stop_settles_every_run_and_only_one_of_two_resumes_runs(mlflow_server, tmp_path, ray_tmp):
    name = "lc-stop"
    # Trials long enough (~10 s each on 2 cores, far more on a fast one than `compsweep stop`
    # needs to start) that the sweep is still in flight when the stop request lands. The eopt
    # sampler: the one whose state (its pilot plan) lives in the Optuna study, so a resume must
    # carry the study over whole.
    spec = tiny_spec(name, mlflow_server.uri, str(tmp_path / "results"), trials=4, concurrent=1,
                     steps=2500, n_train=256, search={"sampler": "eopt"})  # fmt: skip
    spec["train"]["run"]["eval_every"] = 25.0
    env = _env(ray_tmp)
    driver = _start(["run", str(_write_spec(tmp_path, spec))], tmp_path, env)
    try:
        _wait_for(
            lambda: _finished_trials(mlflow_server.uri, name) >= 1, driver, 300, "a finished trial"
        )
        (folder,) = (tmp_path / "results").iterdir()
        stop = subprocess.run([COMPSWEEP, "stop", str(folder)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180)  # fmt: skip
        out, _ = driver.communicate(timeout=120)
        assert stop.returncode == 0 and "stopped (parent run KILLED)" in stop.stdout, (
            stop.stdout + stop.stderr + out[-3000:]
        )
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, out[-3000:]
    assert "compsweep resume" in out
    parents, children = sweep_runs(mlflow_server.uri, name)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert children and all(r.info.status != "RUNNING" for r in children)  # every run settled
    killed = [r for r in children if r.info.status == "KILLED"]
    assert killed and all(r.data.tags["compsweep.status"] == "killed" for r in killed)
    assert all("stopped on request" in r.data.tags["compsweep.status_reason"] for r in killed)
    runs_before = {r.data.tags["compsweep.trial_id"]: r.info.run_id for r in children}

    # Two resumes at once: one driver holds the sweep, the other is refused and says by whom.
    first = _start(["resume", str(folder)], tmp_path, env)
    second = _start(["resume", str(folder)], tmp_path, env)
    outs = [p.communicate(timeout=600)[0] for p in (first, second)]
    codes = sorted(p.returncode for p in (first, second))
    assert codes == [0, 3], outs
    refused = outs[[first.returncode, second.returncode].index(3)]
    assert "is held by compsweep resume on host" in refused

    parents, children = sweep_runs(mlflow_server.uri, name)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == 4  # one run per trial
    for tid, run_id in runs_before.items():  # the stopped trials went on in their own runs
        assert {r.data.tags["compsweep.trial_id"]: r.info.run_id for r in children}[tid] == run_id
    for run in children:
        assert run.info.status == "FINISHED"
        assert_complete_series(mlflow_server.uri, run)  # each (key, step) stored once
    status = subprocess.run([COMPSWEEP, "status", str(folder)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "finished  4/4 trials (4 finished)" in status.stdout, status.stdout

    # The study went on across the stop: one Optuna trial per trial, each a pilot trial in its
    # own slot of the plan, each told the e_w its MLflow run holds.
    record = SweepRecord.load(folder)
    study = optuna.load_study(study_name=record.sweep_id, storage=record.study_storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(study.trials) == len(done) == 4, [t.state for t in study.trials]
    assert [t.user_attrs[PHASE_ATTR] for t in done] == ["pilot"] * 4
    assert sorted(t.user_attrs[SLOT_ATTR] for t in done) == [0, 1, 2, 3]
    in_mlflow = sorted(r.data.metrics["mean_e_w"] for r in children)
    assert sorted(t.user_attrs[E_W_ATTR] for t in done) == pytest.approx(in_mlflow)


def test_a_sweep_its_time_budget_ends_is_no_interruption(mlflow_server, tmp_path, ray_tmp):
    """The budget runs out mid-trial (trials far longer than the budget): the cut trial is
    `stopped` with the budget as its reason, not killed by a Ctrl-C nobody sent; the exit code
    is the outcome's (none finished: 1, not 130), and `resume` says there is nothing to resume."""
    name = "lc-budget"
    spec = tiny_spec(name, mlflow_server.uri, str(tmp_path / "results"), trials=3, concurrent=1,
                     steps=100_000, n_train=256)  # fmt: skip
    spec["budget"]["time_budget_s"] = 6
    env = _env(ray_tmp)
    run = subprocess.run([COMPSWEEP, "run", str(_write_spec(tmp_path, spec))], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 1, out[-4000:]
    assert "1/3 trials: 1 stopped." in out, out[-4000:]
    assert "sweep ended on its time budget of 6 s" in out
    assert "Ctrl-C" not in out and "interrupted" not in out and "compsweep resume" not in out
    parents, children = sweep_runs(mlflow_server.uri, name)
    assert [p.info.status for p in parents] == ["FAILED"]  # no trial finished
    assert parents[0].data.tags["compsweep.status_reason"] == "ended on its time budget of 6 s"
    (trial,) = children
    assert trial.info.status == "KILLED" and trial.data.tags["compsweep.status"] == "stopped"
    assert trial.data.tags["compsweep.status_reason"] == "time budget of 6 s reached"

    (folder,) = (tmp_path / "results").iterdir()
    status = subprocess.run([COMPSWEEP, "status", str(folder)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert status.returncode == 0, status.stdout + status.stderr
    assert "1/3 trials (1 stopped); ended on its time budget of 6 s" in status.stdout
    tid = trial.data.tags["compsweep.trial_id"]
    assert f"trial {tid} stopped: time budget of 6 s reached" in status.stdout, status.stdout

    resumed = subprocess.run([COMPSWEEP, "resume", str(folder)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    assert "nothing to resume" in resumed.stdout
    assert [r.info.run_id for r in sweep_runs(mlflow_server.uri, name)[1]] == [trial.info.run_id]


@contextlib.contextmanager
def _writable_folder(path: Path):
    """A folder that ``set_read_only`` makes read-only for real, for root too: a read-only
    bind mount of the folder onto itself (files a process opened before keep working, as on a
    network share that turns read-only; every new write fails with EROFS); chmod for others."""
    path.mkdir()
    as_root = os.geteuid() == 0
    state = {"ro": False, "bound": False}

    def set_read_only(ro: bool) -> None:
        if ro == state["ro"]:
            return
        if as_root and ro:
            subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
            state["bound"] = True
            # A file the driver opens for writing through the new mount in between makes the
            # kernel refuse (EBUSY, "mount point is busy") until it is closed: try again.
            for attempt in range(20):
                done = subprocess.run(["mount", "-o", "remount,bind,ro", str(path)],
                                      capture_output=True, text=True)  # fmt: skip
                if done.returncode == 0:
                    break
                assert attempt < 19, done.stderr
                time.sleep(0.1)
        elif as_root:
            subprocess.run(["umount", "-l", str(path)], check=True)
            state["bound"] = False
        else:
            for p in [path, *path.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o555 if ro else 0o755)
        state["ro"] = ro

    try:
        yield set_read_only
    finally:
        if state["bound"]:  # whatever happened, no mount outlives the test
            subprocess.run(["umount", "-l", str(path)], check=False)
        elif not as_root:
            set_read_only(False)


def test_read_only_storage_fails_honestly_and_retry_failed_finishes_the_same_trials(
    mlflow_server, tmp_path, ray_tmp
):
    name = "lc-readonly"
    with _writable_folder(tmp_path / "store") as set_read_only:
        spec = tiny_spec(name, mlflow_server.uri, str(tmp_path / "store"), trials=2, concurrent=2,
                         steps=3000, n_train=256)  # fmt: skip
        spec["failure"] = {"max_failures": 1}
        env = _env(ray_tmp)
        driver = _start(["run", str(_write_spec(tmp_path, spec))], tmp_path, env)
        store = tmp_path / "store"
        try:
            _wait_for(lambda: len({p.parent for p in store.glob("*/*/checkpoint_*")}) >= 2, driver,
                      300, "both trials checkpointed")  # fmt: skip
            set_read_only(True)
            out, _ = driver.communicate(timeout=300)
        finally:
            if driver.poll() is None:
                driver.kill()
        assert driver.returncode == 1, out[-4000:]
        assert "2/2 trials: 2 failed" in out, out[-4000:]
        assert "best finished trials" not in out  # no table of half-trained trials
        assert "cannot save checkpoints" in out or "FAILED" in out
        parents, children = sweep_runs(mlflow_server.uri, name)
        assert [p.info.status for p in parents] == ["FAILED"]
        assert parents[0].data.metrics["trials_failed"] == 2
        assert sorted(r.info.status for r in children) == ["FAILED", "FAILED"]
        before = {r.data.tags["compsweep.trial_id"]: r.info.run_id for r in children}

        set_read_only(False)
        (folder,) = store.iterdir()
        resumed = subprocess.run([COMPSWEEP, "resume", "--retry-failed", str(folder)], cwd=tmp_path,
                                 env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-2000:]
        parents, children = sweep_runs(mlflow_server.uri, name)
        assert [p.info.status for p in parents] == ["FINISHED"]
        assert {r.data.tags["compsweep.trial_id"]: r.info.run_id for r in children} == before
        for run in children:
            assert run.info.status == "FINISHED"
            assert_complete_series(mlflow_server.uri, run)


def _listening_addresses(root_pid: int) -> set[str]:
    addrs = set()
    try:
        procs = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return addrs
    for p in procs:
        with contextlib.suppress(psutil.Error):
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    addrs.add(c.laddr.ip)
    return addrs


def test_a_local_sweep_is_private_ignores_stale_clusters_and_keeps_secrets(
    mlflow_server, tmp_path, ray_tmp
):
    import optuna

    secret = "planted-pw-7f3a91"
    name = "lc-private"
    host_port = mlflow_server.uri.removeprefix("http://")
    spec = tiny_spec(name, f"http://compsweep-user:{secret}@{host_port}", str(tmp_path / "results"),
                     trials=2, concurrent=2, steps=120)  # fmt: skip
    # A cluster that /tmp/ray remembers but that is long gone: a plain ray.init() would try it.
    stale = Path(ray_tmp) / "ray" / "ray_current_cluster"
    stale.parent.mkdir(parents=True)
    stale.write_text("127.0.0.1:1")
    spool = tmp_path / "tmp"
    spool.mkdir()
    env = _env(ray_tmp, TMPDIR=str(spool))
    probe = subprocess.run([sys.executable, "-c", "import ray._private.utils as u; print(u.read_ray_address())"],
                           env=env, capture_output=True, text=True)  # fmt: skip
    assert probe.stdout.strip() == "127.0.0.1:1"

    spec_file = _write_spec(tmp_path, spec)  # the user's own file: the one place it may be
    driver = _start(["run", str(spec_file)], tmp_path, env)
    seen: set[str] = set()
    try:
        _wait_for(lambda: any((tmp_path / "results").glob("*/*/checkpoint_*")), driver, 300,
                  "a trial checkpoint")  # fmt: skip
        seen = _listening_addresses(driver.pid)
        out, _ = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, out[-4000:]
    assert seen and seen <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, seen

    # The password: in no output, no file of the sweep, Ray or the spool, nothing in MLflow.
    assert secret not in out
    leaks = []
    for root in (tmp_path, Path(ray_tmp), mlflow_server.root):
        for f in root.rglob("*"):
            with contextlib.suppress(OSError):
                if (
                    f != spec_file
                    and f.is_file()
                    and not f.is_symlink()
                    and secret.encode() in f.read_bytes()
                ):
                    leaks.append(str(f))
    assert not leaks, leaks
    parents, children = sweep_runs(mlflow_server.uri, name)
    client = MlflowClient(mlflow_server.uri)
    for run in parents + children:
        assert secret not in repr(run.data.params) + repr(run.data.tags)
    spec_text = Path(
        client.download_artifacts(parents[0].info.run_id, "spec.yaml", str(tmp_path))
    ).read_text()
    assert secret not in spec_text and f"uri: {mlflow_server.uri}" in spec_text

    # The Optuna study is on disk next to the sweep, with every trial and its value.
    (folder,) = (tmp_path / "results").iterdir()
    study = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'optuna.db'}")
    assert len(study.trials) == 2
    assert all(t.state.name == "COMPLETE" and t.value is not None for t in study.trials)


def test_two_first_sweeps_at_once_on_a_new_embedded_store_both_finish(tmp_path):
    dirs = [tempfile.mkdtemp(prefix="rt-", dir="/tmp") for _ in range(2)]
    try:
        drivers = []
        for i, ray_tmp in enumerate(dirs):
            spec = tiny_spec(f"lc-first-{i}", None, str(tmp_path / "results"), trials=1, steps=12)
            drivers.append(
                _start(["run", str(_write_spec(tmp_path, spec))], tmp_path, _env(ray_tmp))
            )
        outs = [d.communicate(timeout=600)[0] for d in drivers]
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    assert [d.returncode for d in drivers] == [0, 0], [o[-3000:] for o in outs]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for i in range(2):
        parents, children = sweep_runs(uri, f"lc-first-{i}")
        assert [p.info.status for p in parents] == ["FINISHED"] and len(children) == 1


def test_resources_no_node_has_are_refused_before_anything_starts(tmp_path, monkeypatch, capsys):
    import ray

    from sweeps.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the embedded store here
    spec = tiny_spec("lc-resources", None, str(tmp_path / "results"), trials=1, steps=6)
    path = _write_spec(tmp_path, spec)
    try:
        code = main(["run", str(path), "--set", "resources.gpus=1", "--set", "resources.cpus=64"])
    finally:
        ray.shutdown()
    err = capsys.readouterr().err
    assert code == 2, err
    assert "resources.gpus: 1 per trial, but no node has that many GPUs" in err
    assert "resources.cpus: 64 per trial, but no node has that many CPUs" in err
    parents, children = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "lc-resources")
    assert parents == [] and children == []
