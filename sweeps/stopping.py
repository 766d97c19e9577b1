"""``compsweep stop``: stop a sweep gracefully, wherever its driver runs, and settle its runs.

The request goes where every driver looks: the tag ``compsweep.stop_requested`` on the sweep's
parent run (a driver on this machine also gets ``SIGUSR1`` at once). The driver then stops
Tune as Ctrl-C would, settles every open run KILLED and exits; the sweep stays resumable. A
driver that is gone (killed, ``ray job stop``) cannot answer: its orphaned runs are settled
here instead.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TextIO

from ray.job_submission import JobSubmissionClient

from sweeps.cluster import ray_auth_env
from sweeps.driver import RAY_JOB_TAG, STOP_TAG, parent_run_state, set_run_tags
from sweeps.lock import read_holder
from sweeps.lookup import SweepInfo, describe_driver, driver_alive, resolve
from sweeps.records import SweepFacts
from sweeps.secrets import redact
from sweeps.settling import settle_trial_run
from sweeps.tracking import STATUS_REASON_TAG, STATUS_TAG, find_trial_runs, finish_run


def _say(stream: TextIO | None, text: str) -> None:
    print(redact(text), file=stream or sys.stdout, flush=True)


def latest_checkpoint(path: str, trial_id: str) -> str | None:
    """The newest checkpoint folder of a trial in the sweep folder (None if none is there)."""
    if not path or not Path(path).is_dir():
        return None
    found = sorted(Path(path).glob(f"*{trial_id}*/checkpoint_*"))
    return str(found[-1]) if found else None


def settle_orphans(info: SweepInfo, reason: str) -> int:
    """End every trial run of the sweep still RUNNING as KILLED (``killed``), with what its
    latest checkpoint held unsent; then the parent run. Returns how many trial runs."""
    facts = SweepFacts(info.sweep_id, info.tracking_uri, info.experiment_id, info.parent_run_id)
    tags = {STATUS_TAG: "killed", STATUS_REASON_TAG: reason}
    n = 0
    for run in find_trial_runs(info.tracking_uri, info.experiment_id, info.sweep_id):
        if run.info.status not in ("RUNNING", "SCHEDULED"):
            continue
        tid = run.data.tags.get("compsweep.trial_id", "")
        settle_trial_run(facts, tid, "KILLED", latest_checkpoint(info.path, tid), tags)
        n += 1
    status, _ = parent_run_state(info.tracking_uri, info.parent_run_id)
    if status == "RUNNING":
        set_run_tags(info.tracking_uri, info.parent_run_id, {STATUS_TAG: "killed"})
        finish_run(info.tracking_uri, info.parent_run_id, "KILLED")
    return n


def _signal_local_driver(path: str) -> bool:
    """SIGUSR1 to the driver holding the sweep on this machine, if there is one."""
    holder = read_holder(path) if path else None
    if holder is None or holder.released or holder.host != socket.gethostname():
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(holder.pid, signal.SIGUSR1)
        return True
    return False


def _stop_ray_job(address: str, job_id: str, stream: TextIO | None) -> None:
    os.environ.update(ray_auth_env())
    try:
        JobSubmissionClient(address).stop_job(job_id)
        _say(stream, f"stopped Ray job {job_id}")
    except Exception as e:
        _say(
            stream, f"could not stop Ray job {job_id} at {address}: {str(e).splitlines()[0][:200]}"
        )


def stop_sweep(
    sweep: str,
    *,
    tracking_uri: str | None = None,
    address: str | None = None,
    timeout: float = 120.0,
    stream: TextIO | None = None,
) -> int:
    """Stop ``sweep`` (folder or id) and settle its runs; returns the exit code."""
    info, _ = resolve(sweep, tracking_uri)
    resume_hint = f"continue it with: compsweep resume {info.path or info.sweep_id}"
    if info.status != "RUNNING":
        n = settle_orphans(info, "stopped by `compsweep stop`")
        _say(stream, f"sweep {info.sweep_id} is not running (parent run {info.status})"
                     + (f"; settled {n} open trial run(s)" if n else ""))  # fmt: skip
        return 0
    request = f"{time.strftime('%Y-%m-%d %H:%M:%S')} by {getpass.getuser()}@{socket.gethostname()}"
    set_run_tags(info.tracking_uri, info.parent_run_id, {STOP_TAG: request})
    signalled = _signal_local_driver(info.path)
    if signalled or driver_alive(info):
        _say(stream, f"asked the driver of {info.sweep_id} to stop ({describe_driver(info)})")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _ = parent_run_state(info.tracking_uri, info.parent_run_id)
            if status != "RUNNING":
                _say(stream, f"sweep {info.sweep_id} stopped (parent run {status}); {resume_hint}")
                return 0
            time.sleep(1.0)
        _say(stream, f"the driver did not stop within {timeout:g} s")
        job = info.tags.get(RAY_JOB_TAG)
        if job and address:
            _stop_ray_job(address, job, stream)
        elif job:
            _say(stream, f"it runs as Ray job {job}: pass --address to stop the job too")
    else:
        _say(stream, f"the driver of {info.sweep_id} is gone ({describe_driver(info)})")
    n = settle_orphans(info, "stopped by `compsweep stop`; its driver did not answer")
    _say(stream, f"settled {n} open trial run(s) and the parent run as KILLED; {resume_hint}")
    return 0
