"""After a sweep: read its trials from MLflow (knobs with their types), analyze e_opt (report,
tables and plots logged to the sweep's parent run), pull the best configs as ready-to-run YAML.

Works on a sweep that is still running: only trials that finished cleanly count, and the
report lists every other one with its reason.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sweeps.analysis import Analysis, Trial, analyze
from sweeps.analysis_plots import plot_all
from sweeps.analysis_report import report_lines, write_tables
from sweeps.lookup import sweep_parent_runs
from sweeps.naming import fmt_knob
from sweeps.outcomes import incomplete, run_outcome
from sweeps.records import SWEEP_FILE, SweepRecord
from sweeps.secrets import redact
from sweeps.tracking import (
    STATUS_REASON_TAG,
    STATUS_TAG,
    TRIAL_ID_TAG,
    default_tracking_uri,
    find_trial_runs,
    mlflow_client,
)
from trainers import yamlio
from trainers.metrics import (
    DEFAULT_OBJECTIVE,
    check_selectable,
    pareto_set,
    rank_key,
    validation_metrics,
)
from trainers.yamlio import parse_scalar


@dataclass
class SweepRef:
    tracking_uri: str
    experiment_id: str
    sweep_id: str
    parent_run_id: str
    objective: list[str]
    pnr_range: tuple[float, float] | None = None  # the space's, when its spec says


def space_pnr_range(spec: dict[str, Any]) -> tuple[float, float] | None:
    """The smallest and largest pNR a sweep's space can draw (over every branch, after the
    spec's overrides); None when it has no pNR knob or the spec does not say."""
    from search_spaces import branches

    try:
        space = spec["space"]
        found = [
            k["pnr"] for k in branches(space["name"], space.get("overrides") or {}) if "pnr" in k
        ]
    except Exception:  # an old or foreign spec: the range is unknown
        return None
    values: list[float] = []
    for d in found:
        values += {"fixed": [d.get("value")], "categorical": d.get("choices", [])}.get(
            d["kind"], [d.get("low"), d.get("high")]
        )
    values = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return (min(values), max(values)) if values else None


def resolve_sweep(sweep: str, tracking_uri: str | None = None) -> SweepRef:
    """A sweep by its folder (holding compsweep.json) or by its id (looked up in MLflow)."""
    if (Path(sweep) / SWEEP_FILE).is_file():
        r = SweepRecord.load(sweep)
        return SweepRef(tracking_uri or r.tracking_uri, r.experiment_id, r.sweep_id, r.parent_run_id,
                        r.spec["objective"]["metrics"], space_pnr_range(r.spec))  # fmt: skip
    uri = tracking_uri or default_tracking_uri()
    runs = sweep_parent_runs(uri, sweep)
    if runs:
        run = runs[0]
        spec = _artifact_yaml(mlflow_client(uri), run.info.run_id, "spec.yaml") or {}
        metrics = (spec.get("objective") or {}).get("metrics") or [DEFAULT_OBJECTIVE]
        return SweepRef(
            uri, run.info.experiment_id, sweep, run.info.run_id, metrics, space_pnr_range(spec)
        )
    raise FileNotFoundError(
        f"no sweep {sweep!r}: not a sweep folder (with {SWEEP_FILE}) and no sweep of that id in "
        f"MLflow at {redact(uri)}; see `compsweep status` for the sweeps there"
    )


def _artifact_yaml(client: Any, run_id: str, path: str) -> Any:
    with tempfile.TemporaryDirectory() as d:
        try:
            local = client.download_artifacts(run_id, path, d)
        except Exception:
            return None
        return yamlio.load_file(local)


# What Python's str() writes for values YAML reads differently (or not at all).
_STR_SPECIALS: dict[str, Any] = {"None": None, "null": None, "True": True, "False": False,
                                 "inf": math.inf, "-inf": -math.inf, "nan": math.nan}  # fmt: skip
_PLAIN_INT = re.compile(r"^[-+]?[0-9]+$")
_PLAIN_FLOAT = re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$")


def knob_value(text: str) -> Any:
    """A knob's value from its MLflow param text (written with ``str()``), with its type.

    ``1e-05``, ``1.0e-3``, ``1E5``, ``.5`` and ``0.001`` are floats, ``37`` an int, ``True`` a
    bool, ``None`` None, ``inf`` / ``nan`` floats, ``[1, 2]`` a list. Anything else stays the
    text it is: a categorical choice such as ``prune``, ``gradual`` or ``on`` is never turned
    into a bool, a date or a hex number.
    """
    if text in _STR_SPECIALS:
        return _STR_SPECIALS[text]
    value = parse_scalar(text)
    if isinstance(value, bool):
        return value if text in ("true", "false") else text
    if isinstance(value, int):
        return value if _PLAIN_INT.match(text) else text
    if isinstance(value, float):
        return value if _PLAIN_FLOAT.match(text) else text
    if isinstance(value, list | dict):
        return value
    return text


# Validation metrics ``analyze`` can locate optima on (loaded into each trial's ``metrics``).
ANALYZABLE = frozenset(validation_metrics())


def _float(metrics: dict[str, float], key: str) -> float | None:
    v = metrics.get(key)
    return float(v) if v is not None else None


def load_trials(ref: SweepRef) -> list[Trial]:
    """Every trial run of the sweep, finished or not, with typed knobs, validation and test
    metrics and how the run ended (the analysis decides which ones count)."""
    out = []
    for run in find_trial_runs(ref.tracking_uri, ref.experiment_id, ref.sweep_id):
        p, m, tags = run.data.params, run.data.metrics, run.data.tags
        knobs = {
            k.removeprefix("knob."): knob_value(v) for k, v in p.items() if k.startswith("knob.")
        }
        if "pnr" not in knobs and "compression.pnr" in p:  # pNR fixed in the base config
            knobs["pnr"] = knob_value(p["compression.pnr"])
        knobs.pop("seed", None)  # a grid's replicate axis: the run's seed, not a knob
        seed = knob_value(p["run.seed"]) if "run.seed" in p else None
        out.append(Trial(
            trial_id=tags.get(TRIAL_ID_TAG, run.info.run_id),
            method=knobs.get("method") or p.get("compression.method", "?"),
            knobs=knobs,
            val_accuracy=_float(m, "val_accuracy"),
            mean_e_w=_float(m, "mean_e_w"),
            mean_e_w_per_pnr=_float(m, "mean_e_w_per_pnr"),
            test_accuracy=_float(m, "test_accuracy"),
            compression_ratio=_float(m, "compression_ratio"),
            run_id=run.info.run_id,
            status=run.info.status,
            outcome=tags.get(STATUS_TAG),
            outcome_reason=tags.get(STATUS_REASON_TAG),
            seed=seed if isinstance(seed, int) else None,
            steps=_float(m, "steps"),
            metrics={k: float(v) for k, v in m.items() if k in ANALYZABLE},
        ))  # fmt: skip
    return out


def analysis_metric(ref: SweepRef, metric: str | None = None) -> str:
    """The metric ``analyze`` locates optima on: ``metric`` if given, else the sweep's first
    objective when it is a validation metric, else validation accuracy."""
    if metric is not None:
        return metric
    first = ref.objective[0] if ref.objective else None
    return first if first in ANALYZABLE else DEFAULT_OBJECTIVE


def run_analysis(
    ref: SweepRef, bins: int = 5, out_dir: str | None = None, metric: str | None = None
) -> tuple[Analysis, list[Path]]:
    """Analyze the sweep; log e_opt (when supported), its range and group count, the tables,
    the report and the plots to its parent run (``analysis/``); ``out_dir`` keeps a copy.

    Metrics are logged at step = the number of trial runs analyzed, so analyses of a running
    sweep form a history. ``metric``: see :func:`analysis_metric`. An analysis on another
    metric than the sweep's own logs apart, so that neither overwrites the other:
    ``e_opt.val_loss``, … and ``analysis/val_loss/``.
    """
    own = analysis_metric(ref)
    metric = analysis_metric(ref, metric)
    suffix, folder = ("", "analysis") if metric == own else (f".{metric}", f"analysis/{metric}")
    a = analyze(load_trials(ref), bins=bins, metric=metric, pnr_range=ref.pnr_range)
    keep = out_dir is not None
    out = Path(out_dir) if keep else Path(tempfile.mkdtemp(prefix="compsweep-analysis-"))
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.txt"
    report.write_text("\n".join(report_lines(a, ref.sweep_id)) + "\n")
    files = [report, *write_tables(a, out), *plot_all(a, out)]
    client = mlflow_client(ref.tracking_uri)
    # The counts the report prints: trial runs analyzed, and the configurations they make once
    # identical runs are folded.
    analyzed = len(a.used) + a.folded
    step = analyzed
    metrics = {
        "e_opt_groups": len(a.usable_groups),
        "analyzed_trials": analyzed,
        "analyzed_configurations": len(a.used),
    }
    if a.centre is not None:
        metrics.update(e_opt=a.e_opt, e_opt_low=a.e_opt_low, e_opt_high=a.e_opt_high)
    for key, value in metrics.items():
        client.log_metric(ref.parent_run_id, key + suffix, float(value), step=step)
    for f in files:
        client.log_artifact(ref.parent_run_id, str(f), folder)
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return a, files if keep else []


@dataclass
class BestConfigs:
    """What ``compsweep best`` chose, and which trials it could not consider."""

    configs: list[dict[str, Any]]  # provenance + config, best first
    diverged: list[tuple[str, str]]  # (trial id, reason) of diverged trials: never ranked
    unranked: int  # other trials without a finished, finite value of the metric
    left_out: list[tuple[str, str]]  # (configuration, why) of configurations with a bad run
    metric: str  # what the configs are shown and ranked (or the front taken) by
    front: list[str]  # with pareto: the metrics the front is taken on, else empty


def best_args_problem(top: int, pareto: bool, metric: str | None) -> str | None:
    """What is wrong with ``best``'s arguments before any sweep is read, or None."""
    if top < 1:
        return f"--top must be >= 1 (how many of the best configurations to write), got {top}"
    if pareto and metric is not None:
        return ("--pareto takes the Pareto set of the sweep's objectives, and --metric ranks "
                f"the --top K: pass one of --pareto and --metric {metric}")  # fmt: skip
    return None


def best_configs(
    ref: SweepRef, top: int = 1, pareto: bool = False, metric: str | None = None
) -> BestConfigs:
    """The best configurations' resolved training configs with provenance, best first.

    Ranks by ``metric`` (default: the sweep's first objective) in its catalogue direction,
    or takes the Pareto set of :func:`pareto_metrics` (``pareto``, without ``metric``); refuses test-split and direction-less metrics. Runs with the same knobs are
    one configuration and count by their mean; a configuration counts only when every run of
    it finished with a finite value: one failed, diverged, stopped, killed or still running
    run leaves it out (see :func:`sweeps.outcomes.incomplete`).
    """
    problem = best_args_problem(top, pareto, metric)
    if problem:
        raise ValueError(problem)
    front = pareto_metrics(ref) if pareto else []
    metric = front[0] if pareto else metric or ref.objective[0]
    problem = check_selectable(metric)
    if problem:
        raise ValueError(problem)
    runs = find_trial_runs(ref.tracking_uri, ref.experiment_id, ref.sweep_id)
    why_not = {r.info.run_id: _why_unranked(r, metric) for r in runs}
    diverged = [(r.data.tags.get(TRIAL_ID_TAG, r.info.run_id),
                 r.data.tags.get(STATUS_REASON_TAG, "")) for r in runs
                if r.data.tags.get(STATUS_TAG) == "diverged"]  # fmt: skip
    unranked = sum(1 for r in runs if why_not[r.info.run_id]
                   and r.data.tags.get(STATUS_TAG) != "diverged")  # fmt: skip
    ranked, left_out = [], []
    for rs in _same_configuration(runs):
        why = incomplete((r.data.params.get("run.seed"), why_not[r.info.run_id]) for r in rs)
        if why is None:
            ranked.append(rs)
        elif len(rs) > 1:  # a lone run is reported above, as diverged or unranked
            left_out.append((_configuration_label(rs), why))
    if not ranked:
        notes = [f"{len(diverged)} diverged"] if diverged else []
        notes += [f"left out {label}: {why}" for label, why in left_out]
        raise ValueError(
            f"sweep {ref.sweep_id} has no finished trial with a finite {metric!r} yet"
            + (f" ({'; '.join(notes)})" if notes else "")
        )
    if pareto:
        chosen = _pareto_front(ranked, front)
        if not chosen:
            raise ValueError(f"sweep {ref.sweep_id} has no finished configuration with a finite "
                             f"{' and '.join(map(repr, front))} yet")  # fmt: skip
    else:
        # A configuration run with several seeds ranks by its mean: the luckiest seed of a
        # noisy replicate would flatter it.
        chosen = sorted(ranked, key=lambda rs: rank_key(metric, _mean(rs, metric)))[:top]
    keep = ("val_accuracy", "test_accuracy", "compression_ratio", "params", "macs",
            "mean_e_w_per_pnr", metric, *front)  # fmt: skip
    client = mlflow_client(ref.tracking_uri)
    out = []
    for rs in chosen:
        r = rs[0]  # the configuration's first seed stands for it
        config = _artifact_yaml(client, r.info.run_id, "config.yaml")
        if config is None:
            raise FileNotFoundError(f"trial run {r.info.run_id} has no config.yaml artifact")
        metrics = {k: _mean(rs, k) for k in dict.fromkeys(keep)
                   if all(k in x.data.metrics for x in rs)}  # fmt: skip
        provenance = {
            "sweep_id": ref.sweep_id,
            "trial_id": r.data.tags.get(TRIAL_ID_TAG),
            "run_id": r.info.run_id,
            "experiment_id": ref.experiment_id,
            "tracking_uri": ref.tracking_uri,
            "metrics": metrics,
        }
        if len(rs) > 1:
            # Every run the means are over, also two of the same seed (a sampler that drew
            # the same configuration twice): a list, so that none hides another.
            provenance["runs"] = [
                {"run_id": x.info.run_id, "trial_id": x.data.tags.get(TRIAL_ID_TAG),
                 "seed": _seed(x), metric: x.data.metrics[metric]}
                for x in rs
            ]  # fmt: skip
        out.append({"provenance": provenance, "config": config})
    return BestConfigs(out, diverged, unranked, left_out, metric, front)


def averaged_over(provenance: dict[str, Any]) -> str:
    """``mean of 4 seeds`` / ``mean of 2 runs (1 seed)`` for a ``best`` entry averaged over
    several runs, empty for one run."""
    runs = provenance.get("runs") or []
    if len(runs) < 2:
        return ""
    seeds = len({str(x.get("seed")) for x in runs})
    if seeds == len(runs):
        return f"mean of {seeds} seeds"
    return f"mean of {len(runs)} runs ({seeds} seed{'s' if seeds > 1 else ''})"


def _why_unranked(run: Any, metric: str) -> str | None:
    """Why a run cannot count for ``best`` (how it ended, or no finite value), or None."""
    tags = run.data.tags
    ended = run_outcome(run.info.status, tags.get(STATUS_TAG), tags.get(STATUS_REASON_TAG))
    if ended:
        return ended
    return None if _finite(run, metric) else f"without a finite {metric}"


def _finite(run: Any, metric: str) -> bool:
    return math.isfinite(rank_key(metric, run.data.metrics.get(metric)))


def pareto_metrics(ref: SweepRef) -> list[str]:
    """What ``best --pareto`` trades off: the sweep's objectives when it has several, else
    validation accuracy against compression ratio."""
    return list(ref.objective) if len(ref.objective) > 1 else ["val_accuracy", "compression_ratio"]


def _pareto_front(configs: list[list[Any]], metrics: list[str]) -> list[list[Any]]:
    """The configurations no other beats on the means of every one of ``metrics`` (in their
    catalogue directions), each once, best first by the first; a configuration missing one,
    or holding a non-finite one, is left out, as in every ranking."""
    pts = [rs for rs in configs if all(_finite(r, m) for r in rs for m in metrics)]
    return pareto_set(pts, lambda rs: [rank_key(m, _mean(rs, m)) for m in metrics])


def _mean(runs: list[Any], metric: str) -> float:
    return sum(r.data.metrics[metric] for r in runs) / len(runs)


def _seed(run: Any) -> Any:
    seed = run.data.params.get("run.seed")
    return knob_value(seed) if seed is not None else None


def _knobs(run: Any) -> tuple:
    return tuple(sorted((k, v) for k, v in run.data.params.items()
                        if k.startswith("knob.") and k != "knob.seed"))  # fmt: skip


def _configuration_label(runs: list[Any]) -> str:
    """``lr=10 pnr=7 (trials a, b, c, d)``: a configuration's knobs and its trials."""
    knobs = " ".join(f"{k.removeprefix('knob.')}={fmt_knob(v)}" for k, v in _knobs(runs[0]))
    trials = ", ".join(str(r.data.tags.get(TRIAL_ID_TAG, r.info.run_id)) for r in runs)
    return f"{knobs} (trials {trials})" if knobs else f"trials {trials}"


def _same_configuration(runs: list[Any]) -> list[list[Any]]:
    """Runs grouped by configuration (every knob but the seed), lowest seed first."""
    groups: dict[tuple, list[Any]] = {}
    for r in runs:
        # Without knob params (e.g. an old run) a run is its own configuration.
        groups.setdefault(_knobs(r) or (r.info.run_id,), []).append(r)
    return [
        sorted(rs, key=lambda r: _seed_order(r.data.params.get("run.seed")))
        for rs in groups.values()
    ]


def _seed_order(seed: str | None) -> tuple[int, str]:
    value = knob_value(seed) if seed is not None else None
    return (value, "") if isinstance(value, int) else (1 << 62, str(seed))


def write_best(configs: list[dict[str, Any]], path: str, selected_by: str) -> None:
    doc = {"selected_by": selected_by, "configs": configs}
    tmp = f"{path}.tmp"
    Path(tmp).write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)
