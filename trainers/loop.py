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

import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainers.callbacks import Callback
from trainers.config import ConfigError, TrainConfig, check_train_config
from trainers.counting import count_params, layer_macs
from trainers.data import DataSplits, load_dataset
from trainers.distortions import Distortion, DistortionContext, make_distortion
from trainers.methods import MethodRecipe, PhaseReport
from trainers.models import build_model
from trainers.optim import lr_factor, make_optimizer
from trainers.targets import compression_targets, module_of
from trainers.threads import run_threads, torch_threads

CHECKPOINT_VERSION = 1


class TrainingDiverged(RuntimeError):
    """The training loss or the weights became non-finite.

    Attributes:
        step: the optimizer step at which it was detected.
        reason: what was non-finite, at which step, and what to change.
    """

    def __init__(self, step: int, reason: str) -> None:
        self.step = step
        self.reason = reason
        super().__init__(f"training diverged: {reason}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def task_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross entropy for classification ``(B, C)`` and language models ``(B, T, V)`` alike."""
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _flushing_subnormals() -> bool:
    """Whether this thread's CPU currently reads subnormal floats as zero."""
    return torch.tensor([1e-39]).mul(1.0).item() == 0.0


@contextmanager
def subnormals_flushed(enabled: bool) -> Iterator[None]:
    """Flush subnormal floats to zero on this thread's CPU (x86 FTZ/DAZ), restored on exit.

    Why: a weight that stops receiving gradient (a pruned-away unit, a dead ReLU) keeps a
    momentum entry that decays geometrically through the subnormal range, where x86 arithmetic
    is ~100x slower. A LeNet-300-100 pruned to 90% carries hundreds of them after a few
    thousand steps; unflushed they cost ~2% of every optimizer step. The flag is per thread;
    torch's small elementwise ops (the optimizer's, here) run on the calling one.
    """
    if not enabled or _flushing_subnormals():
        yield
        return
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


@contextmanager
def probe_mode(model: nn.Module) -> Iterator[None]:
    """Forward passes that see what training sees (BatchNorm on batch statistics) but change
    nothing: running statistics frozen (momentum 0), dropout off, no gradients."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [
        (m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
        for m in bns
    ]
    was_training = model.training
    model.eval()
    for m in bns:
        m.train()
        m.momentum = 0.0
    try:
        with torch.no_grad():
            yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved, strict=True):
            m.momentum = momentum
            if tracked is not None:
                cast(torch.Tensor, m.num_batches_tracked).copy_(tracked)
        model.train(was_training)


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
        _seed_everything(self.seed)
        if cfg.run.deterministic:
            torch.use_deterministic_algorithms(True)

        d = cfg.data
        self.data = data or load_dataset(
            d.name,
            batch_size=d.batch_size,
            test_batch_size=d.test_batch_size,
            root=d.root,
            download=d.download,
            limit_train=d.limit_train,
            limit_test=d.limit_test,
            device=str(self.device),
            val_fraction=d.val_fraction,
            **d.options,
        )
        self.info = self.data.info
        self.model = build_model(cfg.model.name, self.info, **cfg.model.options).to(self.device)
        self.distortion: Distortion | None = None
        self.method: MethodRecipe | None = None  # a phase-structured method (trainers.methods)
        self.targets: dict[str, nn.Parameter] = {}
        if cfg.compression.method != "none":
            made = make_distortion(cfg.compression.method, **cfg.compression.params)
            self.targets, problems = compression_targets(self.model, cfg.compression.targets, made)
            if problems:
                raise ConfigError(problems)
            if isinstance(made, MethodRecipe):
                self.method = made
            else:
                self.distortion = made

        self.steps_per_epoch = len(self.data.train)
        if self.steps_per_epoch < 1:
            raise ConfigError(["data: the training set yields no batch; lower data.batch_size"])
        requested = (
            cfg.run.steps
            if cfg.run.steps is not None
            else round(cfg.run.epochs * self.steps_per_epoch)
        )
        pnr = cfg.compression.pnr
        self.pnr = (self.steps_per_epoch if pnr == "epoch" else int(pnr)) if self.distortion else 1
        self.num_events = requested // self.pnr if self.distortion else 0
        if self.distortion and self.num_events == 0:
            raise ConfigError(
                [
                    f"compression.pnr: {self.pnr} exceeds the run's {requested} steps, so no distortion "
                    "would happen; lower pnr or train longer"
                ]
            )
        # End on a distortion: drop the < pNR trailing steps.
        self.total_steps = self.num_events * self.pnr if self.distortion else requested
        self.eval_every = max(1, round(cfg.run.eval_every * self.steps_per_epoch))

        # A recipe restructures the model now, trains it `requested` steps with its extra loss,
        # compresses it at step `phase_end`, then fine-tunes it (see _end_phase).
        self.phase_end = -1
        self._extra_loss = None
        self.phase_metrics: dict[str, float] = {}
        if self.method is not None:
            self._dense_size = (count_params(self.model), self._macs())
            epochs = requested / self.steps_per_epoch
            self.model = self.method.prepare(self.model, self.targets, self.info, epochs)
            self.model.to(self.device)
            self.phase_end = requested
            finetune = round(self.method.finetune_epochs * self.steps_per_epoch)
            self.total_steps = requested + finetune
            self._extra_loss = self.method.extra_loss

        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler(self.phase_end if self.method else self.total_steps)
        self.probe = self._probe_batch()
        self.threads = run_threads(cfg.run.threads)
        self.measure_every = cfg.run.measure_every or auto_measure_every(
            len(self.probe[1]), d.batch_size, self.pnr, cfg.run.measure_budget
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
    def _target_weights(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.targets.items()}

    def _make_optimizer(self, lr: float | None = None) -> torch.optim.Optimizer:
        return make_optimizer(self.model.parameters(), self.cfg.optim, lr)

    def _make_scheduler(self, steps: int) -> torch.optim.lr_scheduler.LambdaLR | None:
        """The learning-rate schedule of the optimizer over a run (or phase) of ``steps``."""
        if self.cfg.optim.schedule == "constant":
            return None
        steps = max(steps, 1)
        return torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(self.cfg.optim, s, self.steps_per_epoch, steps)
        )

    def _macs(self) -> int:
        return sum(layer_macs(self.model, self.info.input_shape, self.info.input_dtype).values())

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
            self._phase("finetune", scores=_accuracies(self.last_eval))
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
        sums: list[torch.Tensor] = []  # per target: Σ|w − h(w)|, Σ(w − h(w))²
        with torch.no_grad():
            after = self.distortion.apply(self._target_weights(), ctx)
            n = 0
            for name, p in self.targets.items():
                new = after[name]
                n += p.numel()
                if new.data_ptr() == p.data_ptr():  # h left this tensor as it was
                    continue
                # The difference is formed in the parameter itself, which h(w) overwrites next:
                # no temporary. abs_ in place after the dot: vector_norm(ord=1) is ~8x slower
                # on CPU than abs_ + sum, and this runs at every event.
                diff = p.data.sub_(new).view(-1)
                sq = torch.dot(diff, diff)
                sums += [diff.abs_().sum(), sq]
                p.copy_(new)
            n = max(n, 1)
        numbers = [self._loss_sum, *sums]
        if loss_pre is not None:
            numbers += [loss_pre, self._probe_loss()]
        # One device sync for all the numbers and the divergence check.
        train_loss, *values = torch.stack(numbers).tolist()
        losses = values[len(sums) :]
        e_w = math.fsum(values[0 : len(sums) : 2]) / n
        delta_w = math.fsum(values[1 : len(sums) : 2]) / n
        lpre, lpost = losses if losses else (0.0, 0.0)
        self._check_event(train_loss, lpre, e_w, delta_w, lpost)
        metrics = {"e_w": e_w, "e_w_per_pnr": e_w / self.pnr, "delta_w": delta_w}
        if losses:
            metrics.update(
                loss_pre=lpre,
                loss_post=lpost,
                delta_loss_ratio=(lpost - lpre) / lpre if lpre != 0 else 0.0,
            )
        self._ew_sum += e_w
        self.event += 1
        self._emit("on_distortion", self.step, metrics)
        if evaluate:
            self._evaluation(val_acc_pre)

    def _check_event(
        self, train_loss: float, loss_pre: float, e_w: float, delta_w: float, loss_post: float
    ) -> None:
        """Raise :class:`TrainingDiverged` if an event's numbers show a non-finite loss or
        weights: first what training did, then what the distortion did."""
        if math.isfinite(train_loss + loss_pre + e_w + delta_w + loss_post):
            return
        s = self.step
        if not math.isfinite(train_loss):
            mean = train_loss / max(self._loss_count, 1)
            reason = f"non-finite training loss ({mean}) at step {s}; lower optim.lr"
        elif not math.isfinite(loss_pre):
            reason = (
                f"non-finite loss ({loss_pre}) of the model before the distortion at step {s}: "
                "its weights diverged; lower optim.lr"
            )
        else:
            reason = (
                f"the {self.cfg.compression.method} distortion at step {s} left non-finite "
                f"weights or loss (e_w {e_w}, loss after {loss_post}); lower optim.lr or check "
                "compression.params"
            )
        raise TrainingDiverged(s, reason)

    def _check_finite(self) -> float:
        """The mean training loss since the last evaluation, once it and every floating-point
        weight and buffer of the model are known finite (one device sync); else raise
        :class:`TrainingDiverged` naming the first non-finite one."""
        state = [(k, t) for k, t in self.model.state_dict().items() if t.is_floating_point()]
        mean = (self._loss_sum / max(self._loss_count, 1)).reshape(1).float()
        finite = torch.stack([torch.isfinite(t).all() for _, t in state]).float()
        train_loss, *flags = torch.cat([mean, finite]).tolist()
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                self.step,
                f"non-finite training loss ({train_loss}) at step {self.step}; lower optim.lr",
            )
        bad = [k for (k, _), ok in zip(state, flags, strict=True) if not ok]
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise TrainingDiverged(
                self.step,
                f"non-finite weights or statistics ({bad[0]}{more}) at step {self.step}; "
                "lower optim.lr",
            )
        return train_loss

    # ----------------------------------------------------------------- recipe phases
    def _phase(
        self, name: str, report: PhaseReport | None = None, scores: dict[str, float] | None = None
    ) -> None:
        """Measure and report a recipe's phase: validation and test accuracy (``scores``, if
        already measured), params, MACs, plus the recipe's own metrics."""
        assert self.method is not None
        self._check_finite()
        report = self.method.report(self.model, name) if report is None else report
        metrics = {
            **(_accuracies(self._scores()) if scores is None else scores),
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

    def _evaluation(self, val_acc_pre: float | None) -> None:
        train_loss = self._check_finite()
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

    # ----------------------------------------------------------------- evaluation
    def _scores(self) -> dict[str, float]:
        """``val_accuracy``, ``val_loss`` (with a validation split), ``test_accuracy`` and
        ``test_loss`` of the model as it is; a non-finite loss raises
        :class:`TrainingDiverged`."""
        out: dict[str, float] = {}
        for split in ("val", "test"):
            if split == "val" and self.data.val is None:
                continue
            acc, loss = self.evaluate(split)
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    self.step,
                    f"non-finite {split} loss ({loss}) at step {self.step} with finite weights; "
                    "check the data",
                )
            out[f"{split}_accuracy"], out[f"{split}_loss"] = acc, loss
        return out

    @torch.no_grad()
    def evaluate(self, split: str = "test") -> tuple[float, float]:
        """(accuracy, mean loss) on the ``"val"`` or ``"test"`` split, in eval mode."""
        source = {"val": self.data.val, "test": self.data.test}.get(split)
        if source is None:
            raise ValueError(
                f"no {split!r} split to evaluate on"
                + ("; set data.val_fraction > 0" if split == "val" else "; use 'val' or 'test'")
            )
        was_training = self.model.training
        self.model.eval()
        correct = torch.zeros((), device=self.device)
        loss = torch.zeros((), device=self.device)
        count = 0
        for x, y in source.epoch(0, self.seed):
            out = self.model(x)
            flat_out, flat_y = out.reshape(-1, out.shape[-1]), y.reshape(-1)
            loss += F.cross_entropy(flat_out, flat_y, reduction="sum")
            correct += (flat_out.argmax(dim=1) == flat_y).sum()
            count += flat_y.numel()
        self.model.train(was_training)
        acc, total = torch.stack([correct, loss]).tolist()
        return acc / max(count, 1), total / max(count, 1)

    @torch.no_grad()
    def reestimate_bn(self, batches: int) -> None:
        """Recompute BatchNorm running statistics (stale after a distortion) on fixed batches."""
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        was_training = self.model.training
        self.model.eval()
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
            m.train()
        for i, (x, _) in enumerate(self.data.train.epoch(-2, self.seed)):
            if i >= batches:
                break
            self.model(x)
        for m, momentum in zip(bns, saved, strict=True):
            m.momentum = momentum
        self.model.train(was_training)

    def final_metrics(self) -> dict[str, float]:
        """Sizes, e_w averages and counts of the compressed model (its accuracies are those of
        the last evaluation, :attr:`last_eval`, taken after the last distortion)."""
        weights = self._target_weights()
        dense = count_params(self.model)
        compressed = float(dense)
        macs_by_layer = layer_macs(self.model, self.info.input_shape, self.info.input_dtype)
        macs_dense = sum(macs_by_layer.values())
        macs = float(macs_dense)
        if self.distortion is not None:
            fractions: dict[str, list[tuple[float, int]]] = {}
            for name, w in weights.items():
                compressed += self.distortion.stored_params(name, w) - w.numel()
                fractions.setdefault(module_of(name), []).append(
                    (self.distortion.macs_fraction(name, w), w.numel())
                )
            for mod, fr in fractions.items():
                frac = sum(f * n for f, n in fr) / sum(n for _, n in fr)
                macs -= (1.0 - frac) * macs_by_layer.get(mod, 0)
        mean_e_w = self._ew_sum / self.num_events if self.num_events else 0.0
        metrics = {
            "compression_ratio": dense / compressed if compressed else float("inf"),
            "params": compressed,
            "params_dense": float(dense),
            "macs": macs,
            "macs_dense": float(macs_dense),
            "mean_e_w": mean_e_w,
            "mean_e_w_per_pnr": mean_e_w / self.pnr,
            "steps": float(self.step),
            "num_distortions": float(self.event),
        }
        if self.method is not None:  # compared with the model before the recipe's prepare
            params, macs_before = self._dense_size
            metrics["params_dense"], metrics["macs_dense"] = float(params), float(macs_before)
            metrics["compression_ratio"] = params / compressed
            metrics.update(self.phase_metrics)
        return metrics

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: model, optimizer, schedule, progress, RNGs."""
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "method": self.method.state_dict() if self.method else None,
            "progress": {
                "step": self.step,
                "event": self.event,
                "next_eval": self.next_eval,
                "loss_sum": self._loss_sum.clone(),
                "loss_count": self._loss_count,
                "ew_sum": self._ew_sum,
                "last_eval": dict(self.last_eval),
                "phase_metrics": dict(self.phase_metrics),
            },
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}"
            )
        if self.method is not None and state.get("method") is not None:
            # Saved after the recipe's end_phase: rebuild that structure and the fine-tuning
            # optimizer, then load their states.
            self.model = self.method.restore(self.model, state["method"])
            self._start_finetune()
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        p = state["progress"]
        self.step, self.event, self.next_eval = p["step"], p["event"], p["next_eval"]
        self._loss_sum = p["loss_sum"].to(self.device)
        self._loss_count, self._ew_sum, self.last_eval = (
            p["loss_count"],
            p["ew_sum"],
            dict(p["last_eval"]),
        )
        self.phase_metrics = dict(p.get("phase_metrics", {}))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])

    def save_checkpoint(self, path: str) -> None:
        torch.save(self.state_dict(), path)

    def load_checkpoint(self, path: str) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))


def auto_measure_every(probe_size: int, batch_size: int, pnr: int, budget: float) -> int:
    """How often to measure the probe losses: at every k-th event, for the smallest k whose
    cost stays within ``budget`` of the training compute.

    Measuring one event is two forward passes of the probe batch, with no backward and no
    optimizer step; a training step is a forward and a backward pass (about three forwards)
    of a training batch. So one measurement costs about ``2·P / (3·B)`` training steps, spread
    over the ``k·pNR`` steps between measurements. The model is deterministic (no timing), so a
    resumed run measures exactly the events the uninterrupted one did.
    """
    per_step = 2.0 * probe_size / (3.0 * batch_size) / pnr
    return max(1, math.ceil(per_step / budget - 1e-9))


def _accuracies(scores: dict[str, float]) -> dict[str, float]:
    """The ``val_accuracy`` / ``test_accuracy`` entries of an evaluation's metrics."""
    return {k: v for k, v in scores.items() if k in ("val_accuracy", "test_accuracy")}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
