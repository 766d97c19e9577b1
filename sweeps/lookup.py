"""Finding sweeps: by folder or by id, in the local storage folder and in the tracking store,
and telling a live sweep from one whose driver is gone."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeps.driver import DRIVER_GONE_AFTER_S, DRIVER_TAG, HEARTBEAT_TAG, PATH_TAG, parent_run_state
from sweeps.lock import holder_alive
from sweeps.records import SWEEP_FILE, SweepRecord
from sweeps.secrets import redact
from sweeps.tracking import ROLE_TAG, SWEEP_ID_TAG, default_tracking_uri, mlflow_client


@dataclass
class SweepInfo:
    """A sweep as ``status`` shows it."""

    sweep_id: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    path: str  # the sweep folder ("" if unknown)
    status: str  # MLflow status of the parent run
    tags: dict[str, str]
    budget: int | None = None

    @property
    def state(self) -> str:
        """running, orphaned (parent RUNNING, driver gone), finished, failed or stopped."""
        if self.status == "RUNNING":
            return "running" if driver_alive(self) else "orphaned"
        return {"FINISHED": "finished", "FAILED": "failed", "KILLED": "stopped"}.get(
            self.status, self.status.lower()
        )

    def last_heartbeat(self) -> float | None:
        """Epoch seconds of the driver's last heartbeat (None if it never beat)."""
        try:
            return float(self.tags[HEARTBEAT_TAG])
        except (KeyError, ValueError):
            return None


def driver_alive(info: SweepInfo) -> bool:
    """A driver holds the sweep's folder lock, or beat on the parent run recently."""
    if info.path and (Path(info.path) / SWEEP_FILE).is_file() and holder_alive(info.path):
        return True
    beat = info.last_heartbeat()
    return beat is not None and time.time() - beat < DRIVER_GONE_AFTER_S


def sweep_parent_runs(uri: str, sweep_id: str | None = None) -> list[Any]:
    """Parent runs of sweeps in the tracking store (of one sweep id if given), newest first."""
    client = mlflow_client(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    filt = f"tags.`{ROLE_TAG}` = 'sweep'"
    if sweep_id:
        if "'" in sweep_id:
            return []
        filt += f" and tags.`{SWEEP_ID_TAG}` = '{sweep_id}'"
    runs: list[Any] = []
    for i in range(0, len(experiments), 100):  # MLflow searches up to 100 experiments at once
        token = None
        while True:
            page = client.search_runs(experiments[i : i + 100], filt, max_results=1000,
                                      order_by=["attributes.start_time DESC"], page_token=token)  # fmt: skip
            runs.extend(page)
            token = page.token
            if not token:
                break
    return runs


def info_from_run(uri: str, run: Any) -> SweepInfo:
    tags = dict(run.data.tags)
    return SweepInfo(
        sweep_id=tags.get(SWEEP_ID_TAG, run.info.run_id),
        tracking_uri=uri,
        experiment_id=run.info.experiment_id,
        parent_run_id=run.info.run_id,
        path=tags.get(PATH_TAG, ""),
        status=run.info.status,
        tags=tags,
    )


def info_from_record(record: SweepRecord) -> SweepInfo:
    status, tags = parent_run_state(record.tracking_uri, record.parent_run_id)
    return SweepInfo(
        **record.facts().run_ids(),
        path=record.path,
        status=status,
        tags=tags,
        budget=(record.spec.get("budget") or {}).get("num_trials"),
    )


def resolve(sweep: str, tracking_uri: str | None = None) -> tuple[SweepInfo, SweepRecord | None]:
    """A sweep by folder (holding ``compsweep.json``) or by id (its parent run in the tracking
    store): its info, and its record when the folder is reachable from here."""
    if (Path(sweep) / SWEEP_FILE).is_file():
        record = SweepRecord.load(sweep)
        if tracking_uri:
            record.tracking_uri = tracking_uri
        return info_from_record(record), record
    uri = tracking_uri or default_tracking_uri()
    runs = sweep_parent_runs(uri, sweep)
    if not runs:
        raise FileNotFoundError(
            f"no sweep {sweep!r}: not a sweep folder (with {SWEEP_FILE}) and no sweep of that "
            f"id in MLflow at {redact(uri)}; `compsweep status` lists the sweeps"
        )
    info = info_from_run(uri, runs[0])
    record = None
    if info.path and (Path(info.path) / SWEEP_FILE).is_file():
        record = SweepRecord.load(info.path)
        record.tracking_uri = uri
        info.budget = (record.spec.get("budget") or {}).get("num_trials")
    return info, record


def describe_driver(info: SweepInfo) -> str:
    beat = info.last_heartbeat()
    ago = f", last heartbeat {time.time() - beat:.0f} s ago" if beat is not None else ""
    return f"{info.tags.get(DRIVER_TAG) or 'unknown driver'}{ago}"
