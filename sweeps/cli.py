"""The ``compsweep`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(
            f"--set takes KEY=VALUE (e.g. optim.lr=0.01), got {text!r}"
        )
    key, value = text.split("=", 1)
    return key, yaml.safe_load(value)  # YAML typing: 0.1 -> float, true -> bool, [1,2] -> list


def cmd_train(args: argparse.Namespace) -> int:
    from trainers.callbacks import ConsoleProgress
    from trainers.config import ConfigError, load_train_config
    from trainers.loop import Trainer, TrainingDiverged

    overrides = dict(args.set or [])
    if args.epochs is not None:
        overrides["run.epochs"] = args.epochs
        overrides["run.steps"] = None
    if args.steps is not None:
        overrides["run.steps"] = args.steps
        overrides["run.epochs"] = None
    try:
        is_best = "configs" in (yaml.safe_load(Path(args.config).read_text()) or {})
    except (OSError, yaml.YAMLError):
        is_best = False
    if is_best or args.tracking_uri or args.register:
        return _train_final(args, overrides)
    try:
        cfg = load_train_config(args.config, overrides)
        trainer = Trainer(cfg, callbacks=[ConsoleProgress()])
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ckpt = Path(args.checkpoint) if args.checkpoint else None
    if ckpt and ckpt.exists():
        trainer.load_checkpoint(str(ckpt))
        print(f"resumed from {ckpt} at step {trainer.step}/{trainer.total_steps}")
    if ckpt:
        trainer.callbacks.append(_checkpoint_each_evaluation(ckpt))
    try:
        trainer.fit()
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.save:
        import torch

        torch.save({"config": cfg.to_dict(), "state_dict": trainer.model.state_dict()}, args.save)
        print(f"saved the trained (compressed-state) weights to {args.save}")
    return 0


def _train_final(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from sweeps.final import train_final
    from trainers.config import ConfigError
    from trainers.loop import TrainingDiverged

    try:
        out = train_final(args.config, index=args.index, overrides=overrides,
                          tracking_uri=args.tracking_uri, register=args.register)  # fmt: skip
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    selected = out.get("source_val_accuracy")
    selected = f" (selected at val_accuracy {selected:.4f})" if selected is not None else ""
    print(
        f"final model: test_accuracy {out['test_accuracy']:.4f}{selected}, "
        f"compression {out['compression_ratio']:.2f}x "
        f"({out['params']:.0f} of {out['params_dense']:.0f} params; exported structure "
        f"{out['exported_params']:.0f} params, {out['exported_macs']:.0f} MACs)\n"
        f"MLflow run {out['run_id']} at {out['tracking_uri']}; registered as "
        f"models:/{out['model_name']}/{out['model_version']} "
        f"(load with mlflow.pytorch.load_model)"
    )
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """Exit 0 whenever the analysis ran, also when the sweep cannot support an e_opt (that is
    a finding, printed with what to run next, and no e_opt metric is logged); 2 on bad input."""
    from sweeps.analysis_report import report_lines
    from sweeps.results import resolve_sweep, run_analysis

    if args.bins < 1:
        print(f"error: --bins must be >= 1, got {args.bins}", file=sys.stderr)
        return 2
    try:
        ref = resolve_sweep(args.sweep, args.tracking_uri)
        a, files = run_analysis(ref, bins=args.bins, out_dir=args.output)
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
    from sweeps.results import best_configs, resolve_sweep, write_best
    from trainers.metrics import format_metrics

    try:
        ref = resolve_sweep(args.sweep, args.tracking_uri)
        best = best_configs(ref, top=args.top, pareto=args.pareto, metric=args.metric)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metric = args.metric or ref.objective[0]
    selected = (
        "pareto(val_accuracy, compression_ratio)" if args.pareto else f"top {args.top} by {metric}"
    )
    write_best(best.configs, args.output, selected)
    for reason in (f"trial {tid} diverged: {why}" for tid, why in best.diverged):
        print(f"skipped {reason}")
    if best.unranked:
        print(f"skipped {best.unranked} trial(s) not finished or without a finite {metric}")
    for i, c in enumerate(best.configs):
        m = c["provenance"]["metrics"]
        shown = format_metrics(m, [metric, "val_accuracy", "test_accuracy"])
        print(f"[{i}] trial {c['provenance']['trial_id']}: {shown}, "
              f"compression {m.get('compression_ratio', float('nan')):.2f}x (run {c['provenance']['run_id']})")  # fmt: skip
    print(
        f"wrote {len(best.configs)} config(s) to {args.output}; train one with: compsweep train {args.output} [--index I] [--epochs N]"
    )
    return 0


def _checkpoint_each_evaluation(path: Path):
    """A callback saving the full training state after every evaluation, atomically (a crash
    mid-write leaves the previous checkpoint intact)."""
    from trainers.callbacks import Callback

    class CheckpointEachEvaluation(Callback):
        def on_evaluation(self, trainer, step, metrics) -> None:
            tmp = path.with_suffix(path.suffix + ".tmp")
            trainer.save_checkpoint(str(tmp))
            tmp.replace(path)

    return CheckpointEachEvaluation()


def _load_spec_or_exit(
    path: str, overrides: list[tuple[str, Any]] | None, check_tracking: bool = True
):
    from sweeps.spec import SpecError, parse_spec

    try:
        data = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else None
    except yaml.YAMLError as e:
        print(f"error: {path} is not valid YAML: {e}", file=sys.stderr)
        return None
    if data is None:
        print(f"error: no sweep spec at {path}", file=sys.stderr)
        return None
    from trainers.config import set_dotted

    for key, value in overrides or []:
        set_dotted(data, key, value)
    try:
        return parse_spec(data, path, check_tracking=check_tracking)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    spec = _load_spec_or_exit(args.spec, args.set)
    if spec is None:
        return 2
    if args.check:
        print(f"{args.spec}: valid")
        return 0
    from sweeps.runner import run_sweep

    run_sweep(spec, address=args.address)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from sweeps.runner import resume_sweep

    try:
        resume_sweep(args.path, address=args.address)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    """Validate here, then run `compsweep run` as a Ray job on the cluster, shipping this folder."""
    import json
    import os
    import shutil
    import subprocess
    import tempfile

    # The tracking server is checked where the sweep runs (`compsweep run` on the cluster):
    # a cluster-internal URL such as http://mlflow:5000 need not resolve on this machine.
    # The job runs the spec path relative to the shipped folder: validate that same file.
    spec_path = args.spec if os.path.isabs(args.spec) else os.path.join(args.working_dir, args.spec)
    spec = _load_spec_or_exit(spec_path, args.set, check_tracking=False)
    if spec is None:
        return 2
    if spec.tracking.uri:
        from sweeps.tracking import check_tracking_uri

        problem = check_tracking_uri(spec.tracking.uri, timeout=5)
        if problem:
            print(f"warning (from this machine; the cluster checks again): {problem}", flush=True)
    ray_cli = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    excludes = [
        ".venv",
        "venv",
        ".git",
        "mlruns",
        "mlartifacts",
        "mlflow.db",
        "compsweep_results",
        "ray_results",
        "data",
        "**/__pycache__",
        "*.pt",
        "*.ckpt",
    ]
    entry = [args.python, "-m", "sweeps.cli", "run", args.spec]
    for key, value in args.set or []:
        entry += ["--set", f"{key}={json.dumps(value)}"]
    env_vars = {}
    for item in args.env or []:
        key, sep, value = item.partition("=")
        if not sep and key not in os.environ:
            print(f"error: --env {key}: not set in this environment", file=sys.stderr)
            return 2
        env_vars[key] = value if sep else os.environ[key]
    with tempfile.TemporaryDirectory(prefix="compsweep-submit-") as tmp:
        if env_vars:
            # Values (e.g. MLflow credentials) reach the job through a private file, not the
            # command line, which other users of this machine can read.
            runtime_env = Path(tmp) / "runtime_env.yaml"
            runtime_env.write_text(yaml.safe_dump({"excludes": excludes, "env_vars": env_vars}))
            runtime_args = ["--runtime-env", str(runtime_env)]
        else:
            runtime_args = ["--runtime-env-json", json.dumps({"excludes": excludes})]
        cmd = [
            ray_cli,
            "job",
            "submit",
            "--address",
            args.address,
            "--working-dir",
            args.working_dir,
            *runtime_args,
        ]
        if args.no_wait:
            cmd.append("--no-wait")
        cmd += ["--", *entry]
        shown = f"  (env_vars: {', '.join(env_vars)})" if env_vars else ""
        print("+ " + " ".join(cmd) + shown, flush=True)
        from sweeps.runner import ray_auth_env

        # `ray job submit` finds the cluster's token but sends it only with RAY_AUTH_MODE=token.
        return subprocess.call(cmd, env={**os.environ, **ray_auth_env()})


def cmd_status(args: argparse.Namespace) -> int:
    from sweeps.progress import print_table
    from sweeps.runner import SweepRecord, trial_rows
    from trainers.metrics import METRICS, rank_key

    paths = [Path(args.path)] if args.path else sorted(Path(args.storage).glob("*/compsweep.json"))
    if not paths:
        print(f"no sweeps under {args.storage}")
        return 1
    for p in paths:
        try:
            record = SweepRecord.load(p if p.is_dir() else p.parent)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        rows = trial_rows(record)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        total = record.spec["budget"]["num_trials"]
        summary = (
            ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "no trial runs yet"
        )
        print(f"{record.sweep_id}: {len(rows)}/{total} trials in MLflow ({summary}); {record.path}")
        if args.path:
            metric = record.spec["objective"]["metrics"][0]
            rows.sort(key=lambda r: rank_key(metric, r.get(metric)) if metric in METRICS else 0)
            print_table(rows)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import os

    from sweeps.tracking import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    cmd = [mlflow, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    print(f"MLflow UI on http://{args.host}:{args.port} for {uri} (Ctrl-C to stop)", flush=True)
    os.execv(mlflow, cmd)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compsweep",
        description="Hyperparameter sweeps for compression-aware training (Ray Tune + Optuna + MLflow).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="run one compression-aware training from a YAML config",
        description="Run one compression-aware training from a YAML config and print per-evaluation "
        "progress and the final metrics.",
    )
    p.add_argument(
        "config", help="training config YAML (see trainers/configs/), or a `compsweep best` file"
    )
    p.add_argument("--epochs", type=float, help="override run.epochs")
    p.add_argument("--steps", type=int, help="override run.steps")
    p.add_argument(
        "--set",
        action="append",
        type=_parse_override,
        metavar="KEY=VALUE",
        help="override any field, e.g. --set compression.pnr=100 (repeatable)",
    )
    p.add_argument(
        "--checkpoint",
        help="checkpoint file: resume from it if present, save to it at each evaluation",
    )
    p.add_argument("--save", help="write the final weights and config to this .pt file")
    p.add_argument(
        "--index", type=int, default=0, help="which config of a `compsweep best` file (default 0)"
    )
    p.add_argument(
        "--tracking-uri", help="log as a final run here (default for a best file: its sweep's)"
    )
    p.add_argument(
        "--register", metavar="NAME", help="Model Registry name (default: <sweep>-<method>)"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "analyze",
        help="estimate e_opt with its range, suggested pNR per strength, with plots",
        description="Read a sweep's trials from MLflow (works while it runs; failed, diverged, "
        "stopped and unfinished trials are listed and left out, identical configurations folded), "
        "group them by compression strength, locate each group's optimum of validation accuracy "
        "over log(e_w/pNR), and estimate e_opt with its range from the groups whose optimum is "
        "interior (or say what to run next); suggest a pNR per strength. Logs e_opt, e_opt_low, "
        "e_opt_high, e_opt_groups, the report, tables and plots to the sweep's parent run.",
    )
    p.add_argument("sweep", help="sweep folder (holds compsweep.json) or sweep id")
    p.add_argument("--tracking-uri", help="default: the sweep's, or ./mlflow.db for a sweep id")
    p.add_argument(
        "--bins", type=int, default=5, help="bins per continuous strength knob (default 5)"
    )
    p.add_argument("--output", help="also write the report, tables and plots to this folder")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser(
        "best",
        help="write the best config(s) of a sweep as ready-to-run training configs",
        description="Pull the best trial(s) of a sweep from MLflow as training configs with provenance "
        "(sweep, trial, run id, metrics), ready for `compsweep train`.",
    )
    p.add_argument("sweep", help="sweep folder (holds compsweep.json) or sweep id")
    p.add_argument("-o", "--output", default="best.yaml", help="output YAML (default best.yaml)")
    p.add_argument("--top", type=int, default=1, help="the K best by --metric (default 1)")
    p.add_argument(
        "--pareto",
        action="store_true",
        help="the validation-accuracy/compression Pareto set instead",
    )
    p.add_argument(
        "--metric",
        help="ranking metric, sorted by its direction (default: the sweep's first objective); "
        "test and direction-less metrics are refused",
    )
    p.add_argument("--tracking-uri", help="default: the sweep's, or ./mlflow.db for a sweep id")
    p.set_defaults(func=cmd_best)

    p = sub.add_parser(
        "run",
        help="run a sweep (local Ray, or the cluster at --address / RAY_ADDRESS)",
        description="Validate a sweep spec in full, then run its trials with Ray Tune + Optuna, "
        "tracking each in MLflow. Progress prints as trials start and finish; the best trials "
        "are listed at the end.",
    )
    p.add_argument("spec", help="sweep spec YAML (see sweeps/specs/)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument(
        "--set",
        action="append",
        type=_parse_override,
        metavar="KEY=VALUE",
        help="override a spec field, e.g. --set budget.num_trials=4 (repeatable)",
    )
    p.add_argument("--check", action="store_true", help="only validate the spec")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "submit",
        help="submit a sweep to a Ray cluster as a Ray job (ships this folder)",
        description="Validate the spec here, then `ray job submit` a `compsweep run` of it to the "
        "cluster's job API, shipping the working directory (without venvs, results and data). "
        "Use an MLflow server URL reachable from the cluster as tracking.uri.",
    )
    p.add_argument("spec", help="sweep spec YAML, relative to --working-dir")
    p.add_argument(
        "--address", required=True, help="the cluster's job API, e.g. http://127.0.0.1:8265"
    )
    p.add_argument("--working-dir", default=".", help="folder shipped to the cluster (default: .)")
    p.add_argument(
        "--python",
        default="python",
        help="python on the cluster's PATH that has compsweep's dependencies",
    )
    p.add_argument(
        "--set",
        action="append",
        type=_parse_override,
        metavar="KEY=VALUE",
        help="override a spec field",
    )
    p.add_argument(
        "--no-wait", action="store_true", help="return once submitted instead of following the logs"
    )
    p.add_argument(
        "--env",
        action="append",
        metavar="KEY[=VALUE]",
        help="set an environment variable of the job's driver and trials; KEY alone forwards "
        "its value here, e.g. --env MLFLOW_TRACKING_USERNAME --env MLFLOW_TRACKING_PASSWORD "
        "(repeatable)",
    )
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        "resume",
        help="continue an interrupted sweep from its folder",
        description="Resume an interrupted sweep: unfinished and failed trials continue from their "
        "checkpoints and keep logging into their own MLflow runs.",
    )
    p.add_argument(
        "path", help="the sweep folder printed by `compsweep run` (holds compsweep.json)"
    )
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser(
        "status",
        help="list sweeps, or show one sweep's trials",
        description="Without PATH: one line per sweep under --storage. With PATH: that "
        "sweep's trials from MLflow, best first (works while it runs).",
    )
    p.add_argument("path", nargs="?", help="a sweep folder")
    p.add_argument(
        "--storage",
        default="compsweep_results",
        help="where sweeps are stored (default: compsweep_results)",
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "ui",
        help="open the MLflow UI on the embedded tracking store",
        description="Start `mlflow ui` on the embedded store (./mlflow.db) or --tracking-uri.",
    )
    p.add_argument("--tracking-uri", help="default: sqlite:///<cwd>/mlflow.db")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
