"""After a sweep: read its trials from MLflow, analyze e_opt (with plots, logged to the
sweep's parent run), pull the best configs as ready-to-run YAML.

Works on a sweep that is still running: only finished trials count, and the report says how
many there are of how many.
"""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sweeps.analysis import Analysis, Trial, analyze, pareto_front
from sweeps.tracking import default_tracking_uri, find_trial_runs
from trainers import yamlio


@dataclass
class SweepRef:
    tracking_uri: str
    experiment_id: str
    sweep_id: str
    parent_run_id: str
    objective: list[str]


def resolve_sweep(sweep: str, tracking_uri: str | None = None) -> SweepRef:
    """A sweep by its folder (holding compsweep.json) or by its id (looked up in MLflow)."""
    from mlflow import MlflowClient

    from sweeps.runner import SWEEP_FILE, SweepRecord

    if (Path(sweep) / SWEEP_FILE).is_file():
        r = SweepRecord.load(sweep)
        return SweepRef(tracking_uri or r.tracking_uri, r.experiment_id, r.sweep_id, r.parent_run_id,
                        r.spec["objective"]["metrics"])  # fmt: skip
    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(uri)
    for exp in client.search_experiments():
        runs = client.search_runs(
            [exp.experiment_id],
            f"tags.`compsweep.role` = 'sweep' and tags.`compsweep.sweep_id` = '{sweep}'",
        )
        if runs:
            spec = _artifact_yaml(client, runs[0].info.run_id, "spec.yaml") or {}
            metrics = (spec.get("objective") or {}).get("metrics") or ["accuracy"]
            return SweepRef(uri, exp.experiment_id, sweep, runs[0].info.run_id, metrics)
    raise FileNotFoundError(
        f"no sweep {sweep!r}: not a sweep folder (with {SWEEP_FILE}) and no sweep of that id in "
        f"MLflow at {uri}; see `compsweep status` for the sweeps there"
    )


def _artifact_yaml(client: Any, run_id: str, path: str) -> Any:
    with tempfile.TemporaryDirectory() as d:
        try:
            local = client.download_artifacts(run_id, path, d)
        except Exception:
            return None
        return yamlio.load_file(local)


def _value(text: str) -> Any:
    """Params come back as strings: '0.5' -> 0.5, '1e-05' -> 1e-05, 'prune' -> 'prune'."""
    return yamlio.parse_scalar(text)


def load_trials(ref: SweepRef) -> list[Trial]:
    """Every trial run of the sweep, finished or not."""
    out = []
    for run in find_trial_runs(ref.tracking_uri, ref.experiment_id, ref.sweep_id):
        p, m = run.data.params, run.data.metrics
        knobs = {k.removeprefix("knob."): _value(v) for k, v in p.items() if k.startswith("knob.")}
        done = run.info.status == "FINISHED" and "accuracy" in m
        out.append(Trial(
            trial_id=run.data.tags.get("compsweep.trial_id", run.info.run_id),
            method=knobs.get("method") or p.get("compression.method", "?"),
            knobs=knobs,
            accuracy=m.get("accuracy"),
            mean_e_w=m.get("mean_e_w"),
            mean_e_w_per_pnr=m.get("mean_e_w_per_pnr"),
            compression_ratio=m.get("compression_ratio"),
            run_id=run.info.run_id,
            status="FINISHED" if done else run.info.status,
        ))  # fmt: skip
    return out


def write_tables(a: Analysis, trials: list[Trial], out: Path) -> list[Path]:
    by_id = {t.trial_id: t for t in trials}
    group_of = {t.trial_id: g.label for g in a.groups for t in g.trials}
    trials_csv = out / "trials.csv"
    with trials_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial_id", "method", "strength", "pnr", "accuracy", "compression_ratio",
                    "mean_e_w", "mean_e_w_per_pnr", "regularization_error", "status", "run_id"])  # fmt: skip
        for tid, t in by_id.items():
            w.writerow([tid, t.method, group_of.get(tid, ""), t.pnr, t.accuracy, t.compression_ratio,
                        t.mean_e_w, t.mean_e_w_per_pnr, a.reg_error.get(tid, ""), t.status, t.run_id])  # fmt: skip
    pnr_csv = out / "suggested_pnr.csv"
    with pnr_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["strength", "trials", "best_accuracy", "best_pnr", "median_mean_e_w", "suggested_pnr"]
        )
        for g in a.groups:
            w.writerow([g.label, len(g.trials), g.best.accuracy, g.best.pnr,
                        sorted(t.mean_e_w for t in g.trials)[len(g.trials) // 2], a.suggested_pnr[g.label]])  # fmt: skip
    return [trials_csv, pnr_csv]


def plot(a: Analysis, trials: list[Trial], out: Path) -> list[Path]:
    """The papers' figures as PNGs: accuracy vs regularization error, accuracy over pNR per
    strength, and the accuracy/compression Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    colors = plt.cm.viridis([i / max(len(a.groups) - 1, 1) for i in range(len(a.groups))])

    fig, ax = plt.subplots(figsize=(7, 5))
    for g, c in zip(a.groups, colors, strict=True):
        ax.scatter([a.reg_error[t.trial_id] for t in g.trials], [t.accuracy for t in g.trials],
                   color=c, label=g.label, s=36, edgecolor="black", linewidth=0.4)  # fmt: skip
    ax.set_xlabel("regularization error |e_w/pNR − e_opt|  (mean |Δw| per mini-batch)")
    ax.set_ylabel("test accuracy after the last distortion (fraction)")
    ax.set_title(f"Accuracy vs regularization error  (e_opt = {a.e_opt:.3g}, {a.used} trials)")
    ax.grid(alpha=0.3)
    ax.legend(title="compression strength", fontsize=8)
    paths.append(_save(fig, out / "accuracy_vs_regularization_error.png"))

    fig, ax = plt.subplots(figsize=(7, 5))
    for g, c in zip(a.groups, colors, strict=True):
        pts = sorted((t.pnr, t.accuracy) for t in g.trials if t.pnr is not None)
        ax.plot([p for p, _ in pts], [acc for _, acc in pts], "o-", color=c, label=g.label)
        ax.axvline(a.suggested_pnr[g.label], color=c, linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("pNR (optimizer steps between distortions, log scale)")
    ax.set_ylabel("test accuracy after the last distortion (fraction)")
    ax.set_title("Accuracy over pNR per compression strength (dotted: suggested pNR = e_w/e_opt)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="compression strength", fontsize=8)
    paths.append(_save(fig, out / "accuracy_over_pnr.png"))

    fig, ax = plt.subplots(figsize=(7, 5))
    pts = [t for t in trials if t.usable and t.compression_ratio is not None]
    front = pareto_front(pts)
    ax.scatter([t.compression_ratio for t in pts], [t.accuracy for t in pts], color="lightgray",
               edgecolor="gray", label="trials")  # fmt: skip
    fr = sorted(front, key=lambda t: t.compression_ratio)
    ax.plot(
        [t.compression_ratio for t in fr],
        [t.accuracy for t in fr],
        "o-",
        color="crimson",
        label="Pareto front",
    )
    ax.set_xlabel("compression ratio (dense params / compressed params, ×)")
    ax.set_ylabel("test accuracy after the last distortion (fraction)")
    ax.set_title("Accuracy vs compression: the Pareto front")
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(_save(fig, out / "pareto_front.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def run_analysis(
    ref: SweepRef, bins: int = 5, out_dir: str | None = None
) -> tuple[Analysis, list[Trial], list[Path]]:
    """Analyze the sweep and log e_opt, tables and plots to its parent run (``analysis/``)."""
    from mlflow import MlflowClient

    trials = load_trials(ref)
    a = analyze(trials, bins=bins)
    out = Path(out_dir or tempfile.mkdtemp(prefix="compsweep-analysis-"))
    out.mkdir(parents=True, exist_ok=True)
    files = write_tables(a, trials, out) + plot(a, trials, out)
    client = MlflowClient(ref.tracking_uri)
    client.log_metric(ref.parent_run_id, "e_opt", a.e_opt)
    client.log_metric(ref.parent_run_id, "analyzed_trials", a.used)
    for f in files:
        client.log_artifact(ref.parent_run_id, str(f), "analysis")
    return a, trials, files


def best_configs(
    ref: SweepRef, top: int = 1, pareto: bool = False, metric: str | None = None
) -> list[dict[str, Any]]:
    """The best trials' resolved training configs with provenance, best first."""
    from mlflow import MlflowClient

    metric = metric or ref.objective[0]
    client = MlflowClient(ref.tracking_uri)
    runs = [r for r in find_trial_runs(ref.tracking_uri, ref.experiment_id, ref.sweep_id)
            if r.info.status == "FINISHED" and metric in r.data.metrics]  # fmt: skip
    if not runs:
        raise ValueError(f"sweep {ref.sweep_id} has no finished trial with metric {metric!r} yet")
    if pareto:
        by_run = {t.run_id: t for t in load_trials(ref)}
        chosen_ids = [t.run_id for t in pareto_front(by_run.values())]
        chosen = [r for rid in chosen_ids for r in runs if r.info.run_id == rid]
    else:
        descending = metric not in ("params", "macs", "test_loss")
        chosen = sorted(runs, key=lambda r: r.data.metrics[metric], reverse=descending)[:top]
    out = []
    for r in chosen:
        config = _artifact_yaml(client, r.info.run_id, "config.yaml")
        if config is None:
            raise FileNotFoundError(f"trial run {r.info.run_id} has no config.yaml artifact")
        keep = ("accuracy", "compression_ratio", "params", "macs", "mean_e_w_per_pnr")
        out.append({
            "provenance": {
                "sweep_id": ref.sweep_id,
                "trial_id": r.data.tags.get("compsweep.trial_id"),
                "run_id": r.info.run_id,
                "experiment_id": ref.experiment_id,
                "tracking_uri": ref.tracking_uri,
                "metrics": {k: r.data.metrics[k] for k in keep if k in r.data.metrics},
            },
            "config": config,
        })  # fmt: skip
    return out


def write_best(configs: list[dict[str, Any]], path: str, selected_by: str) -> None:
    doc = {"selected_by": selected_by, "configs": configs}
    tmp = f"{path}.tmp"
    Path(tmp).write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)
