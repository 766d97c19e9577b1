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
    from trainers.loop import Trainer

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
    trainer.fit()
    if args.save:
        import torch

        torch.save({"config": cfg.to_dict(), "state_dict": trainer.model.state_dict()}, args.save)
        print(f"saved the trained (compressed-state) weights to {args.save}")
    return 0


def _train_final(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from sweeps.final import train_final
    from trainers.config import ConfigError

    try:
        out = train_final(args.config, index=args.index, overrides=overrides,
                          tracking_uri=args.tracking_uri, register=args.register)  # fmt: skip
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"final model: accuracy {out['accuracy']:.4f}, compression {out['compression_ratio']:.2f}x "
        f"({out['params']:.0f} of {out['params_dense']:.0f} params; exported structure "
        f"{out['exported_params']:.0f} params, {out['exported_macs']:.0f} MACs)\n"
        f"MLflow run {out['run_id']} at {out['tracking_uri']}; registered as "
        f"models:/{out['model_name']}/{out['model_version']} "
        f"(load with mlflow.pytorch.load_model)"
    )
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from sweeps.results import resolve_sweep, run_analysis

    try:
        ref = resolve_sweep(args.sweep, args.tracking_uri)
        a, trials, files = run_analysis(ref, bins=args.bins, out_dir=args.output)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"sweep {ref.sweep_id}: analyzed {a.used} finished trial(s) of {len(trials)} in MLflow"
          + (f" ({len(a.skipped)} not finished or without results)" if a.skipped else ""))  # fmt: skip
    print(
        f"e_opt = {a.e_opt:.4g}  (mean e_w/pNR of the best trial of each of {len(a.groups)} strength group(s))"
    )
    print(f"{'strength':<40} {'trials':>6} {'best acc':>9} {'best pNR':>9} {'suggested pNR':>14}")
    for g in a.groups:
        print(f"{g.label:<40} {len(g.trials):>6} {g.best.accuracy:>9.4f} {g.best.pnr or 0:>9.0f} "
              f"{a.suggested_pnr[g.label]:>14.1f}")  # fmt: skip
    print(f"logged e_opt, tables and plots to parent run {ref.parent_run_id} (artifacts analysis/); "
          f"local copies in {files[0].parent}")  # fmt: skip
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from sweeps.results import best_configs, resolve_sweep, write_best

    try:
        ref = resolve_sweep(args.sweep, args.tracking_uri)
        configs = best_configs(ref, top=args.top, pareto=args.pareto, metric=args.metric)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    selected = (
        "pareto(accuracy, compression_ratio)"
        if args.pareto
        else f"top {args.top} by {args.metric or ref.objective[0]}"
    )
    write_best(configs, args.output, selected)
    for i, c in enumerate(configs):
        m = c["provenance"]["metrics"]
        print(f"[{i}] trial {c['provenance']['trial_id']}: accuracy {m.get('accuracy', float('nan')):.4f}, "
              f"compression {m.get('compression_ratio', float('nan')):.2f}x (run {c['provenance']['run_id']})")  # fmt: skip
    print(
        f"wrote {len(configs)} config(s) to {args.output}; train one with: compsweep train {args.output} [--index I] [--epochs N]"
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


def _sweep_command(run) -> int:
    """Run ``run()`` (a sweep's driver); map its refusals to exit codes."""
    from sweeps.lock import SweepBusy
    from sweeps.outcomes import EXIT_BAD_INPUT, EXIT_BUSY
    from sweeps.runner import SweepError

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
    spec = _load_spec_or_exit(args.spec, args.set)
    if spec is None:
        return 2
    if args.check:
        print(f"{args.spec}: valid")
        return 0
    from sweeps.runner import run_sweep

    env = args.env
    return _sweep_command(lambda: run_sweep(spec, address=args.address, forward_env=env,
                                            autoscaling=args.autoscaling))  # fmt: skip


def cmd_resume(args: argparse.Namespace) -> int:
    from sweeps.runner import resume_sweep

    path = args.path
    if not (Path(path) / "compsweep.json").is_file():
        from sweeps.lookup import resolve

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
    from sweeps.stopping import stop_sweep

    try:
        return stop_sweep(args.sweep, tracking_uri=args.tracking_uri, address=args.address,
                          timeout=args.timeout)  # fmt: skip
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def cmd_submit(args: argparse.Namespace) -> int:
    """Validate here, then run `compsweep run` as a Ray job on the cluster, shipping this folder."""
    import os

    from sweeps.submit import submit

    # The tracking server is checked where the sweep runs (`compsweep run` on the cluster):
    # a cluster-internal URL such as http://mlflow:5000 need not resolve on this machine.
    # The job runs the spec path relative to the shipped folder: validate that same file.
    spec_path = args.spec if os.path.isabs(args.spec) else os.path.join(args.working_dir, args.spec)
    spec = _load_spec_or_exit(spec_path, args.set, check_tracking=False)
    if spec is None:
        return 2
    if not spec.tracking.uri and os.environ.get("MLFLOW_TRACKING_URI"):
        spec.tracking.uri = os.environ["MLFLOW_TRACKING_URI"]
    if spec.tracking.uri and spec.tracking.uri.startswith(("http://", "https://")):
        from sweeps.secrets import redact, split_credentials
        from sweeps.tracking import check_tracking_uri

        problem = check_tracking_uri(split_credentials(spec.tracking.uri)[0], timeout=5)
        if problem:
            print(f"warning (from this machine; the cluster checks again): {redact(problem)}",
                  flush=True)  # fmt: skip
    return submit(spec, spec_arg=args.spec, overrides=list(args.set or []), address=args.address,
                  working_dir=args.working_dir, python=args.python, env_items=args.env or [],
                  no_wait=args.no_wait)  # fmt: skip


def cmd_status(args: argparse.Namespace) -> int:
    from sweeps.statusview import show_status

    return show_status(args.path, storage=args.storage, tracking_uri=args.tracking_uri)


def cmd_ui(args: argparse.Namespace) -> int:
    import os

    from sweeps.tracking import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    cmd = [mlflow, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    print(f"MLflow UI on http://{args.host}:{args.port} for {uri} (Ctrl-C to stop)", flush=True)
    os.execv(mlflow, cmd)
    return 0


def _add_env_arg(p: argparse.ArgumentParser, extra: str = "") -> None:
    p.add_argument(
        "--env",
        action="append",
        metavar="KEY[=VALUE]",
        help="an environment variable the trials need on a cluster (e.g. "
        "MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD); KEY alone forwards its value "
        f"here; recorded by name for resume (repeatable) {extra}".rstrip(),
    )


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
        help="compute e_opt, regularization errors and suggested pNR of a sweep, with plots",
        description="Read a sweep's trials from MLflow (finished ones; works while it runs), group them "
        "by compression strength, compute e_opt, every trial's regularization error and the suggested "
        "pNR per strength, and log e_opt, tables and plots to the sweep's parent run.",
    )
    p.add_argument("sweep", help="sweep folder (holds compsweep.json) or sweep id")
    p.add_argument("--tracking-uri", help="default: the sweep's, or ./mlflow.db for a sweep id")
    p.add_argument(
        "--bins", type=int, default=5, help="bins per continuous strength knob (default 5)"
    )
    p.add_argument("--output", help="also keep tables and plots in this folder")
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
        "--pareto", action="store_true", help="the accuracy/compression Pareto set instead"
    )
    p.add_argument("--metric", help="ranking metric (default: the sweep's first objective)")
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
    _add_env_arg(p)
    p.add_argument(
        "--autoscaling",
        action="store_true",
        help="the cluster adds nodes on demand: per-trial resources no node has yet are a "
        "warning, not an error",
    )
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
        help="continue an interrupted or stopped sweep",
        description="Resume a sweep: unfinished trials continue from their checkpoints and keep "
        "logging into their own MLflow runs (with --retry-failed, failed trials too). Refused "
        "while another driver holds the sweep.",
    )
    p.add_argument("path", help="the sweep folder printed by `compsweep run`, or the sweep id")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="also restart failed trials from their last checkpoints, into their own runs",
    )
    p.add_argument("--tracking-uri", help="where to look up a sweep id (default: ./mlflow.db)")
    _add_env_arg(p, "(default: the variables the sweep was started with)")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser(
        "stop",
        help="stop a running sweep gracefully (local or submitted) and settle its runs",
        description="Ask the sweep's driver to stop (as Ctrl-C would): trials stop, every open run "
        "ends KILLED, and the sweep stays resumable. A driver that is gone (killed, `ray job "
        "stop`) leaves orphaned runs: they are settled here.",
    )
    p.add_argument("sweep", help="sweep folder or sweep id")
    p.add_argument("--tracking-uri", help="where to look up a sweep id (default: ./mlflow.db)")
    p.add_argument(
        "--address", help="the cluster's job API, to stop a submitted sweep's Ray job if needed"
    )
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the driver (default 120)"
    )
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser(
        "status",
        help="list sweeps, or show one sweep's trials",
        description="Without SWEEP: one line per sweep, from the folders under --storage and the "
        "tracking store. With SWEEP (folder or id): its trials from MLflow, best first, with the "
        "reason of each failed or stopped one (works while it runs). A sweep whose driver died "
        "shows as orphaned; `compsweep stop` or `resume` settles it.",
    )
    p.add_argument("path", nargs="?", metavar="SWEEP", help="a sweep folder or sweep id")
    p.add_argument(
        "--storage",
        default="compsweep_results",
        help="where sweeps are stored (default: compsweep_results)",
    )
    p.add_argument(
        "--tracking-uri",
        help="tracking store to list (default: MLFLOW_TRACKING_URI or ./mlflow.db)",
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
