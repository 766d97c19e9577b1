"""Terminal progress of a sweep (a Ray Tune callback on the driver) and the closing table."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from ray.tune import Callback

from sweeps.secrets import redact
from sweeps.spec import SweepSpec
from trainers.metrics import format_metrics, get_metric, rank_key


def knob_text(result_or_config: dict[str, Any]) -> str:
    knobs = {
        k.removeprefix("knob."): v for k, v in result_or_config.items() if k.startswith("knob.")
    }
    knobs = knobs or result_or_config
    return " ".join(f"{k}={_fmt(v)}" for k, v in sorted(knobs.items()))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class SweepProgress(Callback):
    """One line when a trial starts, reports, finishes or fails, with the running totals."""

    def __init__(self, spec: SweepSpec, stream: TextIO | None = None) -> None:
        self.metric = spec.objective.metrics[0]
        self.shown = [*spec.objective.metrics, "val_accuracy", "test_accuracy"]
        self.total = spec.budget.num_trials
        # Tune copies its callbacks: keep no stream object, look sys.stdout up when printing.
        self.stream = stream
        self.t0 = time.perf_counter()
        self.best: tuple[float, str] | None = None

    def _line(self, trials: list, text: str, ending: object = None) -> None:
        # Tune calls on_trial_complete/error before it updates the trial's status.
        done = sum(t.status in ("TERMINATED", "ERROR") or t is ending for t in trials)
        running = sum(t.status == "RUNNING" and t is not ending for t in trials)
        best = (
            f"best {self.metric} {get_metric(self.metric).format(self.best[0])} ({self.best[1]})"
            if self.best
            else "best -"
        )
        print(
            redact(
                f"[{time.perf_counter() - self.t0:6.0f}s] {done}/{self.total} done, {running} running, {best} | {text}"
            ),
            file=self.stream or sys.stdout,
            flush=True,
        )

    def on_trial_start(self, iteration, trials, trial, **info):
        self._line(trials, f"trial {trial.trial_id} started: {knob_text(trial.config)}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._line(
            trials,
            f"trial {trial.trial_id} failed (e.g. its worker died); retrying from its last checkpoint",
        )

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if (
            self.metric in result
            and not result.get("completed")
            and not result.get("done")
            and not result.get("diverged")
        ):
            self._line(
                trials,
                f"trial {trial.trial_id} epoch {result.get('epoch', 0):.1f}: "
                + format_metrics(result, self.shown),
            )

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        if r.get("diverged"):
            # The reason names the step: "non-finite training loss (nan) at step 37; ..."
            text = f"trial {trial.trial_id} DIVERGED: {r.get('status_reason')}"
            self._line(trials, text, ending=trial)
            return
        value = r.get(self.metric)
        if rank_key(self.metric, value) < rank_key(
            self.metric, self.best[0] if self.best else None
        ):
            self.best = (value, trial.trial_id)
        shown = format_metrics(r, self.shown)
        ratio = r.get("compression_ratio", float("nan"))
        text = f"trial {trial.trial_id} finished: {shown}, compression {ratio:.2f}x"
        if not r.get("completed"):
            text = (
                f"trial {trial.trial_id} stopped early by the scheduler at epoch "
                f"{r.get('epoch', 0):.1f}: {shown}"
            )
        self._line(trials, text, ending=trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        from sweeps.status import error_reason

        self._line(trials, f"trial {trial.trial_id} FAILED: {error_reason(trial)}", trial)


def best_rows(
    rows: list[dict[str, Any]], metrics: list[str], modes: list[str], top: int
) -> list[dict[str, Any]]:
    """The best ``top`` rows by the first objective, or the Pareto set for several objectives.

    Diverged rows, and rows missing an objective or holding a non-finite one, never rank.
    """
    rows = [
        r
        for r in rows
        if r.get("status") != "DIVERGED"
        and all(isinstance(r.get(m), int | float) and math.isfinite(r[m]) for m in metrics)
    ]
    sign = [1 if m == "max" else -1 for m in modes]
    if len(metrics) == 1:
        return sorted(rows, key=lambda r: -sign[0] * r[metrics[0]])[:top]

    def dominates(a: dict, b: dict) -> bool:
        ge = all(s * a[m] >= s * b[m] for m, s in zip(metrics, sign, strict=True))
        gt = any(s * a[m] > s * b[m] for m, s in zip(metrics, sign, strict=True))
        return ge and gt

    front = [r for r in rows if not any(dominates(o, r) for o in rows)]
    return sorted(front, key=lambda r: -sign[0] * r[metrics[0]])


def print_table(rows: list[dict[str, Any]], stream: TextIO | None = None) -> None:
    """Trials with validation and test accuracy side by side (selection is on validation)."""
    stream = stream or sys.stdout
    print(
        f"{'trial':<12} {'val_acc':>8} {'test_acc':>8} {'ratio':>7} {'e_w/pNR':>10}  {'knobs':<48} mlflow run",
        file=stream,
    )
    for r in rows:
        print(
            f"{r.get('trial')!s:<12} {_num(r.get('val_accuracy'), 8, '.4f')} "
            f"{_num(r.get('test_accuracy'), 8, '.4f')} {_num(r.get('compression_ratio'), 7, '.2f')} "
            f"{_num(r.get('mean_e_w_per_pnr'), 10, '.2e')}  {r.get('knobs')!s:<48} {r.get('mlflow_run') or '-'}",
            file=stream,
        )


def _num(v: Any, width: int, spec: str) -> str:
    return f"{v:>{width}{spec}}" if isinstance(v, int | float) else f"{'-':>{width}}"
