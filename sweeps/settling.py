"""Driver-side settling of trial runs.

A trial that Tune ended without the trial closing its own MLflow run (stopped early by ASHA,
cut by the sweep's time budget, failed for good, or stopped with the sweep) gets its run settled here, with any points its
last checkpoint still held unsent, and a ``compsweep.status`` tag saying how it ended.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from ray.train import Checkpoint
from ray.train._internal.session import _TrainingResult
from ray.tune import Callback

from sweeps.records import TRACKER_FILE, SweepFacts
from sweeps.tracking import STATUS_REASON_TAG, STATUS_TAG, TrialTracker, find_trial_runs

# Per sweep id, in the driver process (Tune may copy callback objects, so not on them): Tune's
# live list of trials, and the ids of trials that really ended (completed, stopped early, failed
# or diverged), in this driver or before it. After Ctrl-C Tune marks the trials it stops
# TERMINATED as well: only these ids tell an ended trial from an interrupted one.
_LIVE_TRIALS: dict[str, list] = {}
_ENDED: dict[str, set[str]] = {}
# Per sweep id: trials the sweep's time budget cut (Tune stops them without ending them).
_BUDGET_CUT: dict[str, set[str]] = {}


def settle_trial_run(
    facts: SweepFacts,
    trial_id: str,
    status: str,
    checkpoint_dir: str | None,
    tags: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> bool:
    """Flush what the trial's latest checkpoint held, tag the run and set its final status."""
    state = None
    if checkpoint_dir and (Path(checkpoint_dir) / TRACKER_FILE).is_file():
        with open(Path(checkpoint_dir) / TRACKER_FILE, "rb") as f:
            state = pickle.load(f)
    tracker = TrialTracker(**facts.run_ids(), trial_id=trial_id, state=state)
    if tags:
        tracker.set_tags(tags)
    return tracker.close(status=status, timeout=timeout)


def _checkpoint_dir(trial: Any) -> str | None:
    ckpt = getattr(trial, "checkpoint", None)
    path = getattr(ckpt, "path", None)
    return path if path and Path(path).is_dir() else None


def repoint_stale_checkpoint(trial: Any) -> bool:
    """Point a restored trial at its newest checkpoint on disk when the one Tune's saved state
    names is gone; True if it did.

    Tune deletes a trial's older checkpoints (``num_to_keep``) as soon as it registers a new
    one, but saves the experiment state only every so often. A driver killed between the two
    (or whose storage stopped taking the state) leaves a state that names a deleted checkpoint,
    and Tune would fail the trial at restore. The newest checkpoint on disk is the trial's true
    latest state (its tracker state included), so the trial continues from there. Runs before
    Tune restores anything (at the first step of a resumed sweep); local storage only.
    """
    try:
        ckpt = trial.checkpoint
        if ckpt is None or Path(ckpt.path).is_dir():
            return False
        trial_dir = Path(trial.storage.trial_fs_path)
        found = sorted(trial_dir.glob("checkpoint_*"), key=lambda p: p.name)
        if not trial_dir.is_dir() or not found:
            return False
        manager = trial.run_metadata.checkpoint_manager
        stale = manager.latest_checkpoint_result
        newest = _TrainingResult(checkpoint=Checkpoint(str(found[-1])), metrics=stale.metrics)
        manager._checkpoint_results = [
            r for r in manager._checkpoint_results if Path(r.checkpoint.path).is_dir()
        ] + [newest]
        manager._latest_checkpoint_result = newest
        # Next checkpoints after the newest, never over an existing one.
        trial.storage.current_checkpoint_index = int(found[-1].name.split("_")[-1]) + 1
        trial.run_metadata.invalidate_cache()
    except Exception:  # Tune's internals moved: leave the trial as Tune restored it
        return False
    return True


def error_reason(trial: Any) -> str:
    """What ended a failed trial, as one line (``ValueError: ...``, or that its worker died)."""
    text = ""
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        text = Path(path).read_text(errors="replace")
    return reason_from_error_text(text)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# "ValueError: ...", "sweeps.tracking.TrackingUnavailable: ...": a class name, capitalized. Not
# the lower-case fields (``ip: 127.0.0.1``, ``pid: 42``) Ray lists about a dead actor.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Z]\w*):(.*)$")
_WORKER_DIED = "the trial's worker process died (killed by a signal or out of memory)"


def reason_from_error_text(text: str) -> str:
    """One line from the ``error.txt`` Ray writes for a failed trial.

    Ray writes either the trial's traceback, ending in the exception raised in the trainable;
    or, when the worker process is gone, a report of the dead actor (its ``pid:``, ``ip:``, ...
    fields, then why); or a report of the workers its memory monitor killed. The last two say
    what happened first, then Ray's own one-line cause.
    """
    lines = [_ANSI.sub("", ln).rstrip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        return "unknown error (see the trial's log)"
    joined = "\n".join(lines)
    if "killed due to the node running low on memory" in joined or "OutOfMemoryError" in joined:
        cause = next((ln.strip() for ln in lines if ln.startswith("OOM kill reason:")), "")
        why = "the trial's worker was killed by Ray for running low on memory"
        return f"{why}: {cause.removeprefix('OOM kill reason:').strip()}"[:500] if cause else why
    if any(k in joined for k in ("actor died unexpectedly", "process has died", "node has died")):
        if "its node has died" in joined:
            return "the node running the trial's worker died"
        # "... Worker exit detail: Worker unexpectedly exits with ... End of file. Some common
        # causes include: ...": the detail, without the list of guesses after it.
        m = re.search(r"Worker exit detail: (.*?)(?: Some common causes|$)", joined, re.M)
        return f"{_WORKER_DIED}: {m.group(1).strip()}"[:500] if m else _WORKER_DIED
    # A traceback ends in the exception: the first unindented line after the last frame (its
    # message may go on over more lines; the first says what it is).
    frames = [i for i, ln in enumerate(lines) if ln.lstrip().startswith('File "')]
    after = lines[frames[-1] + 1 :] if frames else lines
    for line in after:
        m = _EXCEPTION_LINE.match(line.strip())
        if m and not line[:1].isspace():
            return f"{m.group(1)}:{m.group(2)}"[:500]  # sweeps.tracking.X -> X
    for line in reversed(lines):
        m = _EXCEPTION_LINE.match(line.strip())
        if m:
            return f"{m.group(1)}:{m.group(2)}"[:500]
    return lines[-1].strip()[:500]


def tune_trials(sweep_id: str) -> list:
    """The trials Tune knew in this driver process for ``sweep_id`` (empty if none)."""
    return list(_LIVE_TRIALS.get(sweep_id, []))


def unended_trials(sweep_id: str) -> list:
    """Trials Tune knew that did not really end: stopped with the sweep (Ctrl-C, ``stop``)."""
    ended = _ENDED.get(sweep_id, set())
    return [t for t in tune_trials(sweep_id) if t.trial_id not in ended]


def budget_cut_trials(sweep_id: str) -> list:
    """Trials Tune stopped when the sweep's time budget ran out (``budget.time_budget_s``)."""
    cut = _BUDGET_CUT.get(sweep_id, set())
    return [t for t in tune_trials(sweep_id) if t.trial_id in cut]


def forget(sweep_id: str) -> None:
    """Drop this process's bookkeeping of a sweep (before it is resumed in this process)."""
    _LIVE_TRIALS.pop(sweep_id, None)
    _ENDED.pop(sweep_id, None)
    _BUDGET_CUT.pop(sweep_id, None)


class TrialRunStatus(Callback):
    """Settles runs as Tune ends trials: early-stopped ones KILLED (``stopped``), trials that
    failed for good FAILED (``failed``, with :func:`error_reason` as the reason); a diverged
    trial has settled its own run (FAILED, with the reason) and is left alone."""

    def __init__(self, facts: SweepFacts) -> None:
        self.facts = facts

    def on_step_begin(self, iteration, trials, **info):
        sweep_id = self.facts.sweep_id
        if sweep_id not in _LIVE_TRIALS:  # first step: trials that ended before a resume
            ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
            _ENDED.setdefault(sweep_id, set()).update(ended)
            for trial in trials:
                if trial.status not in ("TERMINATED",):
                    repoint_stale_checkpoint(trial)
        _LIVE_TRIALS[sweep_id] = trials

    def on_step_end(self, iteration, trials, **info):
        # When the time budget runs out, Tune marks every live trial TERMINATED within the step
        # (no on_trial_complete); after Ctrl-C or `stop` it stops them only after the last step.
        # So a trial TERMINATED here that did not end is one the budget cut (the budget is the
        # only experiment-wide stop a sweep sets). Without a budget, nothing is taken for one.
        if not (self.facts.spec.get("budget") or {}).get("time_budget_s"):
            return
        sweep_id = self.facts.sweep_id
        ended = _ENDED.setdefault(sweep_id, set())
        cut = {t.trial_id for t in trials if t.status == "TERMINATED" and t.trial_id not in ended}
        if cut:
            ended.update(cut)
            _BUDGET_CUT.setdefault(sweep_id, set()).update(cut)

    def on_trial_complete(self, iteration, trials, trial, **info):
        _ENDED.setdefault(self.facts.sweep_id, set()).add(trial.trial_id)
        result = trial.last_result or {}
        if result.get("completed") or result.get("diverged") or result.get("failed"):
            return  # the trial closed its own run (FINISHED, or FAILED: diverged or refused)
        epoch = result.get("epoch")
        where = f" at epoch {epoch:.2f}" if isinstance(epoch, int | float) else ""
        tags = {STATUS_TAG: "stopped", STATUS_REASON_TAG: f"stopped early by the scheduler{where}"}
        settle_trial_run(self.facts, trial.trial_id, "KILLED", _checkpoint_dir(trial), tags)

    def on_trial_error(self, iteration, trials, trial, **info):
        _ENDED.setdefault(self.facts.sweep_id, set()).add(trial.trial_id)
        tags = {STATUS_TAG: "failed", STATUS_REASON_TAG: error_reason(trial)}
        settle_trial_run(self.facts, trial.trial_id, "FAILED", _checkpoint_dir(trial), tags)


def settle_budget_cut(facts: SweepFacts, reason: str) -> int:
    """End the runs of the trials the time budget cut KILLED (``stopped``, with ``reason``),
    with what their last checkpoint held. Returns how many."""
    tags = {STATUS_TAG: "stopped", STATUS_REASON_TAG: reason}
    cut = budget_cut_trials(facts.sweep_id)
    for trial in cut:
        settle_trial_run(facts, trial.trial_id, "KILLED", _checkpoint_dir(trial), tags)
    return len(cut)


def settle_open_runs(facts: SweepFacts, reason: str) -> int:
    """After ``fit()`` returned: end every run of the sweep still open KILLED (``killed``), the
    trials Tune stopped with the sweep with what their last checkpoint held. Returns how many."""
    tags = {STATUS_TAG: "killed", STATUS_REASON_TAG: reason}
    settled = 0
    known = {t.trial_id for t in tune_trials(facts.sweep_id)}
    for trial in unended_trials(facts.sweep_id):
        settle_trial_run(facts, trial.trial_id, "KILLED", _checkpoint_dir(trial), tags)
        settled += 1
    try:
        runs = find_trial_runs(facts.tracking_uri, facts.experiment_id, facts.sweep_id)
    except Exception:
        return settled
    for run in runs:
        if run.info.status in ("RUNNING", "SCHEDULED"):
            tid = run.data.tags.get("compsweep.trial_id", "")
            why = (
                reason if tid in known else f"{reason}; its trial is not in the sweep's saved state"
            )
            settle_trial_run(facts, tid, "KILLED", None, {**tags, STATUS_REASON_TAG: why})
            settled += 1
    return settled
