"""Finding or creating runs (docs/design.md §7): the experiment, a sweep's parent run, and a
trial's (or final training's) own run, so that a resumed sweep, a restored or retried trial
continue in their own runs and nothing is created twice.

The driver's helpers (:func:`ensure_experiment`, :func:`start_sweep_run`, …) block and use
``MlflowClient``; trackers call :func:`resolve_run` through their transport.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from sweeps.tracking_errors import is_auth_error, is_transient
from sweeps.tracking_schema import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    ROLE_TAG,
    SWEEP_ID_TAG,
    search_literal,
)
from sweeps.tracking_uri import local_artifact_location, mlflow_client

if TYPE_CHECKING:
    from sweeps.tracking_transport import Transport

log = logging.getLogger(__name__)


def _search_all(client: Any, experiment_id: str, filter_string: str, order_by: list[str]) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            max_results=1000,
            order_by=order_by,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_runs(client: Any, experiment_id: str, tags: Mapping[str, str]) -> list:
    """Active runs carrying all ``tags``, oldest first."""
    filt = " and ".join(f"tags.`{k}` = {search_literal(v)}" for k, v in tags.items())
    return _search_all(client, experiment_id, filt, ["attributes.start_time ASC"])


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name`` (created, or restored if deleted), tagged as a custom model
    development experiment."""
    from mlflow.exceptions import MlflowException  # deferred: mlflow costs ~1 s to import

    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return str(
                client.create_experiment(
                    name,
                    artifact_location=local_artifact_location(uri, name),
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                )
            )
        except MlflowException as e:
            # Another driver created it between our lookup and create.
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise e from None
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return str(exp.experiment_id)


def start_sweep_run(
    uri: str,
    experiment_id: str,
    sweep_id: str,
    spec: dict[str, Any] | None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Get or create the parent run of sweep ``sweep_id``, set ``tags`` on it and log
    ``spec.yaml`` into it (unless ``spec`` is None).

    A resumed sweep finds its existing parent run (set back to RUNNING) and continues it.
    """
    from mlflow.entities import RunTag  # deferred: mlflow costs ~1 s to import

    client = mlflow_client(uri)
    ident = {ROLE_TAG: "sweep", SWEEP_ID_TAG: sweep_id}
    runs = find_runs(client, experiment_id, ident)
    if runs:
        run = runs[0]
        run_id = str(run.info.run_id)
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(experiment_id, tags=ident, run_name=sweep_id).info.run_id
    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    if spec is not None:
        client.log_text(run_id, yaml.safe_dump(spec, sort_keys=False), "spec.yaml")
    return run_id


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Set a run's final status (FINISHED, FAILED or KILLED)."""
    mlflow_client(uri).set_terminated(run_id, status=status)


def find_trial_runs(uri: str, experiment_id: str, sweep_id: str) -> list:
    """Every trial (child) run of a sweep, oldest first."""
    client = mlflow_client(uri)
    return find_runs(client, experiment_id, {ROLE_TAG: "trial", SWEEP_ID_TAG: sweep_id})


@dataclass(frozen=True)
class RunTarget:
    """Which run a tracker logs into: the one carrying all ``identity`` tags in the
    experiment, else a new one created with ``identity`` and ``extra_tags``."""

    experiment_id: str
    identity: Mapping[str, str]
    run_name: str
    extra_tags: Mapping[str, str]
    created_ms: int  # the new run's start time: when the tracker was made, not when it got through


@dataclass(frozen=True)
class ResolvedRun:
    run_id: str
    continued: bool  # the run existed before: what it holds must not be sent again


def resolve_run(
    transport: Transport, target: RunTarget, known_run_id: str | None, label: str
) -> ResolvedRun:
    """The run to log into: ``known_run_id`` (from a restored state) while it exists, else the
    oldest run carrying ``target.identity``, else a new one. A found run is set back to
    RUNNING. Transient and credential errors propagate (the caller retries or gives up)."""
    from mlflow.exceptions import MlflowException  # deferred: mlflow costs ~1 s to import

    run = None
    if known_run_id is not None:
        try:
            run = transport.get_run(known_run_id)
            if run.info.lifecycle_stage == "deleted":
                run = None
        except MlflowException as e:
            if is_transient(e) or is_auth_error(e):
                raise
        if run is None:
            log.warning("%s: run %s is gone; looking up or creating", label, known_run_id)
    if run is None:
        # Search before creating, every time: a create whose answer was lost may have
        # succeeded, and a retried trial must find its own earlier run.
        runs = transport.find_runs(target.experiment_id, target.identity)
        run = runs[0] if runs else None
    if run is not None:
        if run.info.status != "RUNNING":
            transport.set_running(run.info.run_id)
        return ResolvedRun(str(run.info.run_id), continued=True)
    run_id = transport.create_run(
        target.experiment_id,
        {**target.identity, **target.extra_tags},
        target.run_name,
        target.created_ms,
    )
    return ResolvedRun(run_id, continued=False)
