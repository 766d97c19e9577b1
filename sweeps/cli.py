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
        trainer.callbacks.append(_CheckpointEachEvaluation(ckpt))
    trainer.fit()
    if args.save:
        import torch

        torch.save({"config": cfg.to_dict(), "state_dict": trainer.model.state_dict()}, args.save)
        print(f"saved the trained (compressed-state) weights to {args.save}")
    return 0


class _CheckpointEachEvaluation:
    """Saves the full training state after every evaluation (atomic rename: never half-written)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __getattr__(self, name: str):  # the other hooks do nothing
        return lambda *a, **k: None

    def on_evaluation(self, trainer, step, metrics) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        trainer.save_checkpoint(str(tmp))
        tmp.replace(self.path)


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
    p.add_argument("config", help="training config YAML (see trainers/configs/)")
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
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
