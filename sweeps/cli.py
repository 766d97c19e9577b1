"""The ``compsweep`` command line: its parser and entry point.

The commands live in :mod:`sweeps.cli_train` (``train``) and :mod:`sweeps.cli_sweep` (the
sweep commands). Bad input to any command (files, ``--set`` lines, spec and config fields,
paths) ends in one line per problem on stderr and exit code 2; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import Any

from sweeps.cli_sweep import (
    cmd_analyze,
    cmd_best,
    cmd_resume,
    cmd_run,
    cmd_schema,
    cmd_status,
    cmd_stop,
    cmd_submit,
    cmd_ui,
)
from sweeps.cli_train import cmd_train
from sweeps.outcomes import EXIT_BAD_INPUT
from sweeps.quiet import quiet_libraries
from sweeps.secrets import redact
from trainers import yamlio
from trainers.metrics import validation_metrics
from trainers.validation import ConfigError

DEBUG_HELP = "show the traceback of an error (for developers)"
VERBOSE_HELP = (
    "also show Ray's, Optuna's and MLflow's own messages on the terminal (by default a sweep "
    "writes them to compsweep.log in its folder)"
)
SWEEP_HELP = "sweep folder (holds compsweep.json) or sweep id"
SWEEP_URI_HELP = "default: the sweep's, or ./mlflow.db for a sweep id"
LOOKUP_URI_HELP = "where to look up a sweep id (default: ./mlflow.db)"
RAY_ADDRESS_HELP = "Ray cluster address (default: RAY_ADDRESS, else a local Ray)"
ENV_HELP = (
    "an environment variable the trials need on a cluster (e.g. MLFLOW_TRACKING_USERNAME, "
    "MLFLOW_TRACKING_PASSWORD); KEY alone forwards its value here; recorded by name for "
    "resume (repeatable)"
)


def _add_global_flags(p: argparse.ArgumentParser, default: Any) -> None:
    """--debug and -v, on the top-level parser and (with ``default`` SUPPRESS, so that a
    sub-command's default does not hide the top-level flag) after every sub-command's name."""
    p.add_argument("--debug", action="store_true", default=default, help=DEBUG_HELP)
    p.add_argument("-v", "--verbose", action="store_true", default=default, help=VERBOSE_HELP)


def _add_set(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=help)


def _add_env(p: argparse.ArgumentParser, help: str = ENV_HELP) -> None:
    p.add_argument("--env", action="append", metavar="KEY[=VALUE]", help=help)


def _add_eopt_from(p: argparse.ArgumentParser, which: str) -> None:
    p.add_argument(
        "--eopt-from",
        metavar="SWEEP",
        help=f"sampler eopt: start from the e_opt that `compsweep analyze` found for this sweep {which}",
    )


def _add_storage(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--storage", default="compsweep_results", help=help)


def _command(
    sub: Any, name: str, func: Callable[[argparse.Namespace], int], help: str, description: str
) -> argparse.ArgumentParser:
    """A sub-command's parser, run by ``func``."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description)
    p.set_defaults(func=func)
    return p


def _sub_commands(parser: argparse.ArgumentParser) -> Any:
    """The sub-command action; every sub-command, also one added later, takes --debug and -v
    after its name too."""
    flags = argparse.ArgumentParser(add_help=False)
    _add_global_flags(flags, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser

    def with_flags(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return add_parser(name, parents=[flags], **kwargs)

    sub.add_parser = with_flags  # type: ignore[method-assign]
    return sub


def _port(text: str) -> int:
    """A TCP port for ``ui --port``: refused by argparse (exit 2) outside 1–65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return port


def _add_train(sub: Any) -> None:
    p = _command(
        sub,
        "train",
        cmd_train,
        "run one compression-aware training from a YAML config",
        "Run one compression-aware training from a YAML config and print per-evaluation "
        "progress and the final metrics.",
    )
    p.add_argument(
        "config", help="training config YAML (see trainers/configs/), or a `compsweep best` file"
    )
    length = p.add_mutually_exclusive_group()  # one sets the run's length, the other unsets it
    length.add_argument("--epochs", type=float, help="override run.epochs")
    length.add_argument("--steps", type=int, help="override run.steps")
    _add_set(p, "override any field, e.g. --set compression.pnr=100 (repeatable)")
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


def _add_results(sub: Any) -> None:
    p = _command(
        sub,
        "analyze",
        cmd_analyze,
        "estimate e_opt with its range, suggested pNR per strength, with plots",
        "Read a sweep's trials from MLflow (works while it runs; failed, diverged, "
        "stopped and unfinished trials are listed and left out, identical configurations folded), "
        "group them by compression strength, locate each group's optimum of a validation metric "
        "over log(e_w/pNR), and estimate e_opt with its range from the groups whose optimum is "
        "interior (or say what to run next); suggest a pNR per strength. Logs e_opt, e_opt_low, "
        "e_opt_high, e_opt_groups, the report, tables and plots to the sweep's parent run.",
    )
    p.add_argument("sweep", help=SWEEP_HELP)
    p.add_argument("--tracking-uri", help=SWEEP_URI_HELP)
    p.add_argument(
        "--bins", type=int, default=5, help="bins per continuous strength knob (default 5)"
    )
    p.add_argument(
        "--metric",
        help=f"validation metric to locate the optima on ({', '.join(validation_metrics())}; "
        "default: the sweep's first objective when it is one of them, else val_accuracy)",
    )
    p.add_argument("--output", help="also write the report, tables and plots to this folder")

    p = _command(
        sub,
        "best",
        cmd_best,
        "write the best config(s) of a sweep as ready-to-run training configs",
        "Pull the best trial(s) of a sweep from MLflow as training configs with provenance "
        "(sweep, trial, run id, metrics), ready for `compsweep train`. A configuration run "
        "with several seeds ranks by its mean, and only once every one of them has finished.",
    )
    p.add_argument("sweep", help=SWEEP_HELP)
    p.add_argument("-o", "--output", default="best.yaml", help="output YAML (default best.yaml)")
    p.add_argument("--top", type=int, default=1, help="the K >= 1 best by --metric (default 1)")
    p.add_argument(
        "--pareto",
        action="store_true",
        help="the Pareto set of the sweep's objectives instead (validation accuracy against "
        "compression ratio for a sweep of one objective; not with --metric)",
    )
    p.add_argument(
        "--metric",
        help="ranking metric, sorted by its direction (default: the sweep's first objective); "
        "test and direction-less metrics are refused",
    )
    p.add_argument("--tracking-uri", help=SWEEP_URI_HELP)


def _add_drivers(sub: Any) -> None:
    p = _command(
        sub,
        "run",
        cmd_run,
        "run a sweep (local Ray, or the cluster at --address / RAY_ADDRESS)",
        "Validate a sweep spec in full, then run its trials with Ray Tune + Optuna, "
        "tracking each in MLflow. Progress prints as trials start and finish; the best trials "
        "are listed at the end.",
    )
    p.add_argument("spec", help="sweep spec YAML (see sweeps/specs/)")
    p.add_argument("--address", help=RAY_ADDRESS_HELP)
    _add_set(p, "override a spec field, e.g. --set budget.num_trials=4 (repeatable)")
    p.add_argument("--check", action="store_true", help="only validate the spec")
    _add_eopt_from(p, "(folder or id), skipping the pilot")
    _add_env(p)
    p.add_argument(
        "--autoscaling",
        action="store_true",
        help="the cluster adds nodes on demand: per-trial resources no node has yet are a "
        "warning, not an error",
    )

    p = _command(
        sub,
        "submit",
        cmd_submit,
        "submit a sweep to a Ray cluster as a Ray job (ships this folder)",
        "Validate the spec here, then `ray job submit` a `compsweep run` of it to the "
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
    _add_set(p, "override a spec field")
    _add_eopt_from(
        p, "(its id; read on the cluster, from the spec's tracking server), skipping the pilot"
    )
    p.add_argument(
        "--no-wait", action="store_true", help="return once submitted instead of following the logs"
    )
    _add_env(
        p,
        "set an environment variable of the job's driver and trials; KEY alone forwards its "
        "value here, e.g. --env MLFLOW_TRACKING_USERNAME --env MLFLOW_TRACKING_PASSWORD "
        "(repeatable)",
    )

    p = _command(
        sub,
        "resume",
        cmd_resume,
        "continue an interrupted or stopped sweep",
        "Resume a sweep: unfinished trials continue from their checkpoints and keep "
        "logging into their own MLflow runs (with --retry-failed, failed trials too). Refused "
        "while another driver holds the sweep.",
    )
    p.add_argument("path", help="the sweep folder printed by `compsweep run`, or the sweep id")
    p.add_argument("--address", help=RAY_ADDRESS_HELP)
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="also restart failed trials from their last checkpoints, into their own runs",
    )
    p.add_argument("--tracking-uri", help=LOOKUP_URI_HELP)
    _add_env(p, f"{ENV_HELP} (default: the variables the sweep was started with)")

    p = _command(
        sub,
        "stop",
        cmd_stop,
        "stop a running sweep gracefully (local or submitted) and settle its runs",
        "Ask the sweep's driver to stop (as Ctrl-C would): trials stop, every open run "
        "ends KILLED, and the sweep stays resumable. A driver that is gone (killed, `ray job "
        "stop`) leaves orphaned runs: they are settled here.",
    )
    p.add_argument("sweep", help="sweep folder or sweep id")
    p.add_argument("--tracking-uri", help=LOOKUP_URI_HELP)
    p.add_argument(
        "--address", help="the cluster's job API, to stop a submitted sweep's Ray job if needed"
    )
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the driver (default 120)"
    )


def _add_views(sub: Any) -> None:
    p = _command(
        sub,
        "status",
        cmd_status,
        "list sweeps, or show one sweep's trials",
        "Without SWEEP: one line per sweep, from the folders under --storage and the "
        "tracking store. With SWEEP (folder or id): its trials from MLflow, best first, with the "
        "reason of each failed or stopped one (works while it runs). A sweep whose driver died "
        "shows as orphaned; `compsweep stop` or `resume` settles it.",
    )
    p.add_argument("path", nargs="?", metavar="SWEEP", help="a sweep folder or sweep id")
    _add_storage(p, "where sweeps are stored (default: compsweep_results)")
    p.add_argument(
        "--tracking-uri",
        help="tracking store to list (default: MLFLOW_TRACKING_URI or ./mlflow.db)",
    )

    p = _command(
        sub,
        "schema",
        cmd_schema,
        "print the JSON schema of a sweep spec or a training config",
        "Print the JSON schema of a sweep spec (spec) or a training config (config), "
        "for editors with a YAML language server: save it (compsweep schema spec > "
        "spec.schema.json) and start a YAML file with `# yaml-language-server: "
        "$schema=spec.schema.json`.",
    )
    p.add_argument("kind", nargs="?", default="spec", choices=["spec", "config"])

    p = _command(
        sub,
        "ui",
        cmd_ui,
        "open the MLflow UI on the sweeps' tracking store",
        "Start a light MLflow UI (one web worker, no job consumers) on an existing "
        "store: ./mlflow.db or --tracking-uri. A store that does not exist is refused (none is "
        "created), naming the stores of the sweeps under --storage. Prints the runs view of "
        "each experiment once the UI answers; the server's own log goes to mlflow-ui.log next "
        "to the store (-v: the terminal).",
    )
    p.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI or ./mlflow.db")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=5000, help="TCP port (default 5000)")
    p.add_argument("--workers", type=int, default=1, help="web workers (default 1)")
    p.add_argument(
        "--jobs",
        action="store_true",
        help="also start MLflow's job consumers (GenAI features; slower to start and stop)",
    )
    _add_storage(
        p, "where to look for sweeps when the store is missing (default: compsweep_results)"
    )


def build_parser() -> argparse.ArgumentParser:
    # --debug is taken before or after the command (`compsweep --debug run ...` or `... run
    # --debug`).
    parser = argparse.ArgumentParser(
        prog="compsweep",
        description="Hyperparameter sweeps for compression-aware training (Ray Tune + Optuna + MLflow). "
        "Bad input exits with code 2 and one line per problem.",
    )
    _add_global_flags(parser, False)
    sub = _sub_commands(parser)
    _add_train(sub)
    _add_results(sub)
    _add_drivers(sub)
    _add_views(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    if not getattr(args, "verbose", False):
        quiet_libraries()
    try:
        return args.func(args)
    except (ConfigError, yamlio.YamlError) as e:
        if debug:
            traceback.print_exc()
        print(redact(f"error: {e}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:
        if debug:
            raise
        detail = " ".join(str(e).split())
        print(
            redact(f"error: {type(e).__name__}: {detail} (run with --debug for the traceback)"),
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
