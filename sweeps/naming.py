"""How knobs, trials and links read: the same short forms on the terminal and in MLflow.

A trial run is named by what it is, e.g. ``prune r=0.80 pnr=13 · t03``: the compression
method, its searched knobs (pNR last) and the trial's number in the sweep.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from sweeps.secrets import split_credentials
from trainers.metrics import get_metric

# Knob names shortened in run names (the terminal and the params keep the full names).
SHORT_KNOBS = {"rate": "r"}


def as_number(v: Any) -> Any:
    """``v``, or the int/float a string holds (MLflow returns params as strings)."""
    if isinstance(v, str):
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
    return v


def fmt_knob(v: Any) -> str:
    """A knob value with the precision a person reads: 3 significant digits for floats
    (``0.539``, ``0.05``, ``1e-05``), integers and words as they are."""
    v = as_number(v)
    if isinstance(v, bool) or not isinstance(v, float):
        return str(v)
    if not math.isfinite(v):
        return str(v)
    return f"{v:.3g}"


def _fmt_name_value(v: Any) -> str:
    v = as_number(v)
    if isinstance(v, float) and math.isfinite(v) and 0.01 <= abs(v) < 100:
        return f"{v:.2f}"
    return fmt_knob(v)


def tune_trial_name(trial: Any) -> str:
    """Tune's display name of a trial (``TuneConfig.trial_name_creator``): ``t03-ab12cd34``,
    its number in the sweep (from the search's ``3_...`` experiment tag) and its id. Trial
    processes read it back (``tune.get_context().get_trial_name()``) to name their run."""
    number, _, _ = str(getattr(trial, "experiment_tag", "") or "").partition("_")
    return f"t{int(number):02d}-{trial.trial_id}" if number.isdigit() else str(trial.trial_id)


def trial_label(trial_name_or_id: str) -> str:
    """``t03`` from a trial name ``t03-ab12cd34``; a name without a number stays as it is."""
    head, sep, _ = str(trial_name_or_id).partition("-")
    return head if sep and head[:1] == "t" and head[1:].isdigit() else str(trial_name_or_id)


def label_of(trial: Any) -> str:
    """The short label (``t03``) of a Tune trial on the driver."""
    return trial_label(tune_trial_name(trial))


def label_of_run_name(name: str) -> str:
    """``t03`` from a run name ``prune r=0.80 pnr=13 · t03``; empty for other names."""
    head, sep, tail = name.rpartition(" · ")
    return tail if sep and trial_label(tail + "-") == tail else ""


def run_name(method: str, knobs: dict[str, Any], label: str, fixed: Iterable[str] = ()) -> str:
    """``prune r=0.80 pnr=13 · t03``: method, the searched knobs (pNR last; ``fixed`` ones,
    set to one value in the spec, left out) and the trial's label."""
    skip = set(fixed)
    knobs = {k.removeprefix("knob."): v for k, v in knobs.items()}
    method = str(knobs.pop("method", method))
    knobs = {k: v for k, v in knobs.items() if k not in skip}
    order = sorted(k for k in knobs if k != "pnr") + (["pnr"] if "pnr" in knobs else [])
    parts = [f"{SHORT_KNOBS.get(k, k)}={_fmt_name_value(knobs[k])}" for k in order]
    return " ".join([method, *parts]) + f" · {label}"


def fixed_knobs(overrides: dict[str, Any]) -> set[str]:
    """Knobs a spec's ``space.overrides`` pin to one value (a scalar, not a range)."""
    return {k for k, v in overrides.items() if not isinstance(v, dict | list)}


def runs_view_link(base: str, experiment_id: str, order_by: str | None = None) -> str:
    """The MLflow UI's runs table of an experiment (MLflow 3 opens its GenAI pages without
    ``workflowType=machine_learning``). ``order_by`` (a metric) sorts it best first, which
    also lists the trial runs the table otherwise folds under their sweep's run."""
    link = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if order_by:
        ascending = get_metric(order_by).direction == "min"
        link += f"&orderByKey=metrics.%60{order_by}%60&orderByAsc={str(ascending).lower()}"
    return link


def browse_hint(
    tracking_uri: str, experiment_id: str, run_id: str | None = None, order_by: str | None = None
) -> str:
    """Where to see an experiment's runs (or one run) in the MLflow UI, as one line: the
    server's page for an MLflow server, ``compsweep ui`` and its page for an SQLite store."""
    ui = "http://127.0.0.1:5000"
    if tracking_uri.startswith(("http://", "https://")):
        base, how = split_credentials(tracking_uri)[0] or tracking_uri, "Browse it at"
    elif tracking_uri.startswith("sqlite"):
        base, how = ui, "Browse it with `compsweep ui` and open"
    else:
        return ""
    link = (
        run_link(base, experiment_id, run_id)
        if run_id
        else runs_view_link(base, experiment_id, order_by)
    )
    return f"{how} {link}"


def run_link(base: str, experiment_id: str, run_id: str) -> str:
    """One run's page in the MLflow UI, in the machine-learning workflow."""
    return (
        f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
        "?workflowType=machine_learning"
    )
