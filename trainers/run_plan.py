"""How many optimizer steps a run makes and when its events happen, from the configuration.

A distorting run is cut to ``⌊steps/pNR⌋·pNR`` steps so it ends on a distortion event. A
phase-structured method (a :class:`~trainers.methods.MethodRecipe`) trains the requested steps
with its regularizer, compresses at ``phase_end`` and fine-tunes for its own epochs after.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainers.config import CompressionConfig, ConfigError, RunConfig, TrainConfig


@dataclass(frozen=True)
class RunPlan:
    """The step arithmetic of one run.

    Attributes:
        steps_per_epoch: training batches per epoch.
        requested: steps the configuration asks for (``run.steps`` or ``run.epochs``).
        pnr: steps between distortion events (1 without a distortion).
        num_events: distortion events of the run (0 without a distortion).
        total_steps: steps the run makes.
        eval_every: steps between evaluations.
        phase_end: the step at which a recipe's regularized phase ends; -1 without a recipe.
    """

    steps_per_epoch: int
    requested: int
    pnr: int
    num_events: int
    total_steps: int
    eval_every: int
    phase_end: int = -1


def plan_run(
    cfg: TrainConfig,
    steps_per_epoch: int,
    distorting: bool,
    finetune_epochs: float | None = None,
) -> RunPlan:
    """The plan of a run of ``cfg`` over ``steps_per_epoch`` batches an epoch.

    Args:
        cfg: the validated configuration.
        steps_per_epoch: batches of the training set per epoch.
        distorting: whether the run distorts every pNR steps.
        finetune_epochs: a recipe's fine-tuning epochs (None without a recipe).

    Raises:
        ConfigError: the training set yields no batch, or pNR exceeds the run.
    """
    if steps_per_epoch < 1:
        raise ConfigError(["data.batch_size: the training set yields no batch; lower it"])
    requested = requested_steps(cfg.run, steps_per_epoch)
    pnr = event_interval(cfg.compression, steps_per_epoch) if distorting else 1
    num_events = requested // pnr if distorting else 0
    if distorting and num_events == 0:
        raise ConfigError([pnr_problem(pnr, requested)])
    # End on a distortion: drop the < pNR trailing steps.
    total_steps = num_events * pnr if distorting else requested
    eval_every = max(1, round(cfg.run.eval_every * steps_per_epoch))
    if finetune_epochs is None:
        return RunPlan(steps_per_epoch, requested, pnr, num_events, total_steps, eval_every)
    total_steps = requested + round(finetune_epochs * steps_per_epoch)
    return RunPlan(
        steps_per_epoch, requested, pnr, num_events, total_steps, eval_every, phase_end=requested
    )


def requested_steps(run: RunConfig, steps_per_epoch: int) -> int:
    """The optimizer steps ``run`` asks for (``run.steps``, or ``run.epochs`` of batches)."""
    return run.steps if run.steps is not None else round(float(run.epochs or 0) * steps_per_epoch)


def event_interval(compression: CompressionConfig, steps_per_epoch: int) -> int:
    """pNR in optimizer steps (``epoch``: one epoch's batches)."""
    every = compression.pnr
    return steps_per_epoch if every == "epoch" else int(every)


def pnr_problem(pnr: int, requested: int) -> str:
    """The problem of a pNR with no distortion event in a run of ``requested`` steps."""
    return (
        f"compression.pnr: {pnr} exceeds the run's {requested} steps, so no distortion would "
        "happen; lower pnr or train longer"
    )
