"""The end of a sweep's driver run: every trial run settled and counted by how it really
ended (:mod:`sweeps.outcomes`), the parent run closed with the counts, and the summary printed
(best trials, where to look next)."""

from __future__ import annotations

import time
from typing import Any, TextIO

from mlflow.entities import Metric, RunTag

from sweeps.driver import STOP_TAG, parent_run_state
from sweeps.naming import browse_hint, label_of_run_name
from sweeps.outcomes import Outcome, run_state
from sweeps.progress import best_rows, knob_text, print_table
from sweeps.quiet import active_log
from sweeps.records import SweepRecord
from sweeps.secrets import redact
from sweeps.settling import (
    budget_cut_trials,
    settle_budget_cut,
    settle_open_runs,
    tune_trials,
    unended_trials,
)
from sweeps.spec import SweepSpec, from_dict_spec
from sweeps.tracking import (
    STATUS_REASON_TAG,
    STATUS_TAG,
    find_trial_runs,
    finish_run,
    mlflow_client,
)


def say(stream: TextIO | None, text: str) -> None:
    """A line for the user, credentials redacted."""
    print(redact(text), file=stream, flush=True)


def trial_rows(record: SweepRecord, runs: list | None = None) -> list[dict[str, Any]]:
    """One row per trial run (``runs`` if already read, else the sweep's from MLflow): id,
    state, final metrics, knobs and MLflow run id."""
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


# How the parent run's reason tag starts when the sweep ended on its time budget: resume reads
# it back.
BUDGET_END = "ended on its time budget"


def budget_text(spec: SweepSpec) -> str:
    return f"time budget of {spec.budget.time_budget_s:g} s"


def _ended_on_budget(spec: SweepSpec, sweep_id: str, interrupted: bool) -> bool:
    """The time budget ended the sweep: it cut running trials, or Tune started fewer trials
    than asked for (it starts no more once the budget is spent) and was not interrupted."""
    if spec.budget.time_budget_s is None:
        return False
    started = len(tune_trials(sweep_id))
    return bool(budget_cut_trials(sweep_id)) or (
        not interrupted and 0 < started < spec.budget.num_trials
    )


def finish_sweep(
    record: SweepRecord, stream: TextIO | None, stop_request: str | None, crash: str | None = None
) -> Outcome:
    """Settle and count the sweep's trial runs after Tune returned (or failed with ``crash``),
    close the parent run with the counts and print the summary; returns the outcome."""
    spec = from_dict_spec(record.spec)
    interrupted = _interrupted(spec, record.sweep_id) and crash is None
    on_budget = _ended_on_budget(spec, record.sweep_id, interrupted or crash is not None)
    if spec.budget.time_budget_s is not None:
        # The trials the budget cut stopped as asked: not killed, not resumable.
        settle_budget_cut(record.facts(), f"{budget_text(spec)} reached")
    stop_request = stop_request or _stop_requested(record)
    reason = f"stopped on request ({stop_request})" if stop_request else "interrupted (Ctrl-C)"
    if crash is not None:
        reason = f"the sweep's driver failed: {crash}"
        say(stream, f"\nerror: {reason}")
    # Every run still open is settled: stopped trials KILLED (resumable), with what their last
    # checkpoint held; runs of trials Tune no longer knows as well.
    settle_open_runs(record.facts(), reason)
    try:
        runs = find_trial_runs(record.tracking_uri, record.experiment_id, record.sweep_id)
    except Exception as e:  # the tracking store is gone: say so rather than guess
        say(
            stream,
            f"\ncannot read the trial runs back from MLflow ({str(e).splitlines()[0][:200]})",
        )
        runs = []
    outcome = Outcome.from_runs(runs, interrupted, spec.budget.num_trials)
    outcome.crashed = crash is not None
    _close_parent(
        record, outcome, f"{BUDGET_END} of {spec.budget.time_budget_s:g} s" if on_budget else ""
    )
    say(stream, f"\n{outcome.summary()}.")
    if on_budget:
        say(stream, budget_end_text(spec))
    if interrupted:
        say(
            stream,
            f"sweep {'stopped' if stop_request else 'interrupted'}; continue it with: compsweep resume {record.path}",
        )
    if outcome.unsuccessful:
        say(stream, f"see why in `compsweep status {record.path}`; retry the failed trials "
                     f"with `compsweep resume --retry-failed {record.path}`")  # fmt: skip
    rows = [r for r in trial_rows(record, runs) if r["status"] == "finished"]
    if rows:
        metrics, modes = list(spec.objective.metrics), spec.objective.modes()
        best = best_rows(rows, metrics, modes, top=5)
        title = "Pareto front" if len(metrics) > 1 else f"best finished trials by {metrics[0]}"
        say(stream, f"{title}:")
        print_table(best, stream, metrics)
    say(
        stream,
        f"\nMLflow: experiment {spec.tracking.experiment or spec.name!r} (id {record.experiment_id}), "
        f"parent run {record.parent_run_id}, tracking URI {record.tracking_uri}",
    )
    ui = _ui_hint(record)
    if ui:
        say(stream, ui)
    say(stream, f"Sweep state: {record.path}")
    log = active_log()
    if log is not None and log.path is not None and log.warnings:
        say(stream, f"Ray, Optuna and MLflow logged {log.warnings} warning(s): {log.path}")
    return outcome


def _stop_requested(record: SweepRecord) -> str | None:
    """The stop request on the parent run (``compsweep stop`` signals a local driver at once,
    before its heartbeat reads the tag)."""
    try:
        return parent_run_state(record.tracking_uri, record.parent_run_id)[1].get(STOP_TAG) or None
    except Exception:
        return None


def _ui_hint(record: SweepRecord) -> str:
    spec = from_dict_spec(record.spec)
    return browse_hint(
        record.tracking_uri, record.experiment_id, order_by=spec.objective.metrics[0]
    )


def budget_end_text(spec: SweepSpec) -> str:
    return (
        f"sweep ended on its {budget_text(spec)} (budget.time_budget_s): the trials it cut count "
        "as stopped and no more start; to search further, start a sweep with a larger budget"
    )


def ended_on_budget_note(record: SweepRecord) -> str:
    """``ended on its time budget of … s`` if the sweep's last driver ended on its time budget
    (from the parent run), else ``""``."""
    try:
        status, tags = parent_run_state(record.tracking_uri, record.parent_run_id)
    except Exception:
        return ""
    reason = tags.get(STATUS_REASON_TAG, "")
    return reason if status != "RUNNING" and reason.startswith(BUDGET_END) else ""


def report_budget_end(record: SweepRecord, stream: TextIO | None) -> Outcome:
    """``resume`` of a sweep its time budget ended: nothing to continue; say so and count how
    its trials ended."""
    spec = from_dict_spec(record.spec)
    runs = find_trial_runs(record.tracking_uri, record.experiment_id, record.sweep_id)
    outcome = Outcome.from_runs(runs, False, spec.budget.num_trials)
    say(stream, f"{outcome.summary()}.\n{budget_end_text(spec)}; nothing to resume")
    if outcome.unsuccessful:
        say(stream, f"retry the failed trials with `compsweep resume --retry-failed {record.path}`")
    return outcome


def _close_parent(record: SweepRecord, outcome: Outcome, reason: str = "") -> None:
    try:
        client = mlflow_client(record.tracking_uri)
        now = int(time.time() * 1000)
        state = {"KILLED": "killed", "FINISHED": "finished"}.get(outcome.parent_status(), "failed")
        client.log_batch(
            record.parent_run_id,
            metrics=[Metric(k, v, now, 0) for k, v in outcome.metrics().items()],
            tags=[
                RunTag(STATUS_TAG, state),
                RunTag(STATUS_REASON_TAG, reason),
                RunTag(STOP_TAG, ""),
            ],
        )
        finish_run(record.tracking_uri, record.parent_run_id, outcome.parent_status())
    except Exception:  # noqa: S110
        # The runs themselves are safe; a parent left RUNNING shows as orphaned in `status`
        # and is settled by `stop` or `resume`.
        pass
