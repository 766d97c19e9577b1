"""``compsweep status``: the sweeps in the storage folder and the tracking store, or one sweep's
trials, each with how it ended and why."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import TextIO

from sweeps.lookup import (
    SweepInfo,
    describe_driver,
    info_from_record,
    info_from_run,
    resolve,
    sweep_parent_runs,
)
from sweeps.outcomes import STATES, run_state
from sweeps.records import SWEEP_FILE, SweepRecord
from sweeps.secrets import redact
from sweeps.tracking import (
    STATUS_REASON_TAG,
    default_tracking_uri,
    find_trial_runs,
    is_auth_error,
)
from trainers.metrics import METRICS, rank_key


def _tracking_error(uri: str, e: Exception) -> str:
    first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    if is_auth_error(e):
        return (f"MLflow at {uri} refused the credentials ({first}); set "
                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")  # fmt: skip
    return f"cannot read MLflow at {uri}: {first}"


def _counts(info: SweepInfo) -> tuple[Counter, list]:
    runs = find_trial_runs(info.tracking_uri, info.experiment_id, info.sweep_id)
    return Counter(run_state(r.info.status, dict(r.data.tags)) for r in runs), runs


def _line(info: SweepInfo, counts: Counter) -> str:
    total = sum(counts.values())
    of = f"/{info.budget}" if info.budget else ""
    parts = ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s]) or "no trial runs yet"
    state = info.state
    line = f"{info.sweep_id:<44} {state:<9} {total}{of} trials ({parts})"
    if info.status != "RUNNING" and info.tags.get(STATUS_REASON_TAG):  # e.g. its time budget
        line += f"; {info.tags[STATUS_REASON_TAG]}"
    if state == "orphaned":
        where = info.path or info.sweep_id
        line += (f"; driver gone ({describe_driver(info)}): settle with `compsweep stop {where}` "
                 f"or continue with `compsweep resume {where}`")  # fmt: skip
    return line


def _local_records(storage: str) -> list[SweepRecord]:
    records = []
    for f in sorted(Path(storage).glob(f"*/{SWEEP_FILE}")):
        try:
            records.append(SweepRecord.load(f.parent))
        except (OSError, ValueError, TypeError):
            continue
    return records


def show_status(
    sweep: str | None,
    *,
    storage: str = "compsweep_results",
    tracking_uri: str | None = None,
    stream: TextIO | None = None,
) -> int:
    out = stream or sys.stdout
    if sweep:
        return _show_one(sweep, tracking_uri, out)
    infos: dict[str, SweepInfo] = {}
    errors: list[str] = []
    for record in _local_records(storage):
        try:
            infos[record.sweep_id] = info_from_record(record)
        except Exception as e:
            errors.append(f"{record.sweep_id}: {_tracking_error(record.tracking_uri, e)}")
    uri = tracking_uri or default_tracking_uri()
    try:
        if not uri.startswith("sqlite:") or Path(uri.split(":///", 1)[-1]).is_file():
            for run in sweep_parent_runs(uri):
                info = info_from_run(uri, run)
                infos.setdefault(info.sweep_id, info)
    except Exception as e:
        errors.append(_tracking_error(uri, e))
    for e in errors:
        print(redact(f"error: {e}"), file=sys.stderr)
    if not infos:
        if not errors:
            print(f"no sweeps under {storage} or in MLflow at {redact(uri)}", file=out)
        return 2 if errors else 1
    for info in sorted(infos.values(), key=lambda i: i.sweep_id):
        try:
            counts, _ = _counts(info)
        except Exception as e:
            print(
                redact(f"{info.sweep_id:<44} ?         {_tracking_error(info.tracking_uri, e)}"),
                file=out,
            )
            continue
        print(redact(_line(info, counts)), file=out)
    return 2 if errors else 0


def _show_one(sweep: str, tracking_uri: str | None, out: TextIO) -> int:
    # Ray, via the progress table: only for one sweep's trials, so the list of sweeps is fast.
    from sweeps.progress import print_table
    from sweeps.sweep_end import trial_rows

    try:
        info, record = resolve(sweep, tracking_uri)
        counts, runs = _counts(info)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        print(
            redact(f"error: {_tracking_error(tracking_uri or default_tracking_uri(), e)}"),
            file=sys.stderr,
        )
        return 2
    print(redact(_line(info, counts)), file=out)
    if info.path:
        print(f"folder: {info.path}", file=out)
    if record is None:
        record = SweepRecord(info.sweep_id, info.path, {}, info.tracking_uri, info.experiment_id,
                             info.parent_run_id)  # fmt: skip
    rows = trial_rows(record, runs)
    metrics = (record.spec.get("objective") or {}).get("metrics") or ["val_accuracy"]
    objective = metrics[0]
    if objective in METRICS:
        rows.sort(key=lambda r: (r["status"] != "finished", rank_key(objective, r.get(objective))))
    print_table(rows, out, [m for m in metrics if m in METRICS])
    reasons = [
        (r.data.tags.get("compsweep.trial_id"), run_state(r.info.status, dict(r.data.tags)),
         r.data.tags.get(STATUS_REASON_TAG, ""))
        for r in runs
        if run_state(r.info.status, dict(r.data.tags)) not in ("finished",)
    ]  # fmt: skip
    for tid, state, why in reasons:
        print(redact(f"  trial {tid} {state}" + (f": {why}" if why else "")), file=out)
    return 0
