"""The ``compsweep`` command line.

Bad input to any command (files, ``--set`` lines, spec and config fields, paths) ends in one
line per problem on stderr and exit code 2; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from sweeps.outcomes import EXIT_BAD_INPUT, EXIT_BUSY
from trainers import yamlio
from trainers.metrics import validation_metrics
from trainers.validation import ConfigError, Problem, shown


def _set_lines(lines: list[str] | None) -> tuple[list[tuple[str, Any]], list[Problem]]:
    """``--set KEY=VALUE`` lines as (dotted key, value) pairs; values read as YAML (``1e-3`` is a
    number), one problem per line that is no ``KEY=VALUE`` or holds broken YAML."""
    pairs, problems = [], []
    for text in lines or []:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            problems.append(
                Problem("--set", f"{shown(text)}: give KEY=VALUE, e.g. --set optim.lr=0.01")
            )
            continue
        try:
            pairs.append((key.strip(), yamlio.parse_scalar(value, strict=True)))
        except yamlio.YamlError as e:
            problems.append(Problem(f"--set {key.strip()}", str(e)))
    return pairs, problems


def cmd_train(args: argparse.Namespace) -> int:
    from trainers.callbacks import ConsoleProgress
    from trainers.loop import Trainer, TrainingDiverged

    overrides, problems = _set_lines(args.set)
    if args.epochs is not None:
        overrides += [("run.epochs", args.epochs), ("run.steps", None)]
    if args.steps is not None:
        overrides += [("run.steps", args.steps), ("run.epochs", None)]
    source = args.config
    data = _read_config(source, problems)
    if "configs" in data or args.tracking_uri or args.register:
        return _train_final(args, overrides, problems)
    cfg = _checked_config(data, overrides, problems, source, args.checkpoint, args.save)
    if args.check:
        print(f"{source}: valid")
        return 0
    trainer = Trainer(cfg, callbacks=[ConsoleProgress()])
    ckpt = Path(args.checkpoint) if args.checkpoint else None
    if ckpt and ckpt.exists():
        _resume(trainer, ckpt)
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


def _read_config(path: str, problems: list[Problem]) -> dict[str, Any]:
    """The mapping in a training config or `compsweep best` file (with ``problems`` so far)."""
    from trainers.config import TrainConfig, read_mapping

    try:
        return read_mapping(path, "training config", TrainConfig.model_fields)
    except ConfigError as e:
        raise ConfigError([*problems, *e.problems], path) from None


def _checked_config(
    data: dict[str, Any],
    overrides: list[tuple[str, Any]],
    problems: list[Problem],
    source: str,
    checkpoint: str | None,
    save: str | None = None,
):
    """The validated training config: both passes, the output paths and the device, every
    problem at once."""
    from trainers.config import apply_overrides, validate_train
    from trainers.model_checks import model_problems

    problems = problems + apply_overrides(data, overrides)
    cfg, sections, found = validate_train(data)
    problems += found + model_problems(sections)
    if checkpoint:
        problems += _output_path_problems(Path(checkpoint), "--checkpoint")
    if save:
        problems += _output_path_problems(Path(save), "--save")
    run = sections.get("run")
    if run is not None and run.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            problems.append(
                Problem(
                    "run.device", f"{run.device}: this machine has no CUDA GPU; use auto or cpu"
                )
            )
    if problems or cfg is None:
        raise ConfigError(problems, source)
    return cfg


def _output_path_problems(path: Path, flag: str) -> list[Problem]:
    """A file written during or after training (a checkpoint at every evaluation, --save at
    the end): its folder must exist and be writable before a long run starts, not at the
    first save."""
    where = f"{flag} {path}"
    if path.is_dir():
        return [Problem(where, "is a folder; give a file path, e.g. run.pt")]
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return [Problem(where, "cannot be read and rewritten (permissions)")]
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        return [Problem(where, f"folder {folder} does not exist; create it or choose another")]
    if not folder.is_dir():
        return [Problem(where, f"{folder} is a file, not a folder")]
    if not os.access(folder, os.W_OK | os.X_OK):
        return [Problem(where, f"cannot write in {folder}")]
    return []


def _resume(trainer: Any, path: Path) -> None:
    """Load a checkpoint into ``trainer``; a file that is no checkpoint of this config is bad
    input, said in one line."""
    import torch

    try:
        state = torch.load(path, map_location=trainer.device, weights_only=False)
    except Exception as e:
        raise ConfigError(
            [
                f"not a checkpoint: torch cannot read it ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
            ],
            f"--checkpoint {path}",
        ) from None
    needed = {"version", "model", "optimizer", "progress"}
    if not isinstance(state, dict) or not needed <= set(state):
        raise ConfigError(
            ["not a training checkpoint (a --save file or another program's?)"],
            f"--checkpoint {path}",
        )
    try:
        trainer.load_state_dict(state)
    except Exception as e:
        raise ConfigError(
            [f"does not fit this config ({type(e).__name__}: {' '.join(str(e).split())[:200]})"],
            f"--checkpoint {path}",
        ) from None


def _train_final(
    args: argparse.Namespace, overrides: list[tuple[str, Any]], problems: list[Problem]
) -> int:
    from sweeps.final import read_best, train_final
    from sweeps.naming import browse_hint
    from sweeps.spec import tracking_uri_problem
    from trainers.loop import TrainingDiverged

    if args.tracking_uri and tracking_uri_problem(args.tracking_uri):
        problems = [*problems, Problem("--tracking-uri", tracking_uri_problem(args.tracking_uri))]
    try:
        data, _ = read_best(args.config, args.index)
    except ConfigError as e:
        raise ConfigError([*problems, *e.problems], args.config) from None
    _checked_config(data, overrides, problems, args.config, None)
    if args.check:
        print(f"{args.config}: valid")
        return 0
    try:
        out = train_final(args.config, index=args.index, overrides=dict(overrides),
                          tracking_uri=args.tracking_uri, register=args.register)  # fmt: skip
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    selected = out.get("source_val_accuracy")
    selected = f" (selected at val_accuracy {selected:.4f})" if selected is not None else ""
    print(
        f"final model: test_accuracy {out['test_accuracy']:.4f}{selected}, "
        f"compression {out['compression_ratio']:.2f}x "
        f"({out['params']:.0f} of {out['params_dense']:.0f} weights kept; stored in "
        f"{out['bytes_stored']:.0f} of {out['bytes_dense']:.0f} bytes, "
        f"{out['compression_ratio_bytes']:.2f}x; {out['exported_macs']:.0f} MACs)\n"
        f"MLflow run {out['run_id']} at {out['tracking_uri']}; registered as "
        f"models:/{out['model_name']}/{out['model_version']} "
        f"(load with mlflow.pytorch.load_model)"
    )
    hint = browse_hint(out["tracking_uri"], out["experiment_id"], out["run_id"])
    if hint:
        print(hint)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """Exit 0 whenever the analysis ran, also when the sweep cannot support an e_opt (that is
    a finding, printed with what to run next, and no e_opt metric is logged); 2 on bad input."""
    from sweeps.analysis_report import report_lines
    from sweeps.results import resolve_sweep, run_analysis

    _check_tracking_uri_arg(args.tracking_uri)
    if args.bins < 1:
        print(f"error: --bins must be >= 1, got {args.bins}", file=sys.stderr)
        return 2
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
    from sweeps.results import best_configs, resolve_sweep, write_best
    from trainers.metrics import format_metrics

    _check_tracking_uri_arg(args.tracking_uri)
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
        seeds = c["provenance"].get("seeds")
        shown = f"mean of {len(seeds)} seeds {shown}" if seeds else shown
        print(f"[{i}] trial {c['provenance']['trial_id']}: {shown}, "
              f"compression {m.get('compression_ratio', float('nan')):.2f}x (run {c['provenance']['run_id']})")  # fmt: skip
    print(
        f"wrote {len(best.configs)} config(s) to {args.output}; train one with: compsweep train {args.output} [--index I] [--epochs N]"
    )
    return 0


def _check_tracking_uri_arg(uri: str | None) -> None:
    from sweeps.spec import tracking_uri_problem

    problem = tracking_uri_problem(uri) if uri is not None else None
    if problem:
        raise ConfigError([problem], f"--tracking-uri {uri}")


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


def _load_spec(
    path: str, lines: list[str] | None, check_tracking: bool = True, check_storage: bool = True
):
    """The validated spec at ``path`` with its ``--set`` lines applied; every problem (of the
    file, the lines and the spec) raised at once as a SpecError."""
    from sweeps.spec import SpecError, SweepSpec, spec_problems
    from trainers.config import apply_overrides, read_mapping

    overrides, problems = _set_lines(lines)
    try:
        data = read_mapping(path, "sweep spec", SweepSpec.model_fields, SpecError)
    except SpecError as e:
        raise SpecError([*problems, *e.problems], path) from None
    problems += apply_overrides(data, overrides)
    spec, found = spec_problems(data, check_tracking=check_tracking, check_storage=check_storage)
    if problems or found or spec is None:
        raise SpecError([*problems, *found], path)
    return spec, overrides


def _sweep_command(run) -> int:
    """Run ``run()`` (a sweep's driver); map its refusals to exit codes."""
    from sweeps.lock import SweepBusy
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
    spec, _ = _load_spec(args.spec, args.set)
    if args.eopt_from:
        problem = _take_eopt_from(spec, args.eopt_from)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    if args.check:
        print(f"{args.spec}: valid")
        return 0
    from sweeps.runner import run_sweep

    env = args.env
    return _sweep_command(lambda: run_sweep(spec, address=args.address, forward_env=env,
                                            autoscaling=args.autoscaling))  # fmt: skip


def _take_eopt_from(spec: Any, sweep: str) -> str | None:
    """Set ``spec.search.e_opt`` from an analyzed sweep; the problem, if any."""
    from sweeps.eopt_source import given_eopt  # reads MLflow: imported when asked for
    from sweeps.spec import GivenEopt

    if spec.search.sampler != "eopt":
        return (f"--eopt-from guides sampler eopt, but the spec's sampler is "
                f"{spec.search.sampler!r}: set search.sampler: eopt in the spec, or add "
                "--set search.sampler=eopt")  # fmt: skip
    try:
        spec.search.e_opt = GivenEopt(
            **given_eopt(sweep, spec.tracking.uri, spec.objective.metrics[0])
        )
    except (FileNotFoundError, ValueError) as e:
        return f"--eopt-from {sweep}: {e}"
    return None


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
    spec, overrides = _load_spec(spec_path, args.set, check_tracking=False, check_storage=False)
    if not spec.tracking.uri and os.environ.get("MLFLOW_TRACKING_URI"):
        spec.tracking.uri = os.environ["MLFLOW_TRACKING_URI"]
    if spec.tracking.uri and spec.tracking.uri.startswith(("http://", "https://")):
        from sweeps.secrets import redact, split_credentials
        from sweeps.tracking import check_tracking_uri

        problem = check_tracking_uri(split_credentials(spec.tracking.uri)[0], timeout=5)
        if problem:
            print(f"warning (from this machine; the cluster checks again): {redact(problem)}",
                  flush=True)  # fmt: skip
    return submit(spec, spec_arg=args.spec, overrides=overrides, address=args.address,
                  working_dir=args.working_dir, python=args.python, env_items=args.env or [],
                  no_wait=args.no_wait)  # fmt: skip


def cmd_status(args: argparse.Namespace) -> int:
    from sweeps.statusview import show_status

    return show_status(args.path, storage=args.storage, tracking_uri=args.tracking_uri)


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from sweeps.schema import json_schema

    print(json.dumps(json_schema(args.kind), indent=2))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from sweeps.tracking import default_tracking_uri
    from sweeps.ui import StoreMissing, check_store, serve, sqlite_file

    _check_tracking_uri_arg(args.tracking_uri)
    uri = args.tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"error: {uri} is an MLflow server already; open it in a browser", file=sys.stderr)
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


def _add_env_arg(p: argparse.ArgumentParser, extra: str = "") -> None:
    p.add_argument(
        "--env",
        action="append",
        metavar="KEY[=VALUE]",
        help="an environment variable the trials need on a cluster (e.g. "
        "MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD); KEY alone forwards its value "
        f"here; recorded by name for resume (repeatable) {extra}".rstrip(),
    )


VERBOSE_HELP = (
    "also show Ray's, Optuna's and MLflow's own messages on the terminal (by default a sweep "
    "writes them to compsweep.log in its folder)"
)


def build_parser() -> argparse.ArgumentParser:
    # --debug is taken before or after the command (`compsweep --debug run ...` or `... run
    # --debug`); SUPPRESS keeps a sub-command's default from hiding the top-level flag.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of an error (for developers)",
    )
    debug.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help=VERBOSE_HELP,
    )
    parser = argparse.ArgumentParser(
        prog="compsweep",
        description="Hyperparameter sweeps for compression-aware training (Ray Tune + Optuna + MLflow). "
        "Bad input exits with code 2 and one line per problem.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (for developers)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_parser = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return _add_parser(name, parents=[debug], **kwargs)

    # Every sub-command, also one added later, takes --debug after its name too.
    sub.add_parser = add_parser  # type: ignore[method-assign]

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
        metavar="KEY=VALUE",
        help="override any field, e.g. --set compression.pnr=100 (repeatable)",
    )
    p.add_argument(
        "--checkpoint",
        help="checkpoint file: resume from it if present, save to it at each evaluation",
    )
    p.add_argument("--save", help="write the final weights and config to this .pt file")
    p.add_argument(
        "--check", action="store_true", help="only validate the config (and the checkpoint path)"
    )
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
        "group them by compression strength, locate each group's optimum of a validation metric "
        "over log(e_w/pNR), and estimate e_opt with its range from the groups whose optimum is "
        "interior (or say what to run next); suggest a pNR per strength. Logs e_opt, e_opt_low, "
        "e_opt_high, e_opt_groups, the report, tables and plots to the sweep's parent run.",
    )
    p.add_argument("sweep", help="sweep folder (holds compsweep.json) or sweep id")
    p.add_argument("--tracking-uri", help="default: the sweep's, or ./mlflow.db for a sweep id")
    p.add_argument(
        "--bins", type=int, default=5, help="bins per continuous strength knob (default 5)"
    )
    p.add_argument(
        "--metric",
        help=f"validation metric to locate the optima on ({', '.join(validation_metrics())}; "
        "default: the sweep's first objective when it is one of them, else val_accuracy)",
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
        metavar="KEY=VALUE",
        help="override a spec field, e.g. --set budget.num_trials=4 (repeatable)",
    )
    p.add_argument("--check", action="store_true", help="only validate the spec")
    p.add_argument(
        "--eopt-from",
        metavar="SWEEP",
        help="sampler eopt: start from the e_opt that `compsweep analyze` found for this sweep "
        "(folder or id), skipping the pilot",
    )
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
        "schema",
        help="print the JSON schema of a sweep spec or a training config",
        description="Print the JSON schema of a sweep spec (spec) or a training config (config), "
        "for editors with a YAML language server: save it (compsweep schema spec > "
        "spec.schema.json) and start a YAML file with `# yaml-language-server: "
        "$schema=spec.schema.json`.",
    )
    p.add_argument("kind", nargs="?", default="spec", choices=["spec", "config"])
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser(
        "ui",
        help="open the MLflow UI on the sweeps' tracking store",
        description="Start a light MLflow UI (one web worker, no job consumers) on an existing "
        "store: ./mlflow.db or --tracking-uri. A store that does not exist is refused (none is "
        "created), naming the stores of the sweeps under --storage. Prints the runs view of "
        "each experiment once the UI answers; the server's own log goes to mlflow-ui.log next "
        "to the store (-v: the terminal).",
    )
    p.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI or ./mlflow.db")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=1, help="web workers (default 1)")
    p.add_argument(
        "--jobs",
        action="store_true",
        help="also start MLflow's job consumers (GenAI features; slower to start and stop)",
    )
    p.add_argument(
        "--storage",
        default="compsweep_results",
        help="where to look for sweeps when the store is missing (default: compsweep_results)",
    )
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    if not getattr(args, "verbose", False):
        from sweeps.quiet import quiet_libraries

        quiet_libraries()
    try:
        return args.func(args)
    except (ConfigError, yamlio.YamlError) as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:
        if debug:
            raise
        detail = " ".join(str(e).split())
        print(
            f"error: {type(e).__name__}: {detail} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
