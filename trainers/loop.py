"""The compression-aware training loop (occasional regularization, DeepTwist / pNR).

Train normally; after every pNR optimizer steps replace each target weight ``w`` by ``h(w)``
and keep training from there. The run is cut to ``⌊steps/pNR⌋·pNR`` steps so it ends on a
distortion event: the final weights are exactly representable in compressed form, and the
run's result, its last ``val_accuracy``, is measured right after that last distortion.

Evaluations report validation metrics (what sweeps select on) and test metrics (reported only;
see :mod:`trainers.metrics`). Without a validation split (``data.val_fraction: 0``) only the
test metrics appear.

A phase-structured method (a :class:`~trainers.methods.MethodRecipe`, e.g. ``funnel``) instead
restructures the model before the optimizer is built, adds its term to the loss during the
regularized phase (``run.epochs`` / ``run.steps``), compresses the model at its end, and
fine-tunes the result with a new optimizer (and a restarted schedule); the last evaluation is
then the fine-tuned compressed model's.

A run whose loss or weights become non-finite stops with :class:`TrainingDiverged`. The check
rides on host syncs that happen anyway: the one of every distortion event, every evaluation
and every phase end of a recipe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from trainers.callbacks import Callback
from trainers.checkpoint import restore_trainer, trainer_state
from trainers.compressed_size import compressed_size
from trainers.config import ConfigError, TrainConfig, check_train_config
from trainers.counting import count_macs, count_params
from trainers.data import DataSplits
from trainers.distortion_events import EventNumbers, auto_measure_every, distort_targets
from trainers.distortions import DistortionContext
from trainers.divergence import TrainingDiverged, check_event, finite_train_loss
from trainers.evaluation import (
    accuracies,
    evaluate_split,
    probe_mode,
    reestimate_bn,
    split_scores,
    task_loss,
)
from trainers.methods import PhaseReport
from trainers.models import build_model
from trainers.optim import make_optimizer, make_scheduler
from trainers.run_plan import plan_run
from trainers.run_setup import load_run_data, make_compression
from trainers.runtime import (
    flushing_subnormals,
    resolve_device,
    seed_everything,
    subnormals_flushed,
)
from trainers.threads import run_threads, torch_threads

__all__ = [
    "Trainer",
    "TrainingDiverged",
    "auto_measure_every",
    "resolve_device",
    "subnormals_flushed",
    "task_loss",
]

_flushing_subnormals = flushing_subnormals  # the name the loop's tests know it by


class Trainer:
    """One compression-aware training run, from a validated :class:`TrainConfig`.

    Args:
        cfg: the configuration.
        callbacks: receivers of the metrics (see :class:`trainers.callbacks.Callback`).
        data: preloaded data (tests pass tiny data; otherwise loaded from ``cfg.data``).
    """

    def __init__(
        self, cfg: TrainConfig, callbacks: Sequence[Callback] = (), data: DataSplits | None = None
    ) -> None:
        problems = check_train_config(cfg)
        if problems:
            raise ConfigError(problems)
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.device = resolve_device(cfg.run.device)
        self.seed = cfg.run.seed
        seed_everything(self.seed)
        if cfg.run.deterministic:
            torch.use_deterministic_algorithms(True)

        self.data = data or load_run_data(cfg, self.device)
        self.info = self.data.info
        self.model = build_model(cfg.model.name, self.info, **cfg.model.options).to(self.device)
        compression = make_compression(cfg, self.model)
        self.distortion, self.method = compression.distortion, compression.method
        self.targets = compression.targets

        finetune = self.method.finetune_epochs if self.method is not None else None
        plan = plan_run(cfg, len(self.data.train), self.distortion is not None, finetune)
        self.steps_per_epoch, self.pnr = plan.steps_per_epoch, plan.pnr
        self.num_events, self.total_steps = plan.num_events, plan.total_steps
        self.eval_every, self.phase_end = plan.eval_every, plan.phase_end

        # A recipe restructures the model now, trains it to step `phase_end` with its extra
        # loss, compresses it there, then fine-tunes it (see _end_phase).
        self._extra_loss = None
        self.phase_metrics: dict[str, float] = {}
        if self.method is not None:
            self._dense_size = (count_params(self.model), self._macs())
            epochs = plan.requested / self.steps_per_epoch
            self.model = self.method.prepare(self.model, self.targets, self.info, epochs)
            self.model.to(self.device)
            self._extra_loss = self.method.extra_loss

        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler(self.phase_end if self.method else self.total_steps)
        self.probe = self._probe_batch()
        self.threads = run_threads(cfg.run.threads)
        self.measure_every = cfg.run.measure_every or auto_measure_every(
            len(self.probe[1]), cfg.data.batch_size, self.pnr, cfg.run.measure_budget
        )

        # Progress state: everything here goes into the checkpoint.
        self.step = 0
        self.event = 0
        self.next_eval = self.eval_every
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_count = 0
        self._ew_sum = 0.0
        self.last_eval: dict[str, float] = {}
        self._stop = False

    # ----------------------------------------------------------------- set-up helpers
    def _make_optimizer(self, lr: float | None = None) -> torch.optim.Optimizer:
        return make_optimizer(self.model.parameters(), self.cfg.optim, lr)

    def _make_scheduler(self, steps: int) -> torch.optim.lr_scheduler.LambdaLR | None:
        return make_scheduler(self.optimizer, self.cfg.optim, self.steps_per_epoch, steps)

    def _macs(self) -> int:
        return count_macs(self.model, self.info.input_shape, self.info.input_dtype)

    def _probe_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        # A fixed training batch from an order no epoch uses, so loss_pre and loss_post of
        # every event are measured on the same data, and the epochs' data order is untouched.
        x, y = next(iter(self.data.train.epoch(-1, self.seed)))
        n = self.cfg.run.probe_batch_size
        return (x[:n], y[:n]) if n else (x, y)

    # ----------------------------------------------------------------- control
    def request_stop(self) -> None:
        """Stop after the current step (from a callback); the state stays resumable."""
        self._stop = True

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def run_info(self) -> dict[str, Any]:
        info = {
            "model": self.cfg.model.name,
            "dataset": self.cfg.data.name,
            "method": self.cfg.compression.method,
            "pnr": self.pnr,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "num_events": self.num_events,
            "targets": list(self.targets),
            "resumed_at": self.step,
            "threads": self.threads,
            "measure_every": self.measure_every,
            "params_dense": count_params(self.model),
        }
        if self.method is not None:
            info["phase_end"] = self.phase_end
            info["params_dense"] = self._dense_size[0]
        return info

    # ----------------------------------------------------------------- the loop
    def fit(self) -> dict[str, float]:
        """Train to the end (or until a callback calls :meth:`request_stop`).

        Returns the final metrics when training completed, else ``{}``.
        """
        self._stop = False
        with torch_threads(self.threads), subnormals_flushed(self.cfg.run.flush_subnormals):
            return self._fit()

    def _fit(self) -> dict[str, float]:
        self._emit("on_train_start", self.run_info())
        if self.method is not None and self.step == 0:
            self._phase("decompose")
        self.model.train()
        while not self.done and not self._stop:
            epoch, start = divmod(self.step, self.steps_per_epoch)
            for x, y in self.data.train.epoch(epoch, self.seed, start):
                self._train_step(x, y)
                self.step += 1
                if self.step == self.phase_end:  # a recipe's regularized phase ends (else -1)
                    self._end_phase()
                elif self.distortion is not None and self.step % self.pnr == 0:
                    self._distortion_event()
                elif self.distortion is None and (self.step >= self.next_eval or self.done):
                    self._evaluation(val_acc_pre=None)
                if self.done or self._stop:
                    break
        if not self.done:
            return {}
        if self.method is not None and self.total_steps > self.phase_end:
            self._phase("finetune", scores=accuracies(self.last_eval))
        final = self.final_metrics()
        self._emit("on_train_end", final)
        return final

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = task_loss(self.model(x), y)
        total = loss
        if self._extra_loss is not None:  # a recipe's regularizer (e.g. funnel gates)
            total = loss + self._extra_loss(self.model, self.step // self.steps_per_epoch)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self._loss_sum += loss.detach()
        self._loss_count += 1

    def _probe_loss(self) -> torch.Tensor:
        with probe_mode(self.model):
            return task_loss(self.model(self.probe[0]), self.probe[1])

    def _distortion_event(self) -> None:
        """Distort the targets; report e_w and delta_w (every event) and the probe losses
        (measured events only: every ``measure_every``-th one and every evaluation's)."""
        assert self.distortion is not None
        lr = self.optimizer.param_groups[0]["lr"]
        ctx = DistortionContext(
            self.step, self.total_steps, self.event, self.num_events, self.seed, lr
        )
        evaluate = self.step >= self.next_eval or self.step == self.total_steps
        measured = evaluate or self.event % self.measure_every == 0
        val_acc_pre = None
        if evaluate and self.data.val is not None:
            val_acc_pre = self.evaluate("val")[0]
        loss_pre = self._probe_loss() if measured else None
        sums, n = distort_targets(self.distortion, self.targets, ctx)
        probe = [] if loss_pre is None else [loss_pre, self._probe_loss()]
        # One device sync for all the numbers and the divergence check.
        nums = EventNumbers.read(self._loss_sum, sums, n, probe)
        check_event(nums, self.step, self.cfg.compression.method, self._loss_count)
        self._ew_sum += nums.e_w
        self.event += 1
        self._emit("on_distortion", self.step, nums.metrics(self.pnr))
        if evaluate:
            self._evaluation(val_acc_pre)

    # ----------------------------------------------------------------- recipe phases
    def _phase(
        self, name: str, report: PhaseReport | None = None, scores: dict[str, float] | None = None
    ) -> None:
        """Measure and report a recipe's phase: validation and test accuracy (``scores``, if
        already measured), params, MACs, plus the recipe's own metrics."""
        assert self.method is not None
        finite_train_loss(self.model, self._loss_sum, self._loss_count, self.step)
        report = self.method.report(self.model, name) if report is None else report
        metrics = {
            **(accuracies(self._scores()) if scores is None else scores),
            "params": float(count_params(self.model)),
            "macs": float(self._macs()),
            **report.metrics,
        }
        self.phase_metrics.update({f"{name}_{k}": v for k, v in metrics.items()})
        self._emit("on_phase", name, metrics, report.details)

    def _end_phase(self) -> None:
        """End of the regularized phase: report it, let the recipe compress the model, then
        fine-tune it with a new optimizer (and schedule) and no extra loss."""
        assert self.method is not None
        self._phase("train")
        self.model, report = self.method.end_phase(self.model)
        self._start_finetune()
        self._phase("compress", report)
        if self.done or self.step >= self.next_eval:
            self._evaluation(val_acc_pre=None)

    def _start_finetune(self) -> None:
        assert self.method is not None
        self.model.to(self.device)
        self._extra_loss = None
        self.optimizer = self._make_optimizer(self.method.finetune_lr)
        self.scheduler = self._make_scheduler(self.total_steps - self.phase_end)

    # ----------------------------------------------------------------- evaluation
    def _evaluation(self, val_acc_pre: float | None) -> None:
        train_loss = finite_train_loss(self.model, self._loss_sum, self._loss_count, self.step)
        if self.cfg.run.bn_reestimate:
            self.reestimate_bn(self.cfg.run.bn_reestimate)
        self._loss_sum.zero_()
        self._loss_count = 0
        metrics = {"epoch": self.step / self.steps_per_epoch, "train_loss": train_loss}
        if val_acc_pre is not None:
            metrics["val_acc_pre"] = val_acc_pre
        metrics.update(self._scores())
        while self.next_eval <= self.step:
            self.next_eval += self.eval_every
        self.last_eval = metrics
        self._emit("on_evaluation", self.step, metrics)

    def _scores(self) -> dict[str, float]:
        return split_scores(self.model, self.data, self.seed, self.device, self.step)

    def evaluate(self, split: str = "test") -> tuple[float, float]:
        """(accuracy, mean loss) on the ``"val"`` or ``"test"`` split, in eval mode."""
        return evaluate_split(self.model, self.data, split, self.seed, self.device)

    def reestimate_bn(self, batches: int) -> None:
        """Recompute BatchNorm running statistics (stale after a distortion) on fixed batches."""
        reestimate_bn(self.model, self.data.train, self.seed, batches)

    def final_metrics(self) -> dict[str, float]:
        """Sizes, e_w averages and counts of the compressed model (its accuracies are those of
        the last evaluation, :attr:`last_eval`, taken after the last distortion)."""
        weights = {n: p.detach() for n, p in self.targets.items()}
        size = compressed_size(
            self.model, self.distortion, weights, self.info.input_shape, self.info.input_dtype
        )
        mean_e_w = self._ew_sum / self.num_events if self.num_events else 0.0
        metrics = {
            **size.metrics(),
            "mean_e_w": mean_e_w,
            "mean_e_w_per_pnr": mean_e_w / self.pnr,
            "steps": float(self.step),
            "num_distortions": float(self.event),
        }
        if self.method is not None:  # compared with the model before the recipe's prepare
            params, macs_before = self._dense_size
            metrics["params_dense"], metrics["macs_dense"] = float(params), float(macs_before)
            metrics["compression_ratio"] = params / size.params
            metrics.update(self.phase_metrics)
        return metrics

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (see :mod:`trainers.checkpoint`)."""
        return trainer_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_trainer(self, state)

    def save_checkpoint(self, path: str) -> None:
        torch.save(self.state_dict(), path)

    def load_checkpoint(self, path: str) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))
