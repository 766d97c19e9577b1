"""An earlier sweep's e_opt, for ``compsweep run SPEC --eopt-from SWEEP``: read from the metrics
``compsweep analyze`` logs to that sweep's parent run (``e_opt``, ``e_opt_low``,
``e_opt_high``; suffixed ``.<metric>`` when analyzed on another metric than its own)."""

from __future__ import annotations

from typing import Any

from sweeps.results import analysis_metric, resolve_sweep
from sweeps.tracking import mlflow_client


def given_eopt(sweep: str, tracking_uri: str | None, metric: str) -> dict[str, Any]:
    """e_opt located on ``metric`` by the last analysis of ``sweep`` (a folder or an id), as
    ``search.e_opt`` of a spec takes it.

    Raises:
        FileNotFoundError: no such sweep.
        ValueError: the sweep has no analysis on ``metric`` yet, or one that found no e_opt;
            the message says what to run.
    """
    ref = resolve_sweep(sweep, tracking_uri)
    suffix = "" if analysis_metric(ref) == metric else f".{metric}"
    run = mlflow_client(ref.tracking_uri).get_run(ref.parent_run_id)
    m = run.data.metrics
    analyze = f"compsweep analyze {sweep}" + (f" --metric {metric}" if suffix else "")
    if f"e_opt_groups{suffix}" not in m:
        raise ValueError(
            f"sweep {ref.sweep_id} has no e_opt analysis on {metric} yet: run `{analyze}` "
            "first, then --eopt-from it again"
        )
    keys = [f"e_opt{suffix}", f"e_opt_low{suffix}", f"e_opt_high{suffix}"]
    if any(k not in m for k in keys) or m[f"e_opt_groups{suffix}"] == 0:
        raise ValueError(
            f"the analysis of sweep {ref.sweep_id} found no e_opt on {metric} (no strength has "
            f"its best {metric} at an interior pNR): see its report (`{analyze}`), or run "
            "without --eopt-from so that the eopt sampler runs its own pilot"
        )
    value, low, high = (float(m[k]) for k in keys)
    return {"value": value, "low": low, "high": high, "source": ref.sweep_id}
