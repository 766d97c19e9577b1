"""Orchestration overhead of a real sweep: wall time vs the trials' own time, in one run.

Runs ``sweeps.runner.run_sweep`` (local Ray, Optuna TPE, Tune checkpoints at every
evaluation, MLflow tracking) on N trials of a small CNN on synthetic 8x8 data (prune, pNR
searched in [10, 50], rate in [0.7, 0.9]), at most C at a time, each holding ``--cpus`` CPUs.
The default ``--steps`` makes a trial last about 30 s on a quiet 2-core machine with C = 2.

Measured:

* one-off, before ``run_sweep`` and timed apart: the tracking store (the experiment created
  in another process: a new SQLite database gets its tables, or the ``mlflow server`` starts;
  never included).
* sweep wall: from the ``run_sweep`` call to its return, as in ``compsweep run``: Ray's local
  start (side by side with the driver's ``import mlflow`` and the parent run), Tune, searcher,
  trial processes, the final table. Trial processes are reused (``reuse_actors``): only the
  first trial of each slot pays for a new process (imports of torch and mlflow).
* each trial's own time, two ways, both read back from MLflow:
  - training time (the ratio's denominator): ``Trainer.fit`` of the trial, from its metric
    timestamps. The first point is logged at the first distortion (pNR steps into ``fit()``),
    the last one (the final metrics) right after ``fit()``; the first pNR steps are added at
    the run's mean pace. It includes what a trial does inside ``fit()`` for Tune and MLflow
    (a checkpoint + report and a tracker flush at every evaluation).
  - run time (shown for comparison): the child run's ``end_time - start_time``. The run
    starts when the trial's ``TrialTracker`` is created (its first line of work, after Ray
    started the trial's process and imported the code) and ends at ``tracker.close()``, so it
    also holds the trial's start-up inside the process: building the Trainer (which imports
    ``torch._dynamo`` through ``torch.optim``) while the tracker imports mlflow, and the export
    and close at the end.

Printed: wall / (sum of trial times / C), target <= 1.2, for each combination; and where the
idle slot time went (lead-in before the first trial, hand-over gaps between trials, tail).
The lead-in is paid once per sweep and the hand-over once per trial: the default of 8 trials
(4 per slot) is the low end of a real sweep; ``--trials 4`` shows a sweep of 2 per slot.

    .venv/bin/python bench/sweep_overhead.py [--trials 8] [--concurrency 2] [--steps 6000]
    .venv/bin/python bench/sweep_overhead.py --trials 2 --steps 200   # quick check
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sweeps.runner import run_sweep
from sweeps.spec_checks import parse_spec
from sweeps.tracking import find_trial_runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mlflow_server import MlflowServer  # noqa: E402


def make_spec(args: argparse.Namespace, storage: Path, uri: str) -> dict:
    return {
        "name": "bench-sweep-overhead",
        "train": {
            "data": {
                "name": "synthetic",
                "batch_size": 32,
                "options": {"n_train": args.n_train, "n_test": 256},
            },
            "model": {"name": args.model},
            "optim": {"optimizer": "sgd", "momentum": 0.9},
            "compression": {
                "params": {"schedule": "gradual"},
                "targets": {"min_params": 10},
            },
            "run": {"steps": args.steps, "eval_every": 1.0, "device": "cpu"},
        },
        "space": {
            "name": "prune",
            "overrides": {
                "pnr": {"low": 10, "high": 50},
                "rate": {"low": 0.7, "high": 0.9},
                "lr": 0.05,
            },
        },
        "budget": {"num_trials": args.trials, "max_concurrent": args.concurrency},
        "resources": {"cpus": args.cpus},
        "failure": {"max_failures": 0},
        "storage": {"path": str(storage)},
        "tracking": {"uri": uri},
    }


def training_time_s(client, run) -> tuple[float, float]:
    """(span, estimated fit time) of a run, in seconds, from its metric timestamps.

    span: first logged point (the first distortion, pNR steps into ``fit()``) to the last
    (the final metrics, logged right after ``fit()``). The fit time adds the first pNR steps
    at the span's mean pace: span * last_step / (last_step - first_step)."""
    first = last = None  # (timestamp ms, step)
    for key in run.data.metrics:
        for m in client.get_metric_history(run.info.run_id, key):
            if first is None or m.timestamp < first[0]:
                first = (m.timestamp, m.step)
            if last is None or m.timestamp > last[0]:
                last = (m.timestamp, m.step)
    if first is None or last is None or last[1] <= first[1]:
        return 0.0, 0.0
    span = (last[0] - first[0]) / 1000
    return span, span * last[1] / (last[1] - first[1])


def handover_gaps(runs: list[tuple[float, float]], slots: int) -> list[float]:
    """Seconds from a slot's previous trial ending to the next trial starting in it (trials
    beyond the first ``slots``; the k-th trial to start takes the slot freed by the
    (k - slots)-th trial to end)."""
    starts = sorted(s for s, _ in runs)
    ends = sorted(e for _, e in runs)
    return [starts[k] - ends[k - slots] for k in range(slots, len(starts))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=2, help="budget.max_concurrent")
    ap.add_argument("--cpus", type=float, default=1.0, help="CPUs per trial")
    ap.add_argument("--steps", type=int, default=6000, help="steps per trial (~30 s by default)")
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--n-train", type=int, default=8192, help="synthetic training samples")
    ap.add_argument(
        "--tracking",
        choices=("sqlite", "server"),
        default="sqlite",
        help="embedded store or server",
    )
    ap.add_argument("--show-progress", action="store_true", help="print the sweep's own output")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

    import ray

    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="compsweep-bench-sweep-"))
    server = None
    server_start = 0.0
    try:
        if args.tracking == "server":
            server = MlflowServer(root / "server")
            t = time.perf_counter()
            server.start()
            server_start = time.perf_counter() - t
            uri = server.uri
        else:
            uri = f"sqlite:///{root / 'mlflow.db'}"
        spec = parse_spec(make_spec(args, root / "results", uri))
        # One-off, in another process so this driver still imports mlflow inside run_sweep as
        # `compsweep run` does: a new SQLite database gets its tables (an existing one would not).
        t = time.perf_counter()
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); "
            "from sweeps.tracking import ensure_experiment; ensure_experiment(sys.argv[2], sys.argv[3])"
        )
        repo = str(Path(__file__).resolve().parents[1])
        subprocess.run([sys.executable, "-c", code, repo, uri, spec.name], check=True)
        store_setup = time.perf_counter() - t

        # run_sweep starts a local Ray, as `compsweep run` does (a RAY_ADDRESS would be joined).
        out = sys.stdout if args.show_progress else io.StringIO()
        t0_epoch, t0 = time.time(), time.perf_counter()
        record = run_sweep(spec, stream=out)
        sweep_wall = time.perf_counter() - t0
        ray_cpus = ray.cluster_resources().get("CPU", 0)
        t1_epoch = time.time()
        load_after = os.getloadavg()

        from mlflow import MlflowClient

        client = MlflowClient(uri)
        runs = find_trial_runs(uri, record.experiment_id, record.sweep_id)
        rows = []
        for run in runs:
            info = run.info
            span, fit = training_time_s(client, run)
            rows.append(
                {
                    "trial": run.data.tags.get("compsweep.trial_id", "?"),
                    "status": info.status,
                    "start": info.start_time / 1000,
                    "end": (info.end_time or info.start_time) / 1000,
                    "run_s": ((info.end_time or info.start_time) - info.start_time) / 1000,
                    "span_s": span,
                    "fit_s": fit,
                    "pnr": run.data.params.get("knob.pnr", "?"),
                    "steps": int(run.data.metrics.get("steps", 0)),
                    "acc": run.data.metrics.get("val_accuracy", float("nan")),
                }
            )
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if server is not None:
            server.stop()

    c = args.concurrency
    rows.sort(key=lambda r: r["start"])
    sum_fit = sum(r["fit_s"] for r in rows)
    sum_run = sum(r["run_s"] for r in rows)
    print(
        f"sweep of {args.trials} trials, max_concurrent {c}, {args.cpus:g} CPU each "
        f"(Ray sees {ray_cpus:g} CPUs): {args.model} on synthetic 8x8 ({args.n_train} train, "
        f"batch 32), prune, {args.steps} steps, eval + Tune checkpoint every epoch; tracking: "
        f"{'mlflow server on 127.0.0.1' if server else 'embedded SQLite store'}"
    )
    if len(rows) != args.trials or any(r["status"] != "FINISHED" for r in rows):
        print(f"WARNING: {len(rows)} trial runs, statuses {[r['status'] for r in rows]}")
    for r in rows:
        print(
            f"  {r['trial']}: pNR {r['pnr']:>3}, {r['steps']} steps, val_accuracy {r['acc']:.3f}, "
            f"training {r['fit_s']:5.1f}s, MLflow run {r['run_s']:5.1f}s, run starts at "
            f"+{r['start'] - t0_epoch:5.1f}s, ends at +{r['end'] - t0_epoch:5.1f}s"
        )
    what = "mlflow server start" if server else "new SQLite store's tables"
    print(
        f"one-off, before run_sweep: experiment + {what} {store_setup + server_start:.1f}s "
        f"(excluded from wall below)"
    )
    print(f"sweep wall, run_sweep call (Ray not started) to return: {sweep_wall:.1f}s")
    print(
        f"sum of training times {sum_fit:.1f}s (median {statistics.median(r['fit_s'] for r in rows):.1f}s); "
        f"sum of MLflow run times {sum_run:.1f}s (median {statistics.median(r['run_s'] for r in rows):.1f}s)"
    )
    if rows:
        gaps = handover_gaps([(r["start"], r["end"]) for r in rows], c)
        lead = rows[0]["start"] - t0_epoch
        tail = t1_epoch - max(r["end"] for r in rows)
        gap_txt = (
            f"hand-over gaps (a run ends -> the next run starts) median "
            f"{statistics.median(gaps):.1f}s {[round(g, 1) for g in gaps]}"
            if gaps
            else "no hand-over (trials <= concurrency)"
        )
        print(
            f"outside the runs: lead-in (call -> first run starts) {lead:.1f}s; {gap_txt}; "
            f"tail (last run ends -> return) {tail:.1f}s"
        )
    for label, denom in (("training times", sum_fit), ("MLflow run times", sum_run)):
        if denom <= 0:
            continue
        ideal = denom / c
        print(f"wall / (sum of {label} / C): {sweep_wall / ideal:.3f}   target <= 1.2")
    print(
        f"load average: before {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {' '.join(f'{x:.2f}' for x in load_after)} ({os.cpu_count()} CPUs)"
    )
    if args.keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
