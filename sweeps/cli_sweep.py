"""The sweep commands of ``compsweep``: run, submit, resume, stop, status, analyze, best,
schema and ui.

Modules that import Ray, MLflow, torch or Optuna are imported inside the command that needs
them, so that ``compsweep --help`` and the light commands start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweeps.cli_input import (
    check_lookup_store,
    check_tracking_uri_arg,
    output_path_problems,
    read_spec,
)
from sweeps.lock import SweepBusy
from sweeps.lookup import resolve
from sweeps.outcomes import EXIT_BAD_INPUT, EXIT_BUSY
from sweeps.records import SWEEP_FILE
from sweeps.secrets import redact, split_credentials
from sweeps.status_view import show_status
from sweeps.tracking import check_tracking_uri, default_tracking_uri
from sweeps.ui import StoreMissing, check_store, serve, sqlite_file
from trainers.metrics import format_metrics


def cmd_analyze(args: argparse.Namespace) -> int:
    """Exit 0 whenever the analysis ran, also when the sweep cannot support an e_opt (that is
    a finding, printed with what to run next, and no e_opt metric is logged); 2 on bad input."""
    # The analysis imports numpy (and matplotlib to plot): not for --help and the other commands.
    from sweeps.analysis_report import report_lines
    from sweeps.results import resolve_sweep, run_analysis

    if args.bins < 1:
        print(f"error: --bins must be >= 1, got {args.bins}", file=sys.stderr)
        return 2
    check_lookup_store(args.tracking_uri, args.sweep)
    try:
        ref = resolve_sweep(args.sweep, args.tracking_uri)
        a, files = run_analysis(ref, bins=args.bins, out_dir=args.output, metric=args.metric)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(report_lines(a, ref.sweep_id)))
    logged = "e_opt, its range, " if a.centre is not None else ""
    print(f"logged {logged}e_opt_groups, the report, tables and plots to parent run "
          f"{ref.parent_run_id} (artifacts analysis/)"
          + (f"; copies in {args.output}" if args.output else ""))  # fmt: skip
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    # numpy, as in cmd_analyze
    from sweeps.results import (
        averaged_over,
        best_args_problem,
        best_configs,
        resolve_sweep,
        write_best,
    )

    problem = best_args_problem(args.top, args.pareto, args.metric)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for p in output_path_problems(Path(args.output), "-o"):
        print(f"error: {p}", file=sys.stderr)
        return EXIT_BAD_INPUT
    check_lookup_store(args.tracking_uri, args.sweep)
    try:
        ref = resolve_sweep(args.sweep, args.tracking_uri)
        best = best_configs(ref, top=args.top, pareto=args.pareto, metric=args.metric)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metric, front = best.metric, best.front
    selected = f"pareto({', '.join(front)})" if args.pareto else f"top {args.top} by {metric}"
    write_best(best.configs, args.output, selected)
    for reason in (f"trial {tid} diverged: {why}" for tid, why in best.diverged):
        print(f"skipped {reason}")
    if best.unranked:
        print(f"skipped {best.unranked} trial(s) not finished or without a finite {metric}")
    for label, why in best.left_out:
        print(f"left out: {label}: {why} (a configuration ranks only when all its runs finished)")
    for i, c in enumerate(best.configs):
        m = c["provenance"]["metrics"]
        shown = format_metrics(m, [*front, metric, "val_accuracy", "test_accuracy"])
        mean = averaged_over(c["provenance"])
        shown = f"{mean} {shown}" if mean else shown
        if "compression_ratio" not in shown:
            shown += f", compression {m.get('compression_ratio', float('nan')):.2f}x"
        print(
            f"[{i}] trial {c['provenance']['trial_id']}: {shown} (run {c['provenance']['run_id']})"
        )
    print(
        f"wrote {len(best.configs)} config(s) to {args.output}; train one with: compsweep train {args.output} [--index I] [--epochs N]"
    )
    return 0


def _sweep_command(run: Callable[[], Any]) -> int:
    """Run ``run()`` (a sweep's driver); map its refusals to exit codes."""
    from sweeps.runner import SweepError  # the driver: Ray, Optuna, MLflow, torch

    try:
        record = run()
    except SweepBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BUSY
    except SweepError as e:
        print(f"error: the sweep cannot run as specified:\n{e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return record.outcome.exit_code() if record.outcome else 1


def cmd_run(args: argparse.Namespace) -> int:
    spec, _ = read_spec(args.spec, args.set)
    if args.eopt_from:
        problem = _take_eopt_from(spec, args.eopt_from)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_BAD_INPUT
    if args.check:
        print(f"{args.spec}: valid")
        return 0
    from sweeps.runner import run_sweep  # the driver: Ray, Optuna, MLflow (not for --check)

    env = args.env
    return _sweep_command(lambda: run_sweep(spec, address=args.address, forward_env=env,
                                            autoscaling=args.autoscaling))  # fmt: skip


def _take_eopt_from(spec: Any, sweep: str) -> str | None:
    """Set ``spec.search.e_opt`` from an analyzed sweep; the problem, if any."""
    # MLflow, and the spec model (torch): at call, as the driver above.
    from sweeps.eopt_source import given_eopt
    from sweeps.spec import GivenEopt

    problem = _eopt_sampler_problem(spec)
    if problem:
        return problem
    try:
        given = given_eopt(sweep, spec.tracking.uri, spec.objective.metrics[0])
    except (FileNotFoundError, ValueError) as e:
        return f"--eopt-from {sweep}: {e}"
    spec.search.e_opt = GivenEopt(**given)
    return None


def _eopt_sampler_problem(spec: Any) -> str | None:
    if spec.search.sampler == "eopt":
        return None
    return (f"--eopt-from guides sampler eopt, but the spec's sampler is "
            f"{spec.search.sampler!r}: set search.sampler: eopt in the spec, or add "
            "--set search.sampler=eopt")  # fmt: skip


def cmd_resume(args: argparse.Namespace) -> int:
    check_lookup_store(args.tracking_uri, args.path)
    from sweeps.runner import resume_sweep  # the driver: Ray, Optuna, MLflow, torch

    path = args.path
    if not (Path(path) / SWEEP_FILE).is_file():
        try:
            info, record = resolve(path, args.tracking_uri)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if record is None:
            print(f"error: the folder of sweep {info.sweep_id} ({info.path or 'unknown'}) is not "
                  "reachable from here; resume it where that folder is", file=sys.stderr)  # fmt: skip
            return 2
        path = record.path
    env = args.env
    return _sweep_command(lambda: resume_sweep(path, address=args.address, forward_env=env,
                                               retry_failed=args.retry_failed))  # fmt: skip


def cmd_stop(args: argparse.Namespace) -> int:
    check_lookup_store(args.tracking_uri, args.sweep)
    from sweeps.stopping import stop_sweep  # settles runs through Ray's trial bookkeeping

    try:
        return stop_sweep(args.sweep, tracking_uri=args.tracking_uri, address=args.address,
                          timeout=args.timeout)  # fmt: skip
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def cmd_submit(args: argparse.Namespace) -> int:
    """Validate here, then run `compsweep run` as a Ray job on the cluster, shipping this folder."""
    from sweeps.submit import submit  # the spec's model: torch

    # The tracking server is checked where the sweep runs (`compsweep run` on the cluster):
    # a cluster-internal URL such as http://mlflow:5000 need not resolve on this machine.
    # The job runs the spec path relative to the shipped folder: validate that same file.
    spec_path = args.spec if os.path.isabs(args.spec) else os.path.join(args.working_dir, args.spec)
    spec, overrides = read_spec(spec_path, args.set, check_tracking=False, check_storage=False)
    if args.eopt_from and (problem := _eopt_sampler_problem(spec)):
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not spec.tracking.uri and os.environ.get("MLFLOW_TRACKING_URI"):
        spec.tracking.uri = os.environ["MLFLOW_TRACKING_URI"]
    if spec.tracking.uri and spec.tracking.uri.startswith(("http://", "https://")):
        problem = check_tracking_uri(split_credentials(spec.tracking.uri)[0], timeout=5)
        if problem:
            print(f"warning (from this machine; the cluster checks again): {redact(problem)}",
                  flush=True)  # fmt: skip
    return submit(spec, spec_arg=args.spec, overrides=overrides, address=args.address,
                  working_dir=args.working_dir, python=args.python, env_items=args.env or [],
                  no_wait=args.no_wait, eopt_from=args.eopt_from)  # fmt: skip


def cmd_status(args: argparse.Namespace) -> int:
    check_lookup_store(args.tracking_uri, args.path)
    return show_status(args.path, storage=args.storage, tracking_uri=args.tracking_uri)


def cmd_schema(args: argparse.Namespace) -> int:
    from sweeps.schema import json_schema  # built from the config models: torch

    print(json.dumps(json_schema(args.kind), indent=2))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    check_tracking_uri_arg(args.tracking_uri)
    uri = args.tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(
            f"error: {redact(uri)} is an MLflow server already; open it in a browser",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    try:
        check_store(uri, args.storage)
    except StoreMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    store = sqlite_file(uri)
    return serve(uri, host=args.host, port=args.port, workers=args.workers, jobs=args.jobs,
                 verbose=getattr(args, "verbose", False),
                 log_dir=store.parent if store else None)  # fmt: skip
