"""``compsweep train``: one compression-aware training from a YAML config, or the final
training of a `compsweep best` file (logged to MLflow and registered)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sweeps.cli_input import output_path_problems, set_lines
from sweeps.naming import browse_hint
from sweeps.outcomes import EXIT_BAD_INPUT
from sweeps.secrets import redact
from sweeps.tracking_uri import tracking_uri_problem
from trainers.callbacks import Callback
from trainers.validation import ConfigError, Problem


def cmd_train(args: argparse.Namespace) -> int:
    # The trainer and torch take seconds to import: only when a command trains.
    from trainers.callbacks import ConsoleProgress
    from trainers.loop import Trainer, TrainingDiverged

    overrides, problems = set_lines(args.set)
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
        trainer.callbacks.append(CheckpointEachEvaluation(ckpt))
    try:
        trainer.fit()
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.save:
        import torch  # as above

        torch.save({"config": cfg.to_dict(), "state_dict": trainer.model.state_dict()}, args.save)
        print(f"saved the trained (compressed-state) weights to {args.save}")
    return 0


def _read_config(path: str, problems: list[Problem]) -> dict[str, Any]:
    """The mapping in a training config or `compsweep best` file (with ``problems`` so far)."""
    # trainers.config imports torch: only for commands that read a config.
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
) -> Any:
    """The validated training config: both passes, the output paths and the device, every
    problem at once."""
    # trainers.config and the model checks import torch: only for commands that train.
    from trainers.config import apply_overrides, validate_train
    from trainers.model_checks import model_problems

    problems = problems + apply_overrides(data, overrides)
    cfg, sections, found = validate_train(data)
    problems += found + model_problems(sections)
    if checkpoint:
        problems += output_path_problems(Path(checkpoint), "--checkpoint")
    if save:
        problems += output_path_problems(Path(save), "--save")
    run = sections.get("run")
    if run is not None and run.device.startswith("cuda"):
        import torch  # as above

        if not torch.cuda.is_available():
            problems.append(
                Problem(
                    "run.device", f"{run.device}: this machine has no CUDA GPU; use auto or cpu"
                )
            )
    if problems or cfg is None:
        raise ConfigError(problems, source)
    return cfg


def _resume(trainer: Any, path: Path) -> None:
    """Load a checkpoint into ``trainer``; a file that is no checkpoint of this config is bad
    input, said in one line."""
    import torch  # only when resuming from a checkpoint

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
    # The final training imports torch and MLflow: only for a `compsweep best` file.
    from sweeps.final import read_best, train_final
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
        f"{out['compression_ratio_bytes']:.2f}x; {out['macs']:.0f} of {out['macs_dense']:.0f} "
        f"MACs per sample, {out['exported_macs']:.0f} as the exported model computes them)\n"
        f"MLflow run {out['run_id']} at {redact(out['tracking_uri'])}; registered as "
        f"models:/{out['model_name']}/{out['model_version']} "
        f"(load with mlflow.pytorch.load_model)"
    )
    hint = browse_hint(out["tracking_uri"], out["experiment_id"], out["run_id"])
    if hint:
        print(hint)
    return 0


class CheckpointEachEvaluation(Callback):
    """Saves the full training state after every evaluation, atomically (a crash mid-write
    leaves the previous checkpoint intact)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_evaluation(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        trainer.save_checkpoint(str(tmp))
        tmp.replace(self.path)
