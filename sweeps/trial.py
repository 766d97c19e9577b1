"""One sweep trial, as a Ray Tune function trainable: build the config from the searched knobs,
train with the compression-aware trainer, report to Tune and log to MLflow.

Every evaluation saves a checkpoint holding the full trainer state and the tracker's unsent
points and MLflow run id, so a trial restored after its worker died continues bit for bit and
keeps logging into its own child run.

A trial whose training diverges (non-finite loss or weights) ends its run FAILED with the tags
``compsweep.status=diverged`` and ``compsweep.status_reason``, then returns normally with a last
result marked ``diverged`` (objective NaN): raising would make Tune retry it from its last
checkpoint, where it would diverge again. A trial whose configuration the trainer refuses (a
:class:`~trainers.validation.ConfigError`, e.g. a pNR longer than the run on data whose size
only loading tells) ends the same way, ``compsweep.status=failed`` with the problems as the
reason and a last result marked ``failed``: no retry can fix it.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
import yaml
from ray import tune
from ray.tune import Checkpoint

from sweeps.naming import fixed_knobs, run_name, trial_label
from sweeps.records import TRACKER_FILE, TRAINER_FILE, SweepFacts
from sweeps.spec import SweepSpec, from_dict_spec, trial_train_dict
from sweeps.tracking import METHOD_TAG, STATUS_REASON_TAG, STATUS_TAG, TrialTracker
from trainers.callbacks import Callback
from trainers.config import parse_train_config
from trainers.export import export, save_exported
from trainers.inputs import with_raw_input
from trainers.loop import Trainer, TrainingDiverged
from trainers.metrics import final_only
from trainers.validation import ConfigError


class TuneBridge(Callback):
    """Trainer hooks → MLflow (every point) and Ray Tune (each evaluation, with a checkpoint)."""

    def __init__(
        self,
        tracker: TrialTracker,
        knobs: dict[str, Any],
        flush_each_evaluation: bool,
        objective: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.tracker = tracker
        self.knobs = knobs
        self.flush_each_evaluation = flush_each_evaluation
        # Tune checks that every result holds each objective metric the searcher was given.
        # One known only at the end (compression_ratio, params, macs) goes into each
        # evaluation's Tune result as NaN, a placeholder that nothing ranks or shows (the
        # real value comes with the last result, marked "completed"); MLflow never sees it.
        self.pending = final_only(objective)

    def on_distortion(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(metrics, step=step)

    def on_phase(
        self, trainer: Trainer, phase: str, metrics: dict[str, float], details: dict[str, Any]
    ) -> None:
        # Phase scalars (e.g. compress_pruning_ratio) arrive with the final metrics too; the
        # per-layer details (gate histograms, kept ranks) go in as a JSON artifact.
        if details:
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / f"phase_{phase}.json"
                path.write_text(json.dumps(details, indent=1, default=str))
                self.tracker.log_artifact(str(path), "phases")

    def on_evaluation(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(metrics, step=step)
        if self.flush_each_evaluation:
            # A scheduler may stop this trial after the report: send what is buffered first
            # (it blocks training ~50 ms, so only then). If the server is down, or without a
            # scheduler, the unsent points travel in the checkpoint and the sender keeps going.
            self.tracker.flush(timeout=10.0)
        with tempfile.TemporaryDirectory(prefix="compsweep-ckpt-") as d:
            torch.save(trainer.state_dict(), os.path.join(d, TRAINER_FILE))
            with open(os.path.join(d, TRACKER_FILE), "wb") as f:
                pickle.dump(self.tracker.state(), f)
            placeholders = dict.fromkeys(self.pending, math.nan)
            result = {**placeholders, **metrics, "step": step, **_prefixed(self.knobs)}
            tune.report(result, checkpoint=Checkpoint.from_directory(d))


def _prefixed(knobs: dict[str, Any]) -> dict[str, Any]:
    return {f"knob.{k}": v for k, v in knobs.items()}


def set_trial_threads(cfg: Any, cpus: float) -> None:
    """Unless ``run.threads`` says otherwise, one torch thread per CPU the trial holds: its
    process may see every core of the node, and oversubscribed torch threads crawl. Set on
    the parsed config only: config.yaml, and so `best` and the final training, keep what the
    user wrote (the final training then defaults to the CPUs of its own machine)."""
    if cfg.run.threads is None:
        cfg.run.threads = max(1, int(cpus))


def train_trial(config: dict[str, Any], sweep: SweepFacts) -> None:
    """The Tune trainable. ``config`` holds the searched knobs; ``sweep`` the fixed sweep facts
    (spec, sweep id, tracking URI, experiment id, parent run id)."""
    # Tune runs the next trial in this same process (reuse_actors): leave torch's process-wide
    # settings as they were found.
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        _run_trial(config, sweep)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _run_trial(config: dict[str, Any], sweep: SweepFacts) -> None:
    spec: SweepSpec = from_dict_spec(sweep.spec)
    knobs = dict(config)
    train_dict = trial_train_dict(spec, knobs)
    cfg = parse_train_config(train_dict, "trial config")
    trial_id = tune.get_context().get_trial_id()
    set_trial_threads(cfg, spec.resources.cpus)

    trainer_state = tracker_state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer_state = torch.load(
                Path(d) / TRAINER_FILE, map_location="cpu", weights_only=False
            )
            with open(Path(d) / TRACKER_FILE, "rb") as f:
                tracker_state = pickle.load(f)

    tracker = TrialTracker(
        **sweep.run_ids(),
        trial_id=trial_id,
        run_name=run_name(
            cfg.compression.method,
            knobs,
            trial_label(tune.get_context().get_trial_name() or trial_id),
            fixed_knobs(spec.space.overrides),
        ),  # fmt: skip
        state=tracker_state,
    )
    # Where this attempt runs (a restored trial may land on another node).
    ctx = ray.get_runtime_context()
    tracker.set_tags(
        {
            "compsweep.ray_node_id": ctx.get_node_id(),
            "compsweep.gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
            "compsweep.worker_pid": str(os.getpid()),
        }
    )
    # Fail fast on refused credentials (a misconfiguration no retry fixes); an unreachable
    # server only delays this check, and training goes on while points buffer.
    tracker.wait_ready(timeout=10.0)
    if tracker_state is None:  # first start (a retry before any checkpoint re-logs the same values)
        tracker.set_tags({METHOD_TAG: cfg.compression.method})
        tracker.log_params({**_prefixed(knobs), **cfg.to_dict()})  # flattened to dotted keys
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "config.yaml"
            path.write_text(yaml.safe_dump(train_dict, sort_keys=False))
            tracker.log_artifact(str(path))

    diverged: TrainingDiverged | None = None
    refused: ConfigError | None = None
    try:
        bridge = TuneBridge(tracker, knobs, flush_each_evaluation=spec.scheduler.name != "none",
                            objective=spec.objective.metrics)  # fmt: skip
        try:
            trainer = Trainer(cfg, callbacks=[bridge])
            if trainer_state is not None:
                trainer.load_state_dict(trainer_state)
            final = trainer.fit()
        except TrainingDiverged as e:
            diverged = e
        except ConfigError as e:
            refused = e
        else:
            tracker.log_metrics(final, step=trainer.step)
            _log_compressed_model(tracker, trainer)
    except BaseException as e:
        # Failed, or stopped by a scheduler (Tune raises SystemExit in tune.report): send what
        # is buffered and stop the sender thread, which would otherwise outlive the trial in a
        # reused process. The run's status is left to the restored attempt or to the driver;
        # the reason goes with the run now, while the trial still knows it.
        if isinstance(e, Exception) and tracker.refused is None:
            tracker.set_tags({STATUS_REASON_TAG: f"{type(e).__name__}: {e}"[:1000]})
        tracker.stop(timeout=10.0)
        raise
    flush_timeout = float(os.environ.get("COMPSWEEP_FLUSH_TIMEOUT", "600"))
    if diverged is not None:
        _end_unsuccessful(tracker, spec, knobs, "diverged", diverged.reason, diverged.step,
                          flush_timeout)  # fmt: skip
        return
    if refused is not None:
        reason = f"invalid configuration: {'; '.join(refused.problems)}"
        _end_unsuccessful(tracker, spec, knobs, "failed", reason, 0, flush_timeout)
        return
    tracker.close(status="FINISHED", timeout=flush_timeout)
    # "completed" marks a trial that ran to its end: Tune also sets "done" on the last result
    # of a trial that a scheduler stopped. The result carries the last evaluation (its
    # val_accuracy is the trial's objective) and the final metrics.
    tune.report(
        {**trainer.last_eval, **final, "step": trainer.step, "completed": True, **_prefixed(knobs)}
    )


def _end_unsuccessful(
    tracker: TrialTracker,
    spec: SweepSpec,
    knobs: dict[str, Any],
    status: str,
    reason: str,
    step: int,
    flush_timeout: float,
) -> None:
    """Settle a trial that no retry would help (``status``: diverged, or failed on its
    configuration): its run FAILED with the reason, then a last result that the driver reads
    as a failure (the searcher records it failed, nothing ranks it)."""
    tracker.set_tags({STATUS_TAG: status, STATUS_REASON_TAG: reason[:1000]})
    # Closed here, before the report: a scheduler may stop the trial inside tune.report.
    tracker.close(status="FAILED", timeout=flush_timeout)
    nan = float("nan")  # every objective metric, as Tune expects them in each result
    marks = {"diverged": True, "diverged_step": step} if status == "diverged" else {"failed": True}
    tune.report(
        {
            **{m: nan for m in spec.objective.metrics},
            **marks,
            "status_reason": reason,
            "step": step,
            **_prefixed(knobs),
        }
    )


def save_compressed_model(trainer: Trainer, path: str | Path) -> None:
    """The exported (structurally compressed, where the method allows) model, behind the
    dataset's raw-input adapter: like a registered model, it takes the raw samples."""
    model = trainer.model
    if trainer.distortion is not None:
        model = export(trainer.model, trainer.distortion, list(trainer.targets))
    save_exported(with_raw_input(model, trainer.info.raw, trainer.info.input_shape), str(path))


def _log_compressed_model(tracker: TrialTracker, trainer: Trainer) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "compressed_model.pt"
        save_compressed_model(trainer, path)
        tracker.log_artifact(str(path))
