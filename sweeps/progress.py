"""Terminal progress of a sweep (a Ray Tune callback on the driver) and the closing table.

On a terminal a live view sits under the trial lines: a bar with the ETA (from the finished
trials' durations), the counts of running / done / failed trials, the best so far and each
running trial's latest evaluation; one line is printed per finished, failed or stopped trial,
with its duration. When the output is no terminal (CI, a log, ``| cat``) every event is one
plain line with the running totals instead.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import Any, TextIO

from ray.tune import Callback
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from sweeps.naming import fixed_knobs, fmt_knob, label_of, run_name
from sweeps.secrets import redact
from sweeps.settling import error_reason
from sweeps.spec import SweepSpec
from trainers.metrics import final_only, format_metrics, get_metric, pareto_set, rank_key


def knob_text(result_or_config: dict[str, Any]) -> str:
    """``pnr=13 rate=0.539``: the knobs (``knob.``-prefixed keys if any) with readable precision."""
    knobs = {
        k.removeprefix("knob."): v for k, v in result_or_config.items() if k.startswith("knob.")
    }
    knobs = knobs or result_or_config
    return " ".join(f"{k}={fmt_knob(v)}" for k, v in sorted(knobs.items()))


def duration_text(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``1h02m``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta_seconds(
    durations: list[float], remaining: int, running_elapsed: list[float], concurrency: int
) -> float | None:
    """Seconds until the sweep ends, from the mean duration of the finished trials: what the
    running trials still need plus the trials not started yet, spread over ``concurrency``
    slots. None before any trial finished."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    work = sum(max(mean - e, 0.0) for e in running_elapsed)
    work += max(remaining - len(running_elapsed), 0) * mean
    return work / max(concurrency, 1)


def wants_live(stream: TextIO) -> bool:
    """A live view only on an interactive terminal that can redraw (not ``TERM=dumb``)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


# The live view of this process (one sweep runs per driver); kept out of the callback, which
# Tune pickles with the run config.
_live: Any = None
_live_lock = threading.Lock()


def close_live() -> None:
    """Stop the live view, leaving its last frame on the terminal (before closing lines)."""
    global _live
    with _live_lock:
        if _live is not None:
            _live.stop()
            _live = None


class SweepProgress(Callback):
    """Progress of a sweep's trials: a live view on a terminal, plain lines otherwise."""

    def __init__(
        self, spec: SweepSpec, stream: TextIO | None = None, live: bool | None = None
    ) -> None:
        self.metric = spec.objective.metrics[0]
        self.shown = [*spec.objective.metrics, "val_accuracy", "test_accuracy"]
        # Before its end a trial's result holds a NaN placeholder for these (sweeps.trial):
        # lines about such a result leave them out.
        at_end = set(final_only(self.shown))
        self.shown_before_end = [m for m in self.shown if m not in at_end]
        self.total = spec.budget.num_trials
        self.concurrency = spec.budget.max_concurrent
        self.method = str(spec.train.get("compression", {}).get("method", "none"))
        self.fixed = fixed_knobs(spec.space.overrides)
        # Tune copies its callbacks: keep no stream object, look sys.stdout up when printing.
        self.stream = stream
        self.live = live  # None: decide from the stream when the first trial starts
        self.t0 = time.perf_counter()
        self.best: tuple[float, str] | None = None
        self.started: dict[str, float] = {}
        self.durations: list[float] = []
        self.failed: set[str] = set()
        self.latest: dict[str, str] = {}
        self._trials: list = []

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_trials"] = []
        return state

    # -- output ------------------------------------------------------------------------------

    def _out(self) -> TextIO:
        return self.stream or sys.stdout

    def _is_live(self) -> bool:
        if self.live is None:
            self.live = wants_live(self._out())
        return self.live

    def _counts(self, trials: list, ending: object = None) -> tuple[int, int]:
        # Tune calls on_trial_complete/error before it updates the trial's status.
        done = sum(t.status in ("TERMINATED", "ERROR") or t is ending for t in trials)
        running = sum(t.status == "RUNNING" and t is not ending for t in trials)
        return done, running

    def _best_text(self) -> str:
        if not self.best:
            return "best -"
        value, tid = self.best
        return f"best {self.metric} {get_metric(self.metric).format(value)} ({tid})"

    def _line(self, trials: list, text: str, ending: object = None, event: bool = True) -> None:
        """One trial event. Plain: a line with the totals. Live: ``event`` lines are printed
        above the view (finished, failed, stopped, retried), the rest only update it."""
        self._trials = trials
        if self._is_live():
            self._start_live()
            if event:
                elapsed = duration_text(time.perf_counter() - self.t0)
                self._console_print(redact(f"[{elapsed:>6}] {text}"))
            return
        done, running = self._counts(trials, ending)
        print(
            redact(
                f"[{time.perf_counter() - self.t0:6.0f}s] {done}/{self.total} done, {running} "
                f"running, {self._best_text()} | {text}"
            ),
            file=self._out(),
            flush=True,
        )

    def _start_live(self) -> None:
        global _live
        with _live_lock:
            if _live is not None:
                return
            console = Console(file=self._out(), highlight=False)
            _live = Live(get_renderable=self._render, console=console, refresh_per_second=2,
                         transient=False, redirect_stdout=True, redirect_stderr=True)  # fmt: skip
            _live.start()

    def _console_print(self, text: str) -> None:
        with _live_lock:
            if _live is not None:
                _live.console.print(Text(text))
                return
        print(text, file=self._out(), flush=True)

    def _render(self) -> Any:
        trials = list(self._trials)
        done, running = self._counts(trials)
        failed = len(self.failed | {t.trial_id for t in trials if t.status == "ERROR"})
        now = time.perf_counter()
        running_elapsed = [now - self.started[t.trial_id] for t in trials
                           if t.status == "RUNNING" and t.trial_id in self.started]  # fmt: skip
        eta = eta_seconds(self.durations, self.total - done, running_elapsed, self.concurrency)
        head = Table.grid(padding=(0, 1))
        head.add_row(
            ProgressBar(total=max(self.total, 1), completed=done, width=30),
            Text(
                f"{done}/{self.total} done · {running} running · {failed} failed · "
                f"{duration_text(now - self.t0)} elapsed · ETA "
                + (duration_text(eta) if eta is not None else "after the first trial")
            ),
        )
        rows: list[Any] = [head, Text(self._best_text(), style="bold")]
        for t in trials:
            if t.status != "RUNNING":
                continue
            since = self.started.get(t.trial_id)
            took = duration_text(now - since) if since is not None else "-"
            latest = self.latest.get(t.trial_id, "starting")
            rows.append(Text(f"  ▸ {self._name(t)}  {latest}  {took}"))
        return Group(*rows)

    # -- Tune hooks ----------------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.perf_counter()
        self._line(trials, f"trial {trial.trial_id} started: {self._name(trial)}", event=False)

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
            and not result.get("failed")
        ):
            shown = format_metrics(result, self.shown_before_end)
            self.latest[trial.trial_id] = f"epoch {result.get('epoch', 0):.1f}: {shown}"
            self._line(
                trials,
                f"trial {trial.trial_id} epoch {result.get('epoch', 0):.1f}: {shown}",
                event=False,
            )

    def _name(self, trial) -> str:
        """The trial's MLflow run name, e.g. ``prune r=0.80 pnr=13 · t03``."""
        return run_name(self.method, trial.config, label_of(trial), self.fixed)

    def _took(self, trial) -> str:
        since = self.started.pop(trial.trial_id, None)
        self.latest.pop(trial.trial_id, None)
        if since is None:
            return ""
        return f" (after {duration_text(time.perf_counter() - since)})"

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        since = self.started.get(trial.trial_id)
        took = self._took(trial)
        if r.get("diverged"):
            self.failed.add(trial.trial_id)
            # The reason names the step: "non-finite training loss (nan) at step 37; ..."
            text = f"trial {trial.trial_id} DIVERGED: {r.get('status_reason')}{took}"
            self._line(trials, text, ending=trial)
            return
        if r.get("failed"):  # ended itself FAILED, not retried: its configuration was refused
            self.failed.add(trial.trial_id)
            self._line(trials, f"trial {trial.trial_id} FAILED: {r.get('status_reason')}{took}",
                       ending=trial)  # fmt: skip
            return
        value = r.get(self.metric)
        # Only a trial that ran to its end can be the best, as for `best` and `analyze`: a
        # trial the scheduler stopped early reports a value from partway through.
        if r.get("completed") and rank_key(self.metric, value) < rank_key(
            self.metric, self.best[0] if self.best else None
        ):
            self.best = (value, self._name(trial))
        shown = format_metrics(r, self.shown if r.get("completed") else self.shown_before_end)
        ratio = r.get("compression_ratio", float("nan"))
        if r.get("completed"):
            if since is not None:
                self.durations.append(time.perf_counter() - since)
            took_in = took.replace(" (after ", " in ").rstrip(")")
            text = f"trial {trial.trial_id} finished{took_in}: {shown}"
            if "compression_ratio" not in self.shown:  # else already in `shown`
                text += f", compression {ratio:.2f}x"
        else:
            text = (
                f"trial {trial.trial_id} stopped early by the scheduler at epoch "
                f"{r.get('epoch', 0):.1f}: {shown}{took}"
            )
        self._line(trials, f"{text} · {self._name(trial)}", ending=trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed.add(trial.trial_id)
        took = self._took(trial)
        self._line(trials, f"trial {trial.trial_id} FAILED: {error_reason(trial)}{took}", trial)

    def on_experiment_end(self, trials, **info):
        self._trials = trials
        close_live()


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
    return pareto_set(rows, lambda r: [-s * r[m] for m, s in zip(metrics, sign, strict=True)])


_TABLE_METRICS = ("val_accuracy", "test_accuracy", "compression_ratio", "mean_e_w_per_pnr")


def print_table(
    rows: list[dict[str, Any]], stream: TextIO | None = None, objective: list[str] | None = None
) -> None:
    """Trials with validation and test accuracy side by side (selection is on validation),
    and a column for each ``objective`` metric not among those (e.g. ``params``, ``val_loss``),
    so that the metrics the rows were ranked by are all shown."""
    stream = stream or sys.stdout
    extra = [m for m in objective or [] if m not in _TABLE_METRICS]
    widths = {m: max(len(m), 10) for m in extra}
    print(
        f"{'trial':<16} {'val_acc':>8} {'test_acc':>8} {'ratio':>7} {'e_w/pNR':>10} "
        + "".join(f"{m:>{widths[m]}} " for m in extra)
        + f" {'knobs':<48} mlflow run",
        file=stream,
    )
    for r in rows:
        cells = "".join(f"{_metric_cell(r.get(m), m, widths[m])} " for m in extra)
        print(
            f"{(r.get('label', '') + ' ' + str(r.get('trial'))).strip():<16} {_num(r.get('val_accuracy'), 8, '.4f')} "
            f"{_num(r.get('test_accuracy'), 8, '.4f')} {_num(r.get('compression_ratio'), 7, '.2f')} "
            f"{_num(r.get('mean_e_w_per_pnr'), 10, '.2e')} {cells} {r.get('knobs')!s:<48} {r.get('mlflow_run') or '-'}",
            file=stream,
        )


def _metric_cell(v: Any, name: str, width: int) -> str:
    return f"{get_metric(name).format(v) if isinstance(v, int | float) else '-':>{width}}"


def _num(v: Any, width: int, spec: str) -> str:
    return f"{v:>{width}{spec}}" if isinstance(v, int | float) else f"{'-':>{width}}"
