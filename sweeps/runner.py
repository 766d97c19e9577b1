"""Run, resume and inspect sweeps with Ray Tune + Optuna, tracked in MLflow (DESIGN §7).

The driver validates the spec, opens the MLflow experiment and the sweep's parent run, then
hands Tune a searcher (Optuna, define-by-run space), an optional ASHA scheduler and the trial
trainable. A small file ``compsweep.json`` next to Tune's experiment state records what
``compsweep resume`` and ``compsweep status`` need.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sweeps.progress import SweepProgress, best_rows, knob_text, print_table
from sweeps.spec import SweepSpec, from_dict_spec
from sweeps.status import TrialRunStatus
from sweeps.tracking import (
    STATUS_TAG,
    default_tracking_uri,
    ensure_experiment,
    find_trial_runs,
    finish_run,
    start_sweep_run,
)

SWEEP_FILE = "compsweep.json"

# Every evaluation checkpoints; Tune's warning about frequent experiment snapshots is noise here.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


@dataclass
class SweepRecord:
    """What identifies a sweep across processes: stored as ``compsweep.json``."""

    sweep_id: str
    path: str  # Tune's experiment directory
    spec: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str

    def save(self) -> None:
        Path(self.path).mkdir(parents=True, exist_ok=True)
        tmp = Path(self.path) / (SWEEP_FILE + ".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2))
        tmp.replace(Path(self.path) / SWEEP_FILE)

    @classmethod
    def load(cls, path: str | Path) -> SweepRecord:
        f = Path(path) / SWEEP_FILE
        if not f.is_file():
            raise FileNotFoundError(
                f"{path} is not a sweep directory (no {SWEEP_FILE}); pass the folder `compsweep run` printed"
            )
        return cls(**json.loads(f.read_text()))

    def trial_facts(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("sweep_id", "spec", "tracking_uri", "experiment_id", "parent_run_id")
        }


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


def connect_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` / ``RAY_ADDRESS`` (as inside ``ray job submit``), else
    start a local Ray (which creates its own token)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        os.environ.update(ray_auth_env())
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


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


def _trainable(record: SweepRecord) -> Any:
    from ray import tune

    from sweeps.trial import train_trial

    spec = from_dict_spec(record.spec)
    resources = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    return tune.with_resources(
        tune.with_parameters(train_trial, sweep=record.trial_facts()), resources
    )


def _searcher(spec: SweepSpec) -> Any:
    from ray.tune.search import ConcurrencyLimiter

    from search_spaces import define_by_run
    from sweeps.searcher import SweepOptunaSearch
    from sweeps.searchers import SAMPLERS

    metrics, modes = spec.objective.metrics, spec.objective.modes()
    sampler = SAMPLERS[spec.search.sampler](spec)
    searcher = SweepOptunaSearch(
        space=define_by_run(spec.space.name, spec.space.overrides),
        metric=metrics[0] if len(metrics) == 1 else metrics,
        mode=modes[0] if len(modes) == 1 else modes,
        sampler=sampler,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=spec.budget.max_concurrent)


def _scheduler(spec: SweepSpec) -> Any:
    from sweeps.searchers import SCHEDULERS

    return SCHEDULERS[spec.scheduler.name](spec)


def _run_config(spec: SweepSpec, record: SweepRecord, stream: TextIO | None) -> Any:
    from ray import tune

    return tune.RunConfig(
        name=record.sweep_id,
        storage_path=spec.storage.path,
        failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=[SweepProgress(spec, stream), TrialRunStatus(record.trial_facts())],
        verbose=0,
    )


def run_sweep(
    spec: SweepSpec, *, address: str | None = None, stream: TextIO | None = None
) -> SweepRecord:
    """Start a new sweep and run it to the end; returns its record."""
    from ray import tune

    _absolute_paths(spec)
    sweep_id = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    # Importing MLflow and opening its store take seconds of CPU; starting Ray mostly waits on
    # the processes it spawns. Side by side, a local sweep starts seconds sooner.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="compsweep-tracking") as pool:
        opening = pool.submit(_open_tracking, spec, sweep_id)
        try:
            connect_ray(address)
        except BaseException:
            _abandon(opening, spec.tracking.uri)
            raise
        experiment_id, parent = opening.result()
    record = SweepRecord(
        sweep_id=sweep_id,
        path=os.path.join(spec.storage.path, sweep_id),
        spec=spec.to_dict(),
        tracking_uri=spec.tracking.uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
    )
    record.save()
    print(
        f"sweep {sweep_id}: {spec.budget.num_trials} trials of space {spec.space.name!r}, "
        f"{spec.budget.max_concurrent} at a time; state in {record.path}",
        file=stream,
        flush=True,
    )
    tuner = tune.Tuner(
        _trainable(record),
        tune_config=tune.TuneConfig(
            search_alg=_searcher(spec),
            scheduler=_scheduler(spec),
            num_samples=spec.budget.num_trials,
            time_budget_s=spec.budget.time_budget_s,
            # A finished trial's process, with torch and mlflow imported, serves the next
            # trial: saves seconds of start-up per trial. train_trial leaves no state behind.
            reuse_actors=True,
        ),
        run_config=_run_config(spec, record, stream),
    )
    grid = tuner.fit()
    _finish(record, grid, stream)
    return record


def _open_tracking(spec: SweepSpec, sweep_id: str) -> tuple[str, str]:
    """(experiment id, parent run id) of a new sweep."""
    experiment_id = ensure_experiment(spec.tracking.uri, spec.tracking.experiment or spec.name)
    return experiment_id, start_sweep_run(
        spec.tracking.uri, experiment_id, sweep_id, spec.to_dict()
    )


def _abandon(opening: Future, uri: str) -> None:
    """Ray did not start: end the sweep's new parent run FAILED instead of leaving it RUNNING."""
    try:
        _, parent = opening.result()
        finish_run(uri, parent, "FAILED")
    except Exception:  # the Ray error is the one to report
        pass


def resume_sweep(
    path: str, *, address: str | None = None, stream: TextIO | None = None
) -> SweepRecord:
    """Continue an interrupted sweep: unfinished and errored trials resume from their checkpoints,
    into the same MLflow runs."""
    from ray import tune

    record = SweepRecord.load(path)
    connect_ray(address)
    print(f"resuming sweep {record.sweep_id} from {record.path}", file=stream, flush=True)
    spec = from_dict_spec(record.spec)
    tuner = tune.Tuner.restore(record.path, trainable=_trainable(record), resume_errored=True)
    # Fresh callbacks: the restored ones print to the old process's terminal.
    tuner._local_tuner.get_run_config().callbacks = [
        SweepProgress(spec, stream),
        TrialRunStatus(record.trial_facts()),
    ]
    grid = tuner.fit()
    _finish(record, grid, stream)
    return record


def trial_rows(record: SweepRecord, grid: Any = None) -> list[dict[str, Any]]:
    """One row per trial: id, status (Tune's or MLflow's; DIVERGED for a diverged trial), final
    metrics, knobs and MLflow run id."""
    runs = {
        r.data.tags.get("compsweep.trial_id"): r
        for r in find_trial_runs(record.tracking_uri, record.experiment_id, record.sweep_id)
    }
    rows = []
    if grid is not None:
        for result in grid:
            m = dict(result.metrics or {})
            tid = m.get("trial_id")
            status = "ERROR" if result.error else "TERMINATED"
            rows.append(
                {
                    **m,
                    "trial": tid,
                    "status": "DIVERGED" if m.get("diverged") else status,
                    "knobs": knob_text(result.config or {}),
                    "mlflow_run": runs[tid].info.run_id if tid in runs else None,
                }
            )
    else:
        for tid, run in runs.items():
            rows.append(
                {
                    **run.data.metrics,
                    "trial": tid,
                    "status": "DIVERGED"
                    if run.data.tags.get(STATUS_TAG) == "diverged"
                    else run.info.status,
                    "knobs": knob_text(
                        {k: v for k, v in run.data.params.items() if k.startswith("knob.")}
                    ),
                    "mlflow_run": run.info.run_id,
                }
            )
    return rows


def _finish(record: SweepRecord, grid: Any, stream: TextIO) -> None:
    spec = from_dict_spec(record.spec)
    # Tune returns normally after Ctrl-C too: unfinished or missing trials tell the two apart.
    missing = spec.budget.time_budget_s is None and len(grid) < spec.budget.num_trials
    if missing or grid.num_terminated + grid.num_errors < len(grid):
        print(
            f"\nsweep interrupted; continue it with: compsweep resume {record.path}",
            file=stream,
            flush=True,
        )
        return
    rows = trial_rows(record, grid)
    finished = [r for r in rows if r["status"] == "TERMINATED"]
    diverged = sum(1 for r in rows if r["status"] == "DIVERGED")
    errors = sum(1 for r in rows if r["status"] == "ERROR") + diverged
    finish_run(
        record.tracking_uri,
        record.parent_run_id,
        "FAILED" if errors and not finished else "FINISHED",
    )
    metrics, modes = spec.objective.metrics, spec.objective.modes()
    best = best_rows(rows, metrics, modes, top=5)
    title = "Pareto front" if len(metrics) > 1 else f"best trials by {metrics[0]}"
    failed = f"{errors} failed" + (f" ({diverged} diverged)" if diverged else "")
    print(f"\n{len(rows)} trials: {len(finished)} finished, {failed}. {title}:", file=stream)
    print_table(best, stream)
    print(
        f"\nMLflow: experiment {spec.tracking.experiment or spec.name!r} (id {record.experiment_id}), "
        f"parent run {record.parent_run_id}, tracking URI {record.tracking_uri}",
        file=stream,
    )
    if record.tracking_uri.startswith("sqlite"):
        print(
            f"Browse it with `compsweep ui` and open http://127.0.0.1:5000/#/experiments/{record.experiment_id}/runs?workflowType=machine_learning",
            file=stream,
        )
    print(f"Sweep state: {record.path}", file=stream, flush=True)
