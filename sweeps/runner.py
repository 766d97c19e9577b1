"""Run and resume sweeps with Ray Tune + Optuna, tracked in MLflow.

The driver validates the spec, takes the sweep's lock (one driver per sweep), opens the MLflow
experiment and the sweep's parent run, then hands Tune a searcher (Optuna, define-by-run space,
its study persisted next to the sweep), an optional ASHA scheduler and the trial trainable. A
small file ``compsweep.json`` (:class:`sweeps.records.SweepRecord`) next to Tune's experiment
state records what ``resume``, ``status`` and ``stop`` need. At the end every trial run is
settled and counted by how it really ended (:mod:`sweeps.sweep_end`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import optuna
from ray import tune
from ray.tune.search import ConcurrencyLimiter

from search_spaces import define_by_run
from sweeps.cluster import RAY_JOB_ENV, check_resources, connect_ray
from sweeps.driver import (
    DRIVER_GONE_AFTER_S,
    DRIVER_TAG,
    HEARTBEAT_TAG,
    PATH_TAG,
    RAY_JOB_TAG,
    STOP_TAG,
    DriverHeartbeat,
    driver_identity,
    parent_run_state,
)
from sweeps.lock import Holder, SweepBusy, SweepLock
from sweeps.naming import tune_trial_name
from sweeps.progress import SweepProgress, close_live
from sweeps.quiet import attach_log, route_libraries
from sweeps.records import STUDY_FILE, SweepRecord, new_sweep_id
from sweeps.searcher import SweepOptunaSearch
from sweeps.searchers import SAMPLERS, SCHEDULERS
from sweeps.secrets import move_credentials_to_env
from sweeps.settling import TrialRunStatus, forget
from sweeps.spec import SweepSpec, from_dict_spec
from sweeps.sweep_end import ended_on_budget_note, finish_sweep, report_budget_end, say
from sweeps.tracking import default_tracking_uri, ensure_experiment, start_sweep_run
from sweeps.trial import train_trial

# Every evaluation checkpoints; Tune's warning about frequent experiment snapshots is noise here.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


class SweepError(RuntimeError):
    """A sweep that cannot start as asked (e.g. resources no node has); ``problems`` lists why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"  - {p}" for p in problems))

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled with its problems (a submitted driver runs as a Ray job), not its message.
        return type(self), (self.problems,)


def _absolute_paths(spec: SweepSpec) -> None:
    """Workers run in other directories: make the spec's relative paths absolute here."""
    data = spec.train.get("data", {})
    if data.get("root") and not os.path.isabs(data["root"]):
        data["root"] = os.path.abspath(data["root"])
    spec.storage.path = os.path.abspath(spec.storage.path)
    if spec.tracking.uri is None:
        spec.tracking.uri = default_tracking_uri()
    elif spec.tracking.uri.startswith("sqlite:///") and not spec.tracking.uri.startswith(
        "sqlite:////"
    ):
        spec.tracking.uri = "sqlite:///" + os.path.abspath(
            spec.tracking.uri.removeprefix("sqlite:///")
        )


def _objective(spec: SweepSpec) -> tuple[list[str], list[str]]:
    """The objective metrics and their directions (from the metric catalogue)."""
    return list(spec.objective.metrics), list(spec.objective.modes())


def _trainable(record: SweepRecord) -> Any:
    spec = from_dict_spec(record.spec)
    resources = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    return tune.with_resources(tune.with_parameters(train_trial, sweep=record.facts()), resources)


def study_storage_url(spec: SweepSpec, path: str) -> str:
    """Where the sweep's Optuna study lives: ``search.storage`` if given (e.g. the cluster's
    PostgreSQL), else ``$COMPSWEEP_STUDY_STORAGE``, else an SQLite file in the sweep folder."""
    given = spec.search.storage or os.environ.get("COMPSWEEP_STUDY_STORAGE")
    return given or f"sqlite:///{Path(path).resolve() / STUDY_FILE}"


def _searcher(spec: SweepSpec, record: SweepRecord) -> Any:
    optuna.logging.get_logger("optuna")  # installs Optuna's terminal handler, now, to route it
    route_libraries()
    metrics, modes = _objective(spec)
    searcher = SweepOptunaSearch(
        space=define_by_run(spec.space.name, spec.space.overrides, spec.replicate_seeds()),
        metric=metrics[0] if len(metrics) == 1 else metrics,
        mode=modes[0] if len(modes) == 1 else modes,
        sampler=SAMPLERS[spec.search.sampler](spec),
        study_name=record.sweep_id,
        storage=optuna.storages.RDBStorage(record.study_storage),
    )
    return ConcurrencyLimiter(searcher, max_concurrent=spec.budget.max_concurrent)


def _scheduler(spec: SweepSpec) -> Any:
    return SCHEDULERS[spec.scheduler.name](spec)


def _callbacks(spec: SweepSpec, record: SweepRecord, stream: TextIO | None) -> list[Any]:
    return [SweepProgress(spec, stream), TrialRunStatus(record.facts())]


def _run_config(spec: SweepSpec, record: SweepRecord, stream: TextIO | None) -> Any:
    return tune.RunConfig(
        name=record.sweep_id,
        storage_path=spec.storage.path,
        failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=_callbacks(spec, record, stream),
        verbose=0,
    )


def run_sweep(
    spec: SweepSpec,
    *,
    address: str | None = None,
    stream: TextIO | None = None,
    forward_env: list[str] | None = None,
    autoscaling: bool = False,
) -> SweepRecord:
    """Start a new sweep and run it to the end (or until interrupted); returns its record,
    with ``record.outcome`` saying how its trials ended.

    Raises:
        SweepError: the cluster cannot run a trial as specified (nothing was started).
    """
    spec.tracking.uri = move_credentials_to_env(spec.tracking.uri)
    _absolute_paths(spec)
    sweep_id = new_sweep_id(spec.name)
    path = os.path.join(spec.storage.path, sweep_id)
    lock = SweepLock(path, "compsweep run").acquire()
    attach_log(path)
    try:
        env_vars = _forwarded(forward_env or [])
        # Importing MLflow and opening its store take seconds of CPU; starting Ray mostly waits
        # on the processes it spawns. Side by side, a local sweep starts seconds sooner.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="compsweep-tracking") as pool:
            opening = pool.submit(
                ensure_experiment, spec.tracking.uri, spec.tracking.experiment or spec.name
            )
            connect_ray(address, env_vars=env_vars)
            problems = check_resources(spec, autoscaling)
            for warning in [p for p in problems if p.startswith("warning:")]:
                say(stream, warning)
            problems = [p for p in problems if not p.startswith("warning:")]
            if problems:
                _wait_quietly(opening)
                raise SweepError(problems)
            experiment_id = opening.result()
        record = SweepRecord(
            sweep_id=sweep_id,
            path=path,
            spec=spec.to_dict(),
            tracking_uri=spec.tracking.uri,
            experiment_id=experiment_id,
            parent_run_id="",
            forward_env=sorted(env_vars),
        )
        record.study_storage = study_storage_url(spec, path)
        record.parent_run_id = start_sweep_run(
            spec.tracking.uri, experiment_id, sweep_id, spec.to_dict(), _driver_tags(record)
        )
        record.save()
        say(
            stream,
            f"sweep {sweep_id}: {spec.budget.num_trials} trials of space {spec.space.name!r}, "
            f"{spec.budget.max_concurrent} at a time; state in {record.path}",
        )
        tuner = tune.Tuner(
            _trainable(record),
            tune_config=tune.TuneConfig(
                search_alg=_searcher(spec, record),
                scheduler=_scheduler(spec),
                num_samples=spec.budget.num_trials,
                time_budget_s=spec.budget.time_budget_s,
                # A finished trial's process, with torch and mlflow imported, serves the next
                # trial: saves seconds of start-up per trial. train_trial leaves no state behind.
                reuse_actors=True,
                # "t03-<id>": trial processes name their MLflow run after their number.
                trial_name_creator=tune_trial_name,
            ),
            run_config=_run_config(spec, record, stream),
        )
        _fit(tuner, record, lock, stream)
        return record
    finally:
        lock.release()


def _wait_quietly(opening: Future) -> None:
    with contextlib.suppress(Exception):  # the resource problem is the one to report
        opening.result()


def _forwarded(items: list[str]) -> dict[str, str]:
    """``KEY`` (this environment's value) and ``KEY=VALUE`` items as the variables the trials
    get; an unset ``KEY`` is an error."""
    out: dict[str, str] = {}
    missing = []
    for item in items:
        key, sep, value = item.partition("=")
        if sep:
            out[key] = value
        elif key in os.environ:
            out[key] = os.environ[key]
        else:
            missing.append(key)
    if missing:
        raise SweepError([f"--env {n}: not set in this environment" for n in missing])
    return out


def _driver_tags(record: SweepRecord) -> dict[str, str]:
    tags = {
        DRIVER_TAG: driver_identity(),
        HEARTBEAT_TAG: str(int(time.time())),
        PATH_TAG: record.path,
        STOP_TAG: "",
    }
    if os.environ.get(RAY_JOB_ENV):
        tags[RAY_JOB_TAG] = os.environ[RAY_JOB_ENV]
    return tags


def _fit(tuner: Any, record: SweepRecord, lock: SweepLock, stream: TextIO | None) -> None:
    forget(record.sweep_id)
    heartbeat = DriverHeartbeat(record.tracking_uri, record.parent_run_id, lock, stream).start()
    crash = None
    route_libraries()
    try:
        tuner.fit()
    except Exception as e:  # Tune itself failed: settle and count what ran, then say why
        crash = (
            f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:500] if str(e).strip() else ''}"
        )
    finally:
        close_live()
        heartbeat.stop()
    record.outcome = finish_sweep(record, stream, heartbeat.stop_request, crash)


def resume_sweep(
    path: str,
    *,
    address: str | None = None,
    stream: TextIO | None = None,
    retry_failed: bool = False,
    forward_env: list[str] | None = None,
) -> SweepRecord:
    """Continue an interrupted sweep: unfinished trials resume from their checkpoints, into
    the same MLflow runs; with ``retry_failed`` so do failed ones."""
    record = SweepRecord.load(path)
    lock = SweepLock(record.path, "compsweep resume").acquire()
    attach_log(record.path)
    try:
        if lock.taken_over is not None:
            say(
                stream,
                f"note: taking over the sweep from a driver that is gone ({lock.taken_over.describe()})",
            )
        _refuse_live_driver_elsewhere(record)
        if not retry_failed and ended_on_budget_note(record):
            # Tune starts nothing after its time budget ran out (the trials it cut ended,
            # the searcher is done): say so rather than start Ray for nothing.
            record.outcome = report_budget_end(record, stream)
            return record
        env_vars = _forwarded(forward_env if forward_env is not None else record.forward_env)
        record.forward_env = sorted(env_vars)
        record.save()
        connect_ray(address, env_vars=env_vars)
        spec = from_dict_spec(record.spec)
        problems = [
            p for p in check_resources(spec, autoscaling=True) if not p.startswith("warning:")
        ]
        if problems:
            raise SweepError(problems)
        start_sweep_run(record.tracking_uri, record.experiment_id, record.sweep_id, None,
                        _driver_tags(record))  # fmt: skip
        what = "unfinished and failed" if retry_failed else "unfinished"
        say(stream, f"resuming sweep {record.sweep_id} from {record.path} ({what} trials)")
        tuner = tune.Tuner.restore(
            record.path,
            trainable=_trainable(record),
            resume_unfinished=True,
            resume_errored=retry_failed,
        )
        # Fresh callbacks: the restored ones print to the old process's terminal.
        tuner._local_tuner.get_run_config().callbacks = _callbacks(spec, record, stream)
        _fit(tuner, record, lock, stream)
        return record
    finally:
        lock.release()


def _refuse_live_driver_elsewhere(record: SweepRecord) -> None:
    """A driver on another machine (its own copy of the folder) that still beats on the
    parent run holds the sweep too."""
    try:
        status, tags = parent_run_state(record.tracking_uri, record.parent_run_id)
    except Exception:  # unreachable: the folder lock is what we have
        return
    beat = float(tags.get(HEARTBEAT_TAG) or 0)
    driver = tags.get(DRIVER_TAG, "")
    host, _, pid = driver.partition(" pid ")
    # On this host the folder's flock already told: only another machine's driver is news.
    elsewhere = bool(driver) and host != socket.gethostname()
    if elsewhere and status == "RUNNING" and time.time() - beat < DRIVER_GONE_AFTER_S:
        raise SweepBusy(Path(record.path), Holder(host, int(pid or 0), beat, beat))
