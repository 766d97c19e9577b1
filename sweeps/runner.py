"""Run, resume and stop sweeps with Ray Tune + Optuna, tracked in MLflow.

The driver validates the spec, takes the sweep's lock (one driver per sweep), opens the MLflow
experiment and the sweep's parent run, then hands Tune a searcher (Optuna, define-by-run space,
its study persisted next to the sweep), an optional ASHA scheduler and the trial trainable. A
small file ``compsweep.json`` next to Tune's experiment state records what ``resume``,
``status`` and ``stop`` need. At the end every trial run is settled and counted by how it
really ended (:mod:`sweeps.outcomes`); the parent run records the counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sweeps.driver import (
    DRIVER_TAG,
    HEARTBEAT_TAG,
    PATH_TAG,
    RAY_JOB_TAG,
    STOP_TAG,
    DriverHeartbeat,
    driver_identity,
)
from sweeps.lock import SweepLock
from sweeps.naming import browse_hint, label_of_run_name, tune_trial_name
from sweeps.outcomes import Outcome
from sweeps.progress import SweepProgress, best_rows, close_live, knob_text, print_table
from sweeps.quiet import active_log, attach_log, route_libraries
from sweeps.secrets import move_credentials_to_env, redact
from sweeps.spec import SweepSpec, from_dict_spec
from sweeps.status import TrialRunStatus, forget, settle_open_runs, tune_trials, unended_trials
from sweeps.tracking import (
    STATUS_TAG,
    default_tracking_uri,
    ensure_experiment,
    find_trial_runs,
    finish_run,
    mlflow_client,
    start_sweep_run,
)

SWEEP_FILE = "compsweep.json"
STUDY_FILE = "optuna.db"
# The Ray job a submitted sweep runs in (set by `compsweep submit` for the driver).
RAY_JOB_ENV = "COMPSWEEP_RAY_JOB"

# Every evaluation checkpoints; Tune's warning about frequent experiment snapshots is noise here.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


class SweepError(RuntimeError):
    """A sweep that cannot start as asked (e.g. resources no node has); ``problems`` lists why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"  - {p}" for p in problems))


@dataclass
class SweepRecord:
    """What identifies a sweep across processes: stored as ``compsweep.json``."""

    sweep_id: str
    path: str  # Tune's experiment directory
    spec: dict[str, Any]
    tracking_uri: str  # without credentials (those travel in MLFLOW_TRACKING_USERNAME/PASSWORD)
    experiment_id: str
    parent_run_id: str
    forward_env: list[str] = field(default_factory=list)  # variables sent to trials on a cluster
    study_storage: str = ""  # the Optuna study's storage URL
    # How the last driver's run of the sweep ended (not saved).
    outcome: Outcome | None = field(default=None, repr=False, compare=False)

    def save(self) -> None:
        Path(self.path).mkdir(parents=True, exist_ok=True)
        data = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "outcome"
        }
        tmp = Path(self.path) / (SWEEP_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(Path(self.path) / SWEEP_FILE)

    @classmethod
    def load(cls, path: str | Path) -> SweepRecord:
        f = Path(path) / SWEEP_FILE
        if not f.is_file():
            raise FileNotFoundError(
                f"{path} is not a sweep directory (no {SWEEP_FILE}); pass the folder `compsweep run` printed, or a sweep id"
            )
        data = json.loads(f.read_text())
        known = {f.name for f in dataclasses.fields(cls)} - {"outcome"}
        return cls(**{k: v for k, v in data.items() if k in known})

    def trial_facts(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("sweep_id", "spec", "tracking_uri", "experiment_id", "parent_run_id")
        }


def new_sweep_id(name: str) -> str:
    """``name-YYYYmmdd-HHMMSS-xxxx``: sortable by start, unique even within one second."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def ray_auth_env() -> dict[str, str]:
    """Environment a Ray client needs for a cluster with token authentication (Ray's default).

    A client finds the token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``) but uses it only with ``RAY_AUTH_MODE=token``: set that when a token
    is at hand and the user has not chosen a mode.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return {}
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(token_file):
        return {"RAY_AUTH_MODE": "token"}
    return {}


@contextlib.contextmanager
def _loopback_only():
    """Make the local Ray instance started inside this block listen on 127.0.0.1 only.

    Ray resolves a node address of 127.0.0.1 to the machine's routable address and binds its
    servers there and on all interfaces; it keeps loopback only when clusters are off (its
    setting for single-machine platforms). That setting is read by this process (a module
    constant) and by the processes Ray starts (the environment), so set both while Ray starts,
    and put them back afterwards.
    """
    import ray._private.ray_constants as ray_constants

    var = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    saved_env, saved_const = os.environ.get(var), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[var] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_const
        if saved_env is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = saved_env


def connect_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    env_vars: dict[str, str] | None = None,
) -> None:
    """Join the cluster at ``address`` / ``RAY_ADDRESS`` (as inside ``ray job submit``), else
    start a Ray of our own on this machine, on loopback only, whatever cluster ``/tmp/ray``
    remembers. ``env_vars`` reach the trials (a job's own variables already do)."""
    import ray

    route_libraries()  # Ray's terminal handler exists from its import on
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    runtime_env = {"env_vars": env_vars} if env_vars and not in_job else None
    if address and address != "local":
        os.environ.update(ray_auth_env())
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    else:
        with _loopback_only():
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=False, runtime_env=runtime_env)  # fmt: skip
    route_libraries()


def check_resources(spec: SweepSpec, autoscaling: bool = False) -> list[str]:
    """Problems with the per-trial resources on the connected cluster: a request no alive node
    can meet would wait forever. On an autoscaling cluster they are warnings (returned with a
    ``warning:`` prefix), since nodes may still come."""
    import ray

    need = {"CPU": float(spec.resources.cpus), "GPU": float(spec.resources.gpus)}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(all(res.get(k, 0.0) >= v for k, v in need.items() if v > 0) for res in nodes):
        return []
    have = (
        "; ".join(
            f"node {i}: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"
            for i, res in enumerate(nodes)
        )
        or "no alive node"
    )
    problems = []
    if need["GPU"] > 0 and not any(res.get("GPU", 0) >= need["GPU"] for res in nodes):
        problems.append(
            f"resources.gpus: {need['GPU']:g} per trial, but no node has that many GPUs ({have})"
        )
    if need["CPU"] > 0 and not any(res.get("CPU", 0) >= need["CPU"] for res in nodes):
        problems.append(
            f"resources.cpus: {need['CPU']:g} per trial, but no node has that many CPUs ({have})"
        )
    if not problems:
        problems.append(
            f"resources: no single node has {need['CPU']:g} CPUs and {need['GPU']:g} GPUs together ({have})"
        )
    if autoscaling:
        return [f"warning: {p} (waiting for the autoscaler)" for p in problems]
    return problems


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
    from ray import tune

    from sweeps.trial import train_trial

    spec = from_dict_spec(record.spec)
    resources = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    return tune.with_resources(
        tune.with_parameters(train_trial, sweep=record.trial_facts()), resources
    )


def study_storage_url(spec: SweepSpec, path: str) -> str:
    """Where the sweep's Optuna study lives: ``search.storage`` if given (e.g. the cluster's
    PostgreSQL), else ``$COMPSWEEP_STUDY_STORAGE``, else an SQLite file in the sweep folder."""
    given = spec.search.storage or os.environ.get("COMPSWEEP_STUDY_STORAGE")
    return given or f"sqlite:///{Path(path).resolve() / STUDY_FILE}"


def _searcher(spec: SweepSpec, record: SweepRecord) -> Any:
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from search_spaces import define_by_run
    from sweeps.searcher import SweepOptunaSearch
    from sweeps.searchers import SAMPLERS

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
    from sweeps.searchers import SCHEDULERS

    return SCHEDULERS[spec.scheduler.name](spec)


def _callbacks(spec: SweepSpec, record: SweepRecord, stream: TextIO | None) -> list[Any]:
    return [SweepProgress(spec, stream), TrialRunStatus(record.trial_facts())]


def _run_config(spec: SweepSpec, record: SweepRecord, stream: TextIO | None) -> Any:
    from ray import tune

    return tune.RunConfig(
        name=record.sweep_id,
        storage_path=spec.storage.path,
        failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=_callbacks(spec, record, stream),
        verbose=0,
    )


def _say(stream: TextIO | None, text: str) -> None:
    print(redact(text), file=stream, flush=True)


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
    from ray import tune

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
                _say(stream, warning)
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
        _say(
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
    record.outcome = _finish(record, stream, heartbeat.stop_request, crash)


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
    from ray import tune

    from sweeps.driver import parent_run_state

    record = SweepRecord.load(path)
    lock = SweepLock(record.path, "compsweep resume").acquire()
    attach_log(record.path)
    try:
        if lock.taken_over is not None:
            _say(
                stream,
                f"note: taking over the sweep from a driver that is gone ({lock.taken_over.describe()})",
            )
        _refuse_live_driver_elsewhere(record, parent_run_state)
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
        _say(stream, f"resuming sweep {record.sweep_id} from {record.path} ({what} trials)")
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


def _refuse_live_driver_elsewhere(record: SweepRecord, parent_run_state: Any) -> None:
    """A driver on another machine (its own copy of the folder) that still beats on the
    parent run holds the sweep too."""
    from sweeps.driver import DRIVER_GONE_AFTER_S
    from sweeps.lock import Holder, SweepBusy

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


def trial_rows(record: SweepRecord, runs: list | None = None) -> list[dict[str, Any]]:
    """One row per trial run (``runs`` if already read, else the sweep's from MLflow): id,
    state, final metrics, knobs and MLflow run id."""
    from sweeps.outcomes import run_state

    if runs is None:
        runs = find_trial_runs(record.tracking_uri, record.experiment_id, record.sweep_id)
    rows = []
    for run in runs:
        tid = run.data.tags.get("compsweep.trial_id")
        rows.append(
            {
                **run.data.metrics,
                "trial": tid,
                "label": label_of_run_name(run.info.run_name or ""),
                "status": run_state(run.info.status, dict(run.data.tags)),
                "knobs": knob_text(
                    {k: v for k, v in run.data.params.items() if k.startswith("knob.")}
                ),
                "mlflow_run": run.info.run_id,
            }
        )
    return rows


def _interrupted(spec: SweepSpec, sweep_id: str) -> bool:
    """Tune returns normally after Ctrl-C too: unended or missing trials tell the two apart."""
    missing = (
        spec.budget.time_budget_s is None and len(tune_trials(sweep_id)) < spec.budget.num_trials
    )
    return bool(unended_trials(sweep_id)) or missing


def _finish(
    record: SweepRecord, stream: TextIO | None, stop_request: str | None, crash: str | None = None
) -> Outcome:
    spec = from_dict_spec(record.spec)
    interrupted = _interrupted(spec, record.sweep_id) and crash is None
    stop_request = stop_request or _stop_requested(record)
    reason = f"stopped on request ({stop_request})" if stop_request else "interrupted (Ctrl-C)"
    if crash is not None:
        reason = f"the sweep's driver failed: {crash}"
        _say(stream, f"\nerror: {reason}")
    facts = record.trial_facts()
    # Every run still open is settled: stopped trials KILLED (resumable), with what their last
    # checkpoint held; runs of trials Tune no longer knows as well.
    settle_open_runs(facts, reason)
    try:
        runs = find_trial_runs(record.tracking_uri, record.experiment_id, record.sweep_id)
    except Exception as e:  # the tracking store is gone: say so rather than guess
        _say(
            stream,
            f"\ncannot read the trial runs back from MLflow ({str(e).splitlines()[0][:200]})",
        )
        runs = []
    outcome = Outcome.from_runs(runs, interrupted, spec.budget.num_trials)
    outcome.crashed = crash is not None
    _close_parent(record, outcome)
    _say(stream, f"\n{outcome.summary()}.")
    if interrupted:
        _say(
            stream,
            f"sweep {'stopped' if stop_request else 'interrupted'}; continue it with: compsweep resume {record.path}",
        )
    if outcome.unsuccessful:
        _say(stream, f"see why in `compsweep status {record.path}`; retry the failed trials "
                     f"with `compsweep resume --retry-failed {record.path}`")  # fmt: skip
    rows = [r for r in trial_rows(record, runs) if r["status"] == "finished"]
    if rows:
        metrics, modes = _objective(spec)
        best = best_rows(rows, metrics, modes, top=5)
        title = "Pareto front" if len(metrics) > 1 else f"best finished trials by {metrics[0]}"
        _say(stream, f"{title}:")
        print_table(best, stream)
    _say(
        stream,
        f"\nMLflow: experiment {spec.tracking.experiment or spec.name!r} (id {record.experiment_id}), "
        f"parent run {record.parent_run_id}, tracking URI {record.tracking_uri}",
    )
    ui = _ui_hint(record)
    if ui:
        _say(stream, ui)
    _say(stream, f"Sweep state: {record.path}")
    log = active_log()
    if log is not None and log.path is not None and log.warnings:
        _say(stream, f"Ray, Optuna and MLflow logged {log.warnings} warning(s): {log.path}")
    return outcome


def _stop_requested(record: SweepRecord) -> str | None:
    """The stop request on the parent run (``compsweep stop`` signals a local driver at once,
    before its heartbeat reads the tag)."""
    from sweeps.driver import parent_run_state

    try:
        return parent_run_state(record.tracking_uri, record.parent_run_id)[1].get(STOP_TAG) or None
    except Exception:
        return None


def _ui_hint(record: SweepRecord) -> str:
    spec = from_dict_spec(record.spec)
    return browse_hint(record.tracking_uri, record.experiment_id, order_by=_objective(spec)[0][0])


def _close_parent(record: SweepRecord, outcome: Outcome) -> None:
    from mlflow.entities import Metric, RunTag

    try:
        client = mlflow_client(record.tracking_uri)
        now = int(time.time() * 1000)
        state = {"KILLED": "killed", "FINISHED": "finished"}.get(outcome.parent_status(), "failed")
        client.log_batch(
            record.parent_run_id,
            metrics=[Metric(k, v, now, 0) for k, v in outcome.metrics().items()],
            tags=[RunTag(STATUS_TAG, state), RunTag(STOP_TAG, "")],
        )
        finish_run(record.tracking_uri, record.parent_run_id, outcome.parent_status())
    except Exception:  # noqa: S110
        # The runs themselves are safe; a parent left RUNNING shows as orphaned in `status`
        # and is settled by `stop` or `resume`.
        pass
