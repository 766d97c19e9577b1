"""Funnel-regularized Tucker-2: rank selection by gates (docs/design.md §4; the funnel
paper).

1. **Decompose** every target conv at full rank with Tucker-2 (HOSVD, exact): ``1×1 S→R_s``,
   ``d×d core R_s→R_t`` (the conv's stride / padding / dilation), ``1×1 R_t→T`` (its bias).
   A linear target is treated as a ``1×1`` kernel (three linears), as in
   :mod:`trainers.distortions.tucker2`.
2. **Gate** the factors with ``torch.nn.utils.parametrizations.weight_norm``: every factor vector
   is ``g·v/‖v‖`` with the gate ``g`` initialised to its norm. Three gate vectors per layer: the
   first factor's vectors (the columns of ``P^S``, R_s gates, all 1 at the start), the core's
   output channels (R_t gates, the mode-T singular values at the start) and the last factor's
   vectors (the columns of ``P^T``, R_t gates, all 1).
3. **Train** with ``L_cls + λ·Σ f_C(g)`` over all gates; the penalty is pluggable
   (:data:`PENALTIES`: funnel ``f_C(x) = C·|x|/(C + |x|)``, L1 ``|x|``, L2 ``x²``) and C follows
   a schedule over the epochs of the phase (:func:`c_value`: constant, linear, exponential).
4. **Compress**: remove the factors whose gate is below ``threshold`` (an R_s index when its
   first-factor gate is; an R_t index when its core or last-factor gate is; one index per mode
   always stays), fold the gates into the weights, and keep a layer decomposed only when that
   costs fewer MACs than the original layer, else fold it back into one dense layer.
5. **Fine-tune** the compressed model for ``finetune_epochs`` (new optimizer, plain task loss).

The trainer (:class:`trainers.loop.Trainer`) runs these phases through the
:class:`~trainers.methods.MethodRecipe` hooks and reports accuracy, params and MACs after each
phase; this module adds the pruning ratio, the kept ranks and a gate histogram per layer. The
gated layers themselves (steps 1, 2 and 4) are in :mod:`trainers.distortions.gated_tucker2`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from trainers.data import DataInfo
from trainers.distortions.gated_tucker2 import (
    compress_gated,
    compressed_skeleton,
    decompose_gated,
    gate_params,
    layer_gates,
)
from trainers.methods import MethodRecipe, PhaseReport
from trainers.targets import module_of

# ------------------------------------------------------------------------------------------
# Penalties and C-schedules


def funnel(x: torch.Tensor, c: float) -> torch.Tensor:
    """``f_C(x) = C·|x|/(C + |x|)``, whose derivative ``sign(x)·C²/(C + |x|)²`` is L1-like (±1)
    for ``|x| ≪ C`` and vanishes like ``C²/x²`` for ``|x| ≫ C``."""
    a = x.abs()
    return c * a / (c + a)


def l1(x: torch.Tensor, c: float) -> torch.Tensor:
    """``|x|`` (C unused)."""
    return x.abs()


def l2(x: torch.Tensor, c: float) -> torch.Tensor:
    """``x²`` (C unused)."""
    return x.square()


PENALTIES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "funnel": funnel,
    "l1": l1,
    "l2": l2,
}
SCHEDULES = ("constant", "linear", "exp")


def c_value(
    kind: str,
    epoch: int,
    *,
    c0: float,
    c_final: float | None = None,
    gamma: float = 0.5,
    every: int = 1,
    decay_epochs: float = 1.0,
) -> float:
    """C at the (0-based, whole) ``epoch`` of the regularized phase.

    - ``constant``: ``C_0``.
    - ``linear``: ``C_e = C_0 − (C_0 − C_T)·min(e, E)/E``, ``C_T = c_final``, ``E = decay_epochs``.
    - ``exp``: ``C_0·γ^⌊e/k⌋`` (``k = every``), never below ``c_final`` when that is given.
    """
    if kind == "constant":
        return c0
    if kind == "linear":
        if c_final is None:
            raise ValueError("the linear C-schedule needs c_final")
        return c0 - (c0 - c_final) * min(epoch, decay_epochs) / decay_epochs
    if kind == "exp":
        c = c0 * gamma ** (epoch // every)
        return c if c_final is None else max(c, c_final)
    raise ValueError(f"unknown C-schedule {kind!r}; valid: {', '.join(SCHEDULES)}")


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        return new
    model.set_submodule(name, new)
    return model


def _load_pretrained(model: nn.Module, path: str) -> None:
    """Load weights from a trainer checkpoint (``model``), a ``compsweep train --save`` file
    (``state_dict``), a plain state dict, or a pickled module."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"funnel: pretrained checkpoint {path!r} not found")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, nn.Module):
        state = state.state_dict()
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    model.load_state_dict(state)


# ------------------------------------------------------------------------------------------
# The recipe

HIST_EDGES = [0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, math.inf]


def gate_histogram(g: torch.Tensor, edges: list[float] = HIST_EDGES) -> list[int]:
    """Counts of ``|g|`` in the bins ``[edges[i], edges[i+1])``."""
    a = g.abs().double().cpu()
    e = torch.tensor(edges, dtype=torch.float64)
    idx = torch.bucketize(a, e, right=True) - 1
    return torch.bincount(idx.clamp(0, len(edges) - 2), minlength=len(edges) - 1).tolist()


def _float(name: str, v: Any, low: float, *, strict: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or (v <= low if strict else v < low):
        rel = ">" if strict else ">="
        raise ValueError(f"funnel: {name} must be a number {rel} {low}, got {v!r}")
    return float(v)


class Funnel(MethodRecipe):
    """Funnel-regularized Tucker-2 (the ``funnel`` method; see the module docstring).

    Args:
        lam: λ, the weight of the gate penalty.
        penalty: ``funnel`` (default), ``l1`` or ``l2``.
        c_schedule: ``constant``, ``linear`` (C_0 → C_T over ``decay_epochs``) or ``exp``
            (×``c_gamma`` every ``c_every`` epochs, not below ``c_final`` if given).
        c0, c_final: C_0 and C_T (``c_final`` is required by ``linear``).
        c_gamma, c_every: γ and k of the exponential schedule.
        decay_epochs: E of the linear schedule (default: the length of the regularized phase).
        threshold: factors with gate ``|g| < threshold`` are pruned (0.01–0.02 in the paper).
        finetune_epochs: epochs of fine-tuning after compression (0: none).
        finetune_lr: learning rate of the fine-tuning (default ``optim.lr``).
        pretrained: a checkpoint to start from (trainer checkpoint, ``compsweep train --save``
            file or state dict of the configured model); default: the fresh initialisation.
    """

    name = "funnel"

    def __init__(
        self,
        lam: float = 0.01,
        penalty: str = "funnel",
        c_schedule: str = "linear",
        c0: float = 1.0,
        c_final: float | None = 0.01,
        c_gamma: float = 0.5,
        c_every: int = 1,
        decay_epochs: float | None = None,
        threshold: float = 0.02,
        finetune_epochs: float = 1.0,
        finetune_lr: float | None = None,
        pretrained: str | None = None,
    ) -> None:
        if penalty not in PENALTIES:
            raise ValueError(
                f"funnel: penalty must be one of {', '.join(PENALTIES)}, got {penalty!r}"
            )
        if c_schedule not in SCHEDULES:
            raise ValueError(
                f"funnel: c_schedule must be one of {', '.join(SCHEDULES)}, got {c_schedule!r}"
            )
        if c_schedule == "linear" and c_final is None:
            raise ValueError("funnel: the linear C-schedule needs c_final (C_T)")
        if (
            isinstance(c_every, bool)
            or not isinstance(c_every, int | float)
            or c_every < 1
            or int(c_every) != c_every
        ):
            raise ValueError(f"funnel: c_every must be an integer >= 1 epochs, got {c_every!r}")
        if pretrained is not None and not isinstance(pretrained, str):
            raise ValueError(f"funnel: pretrained must be a file path, got {pretrained!r}")
        self.lam = _float("lam", lam, 0.0)
        self.penalty = penalty
        self.c_schedule = c_schedule
        self.c0 = _float("c0", c0, 0.0, strict=True)
        self.c_final = None if c_final is None else _float("c_final", c_final, 0.0, strict=True)
        self.c_gamma = _float("c_gamma", c_gamma, 0.0, strict=True)
        self.c_every = int(c_every)
        self.decay_epochs = (
            None if decay_epochs is None else _float("decay_epochs", decay_epochs, 0, strict=True)
        )
        self.threshold = _float("threshold", threshold, 0.0)
        self.finetune_epochs = _float("finetune_epochs", finetune_epochs, 0.0)
        self.finetune_lr = (
            None if finetune_lr is None else _float("finetune_lr", finetune_lr, 0, strict=True)
        )
        self.pretrained = pretrained
        self._penalty = PENALTIES[penalty]
        self._names: list[str] = []
        self._gates: list[nn.Parameter] = []
        self._positions: dict[str, tuple[int, int]] = {}
        self._phase_epochs = 1.0
        self._compressed: dict[str, dict[str, Any]] | None = None

    # -- targets ---------------------------------------------------------------------------
    def applies_to(self, name: str, w: torch.Tensor) -> bool:
        return w.dim() == 4  # convs by default; a linear weight when targets.include names it

    def validate(self, weights: Mapping[str, torch.Tensor]) -> list[str]:
        return [
            f"funnel: target {name!r} (shape {tuple(w.shape)}) is not the weight of a conv or a "
            f"linear layer; Tucker-2 gating needs one — remove it from the target layers"
            for name, w in weights.items()
            if w.dim() not in (2, 4) or name.rpartition(".")[2] != "weight"
        ]

    # -- the schedule ------------------------------------------------------------------------
    def c_at(self, epoch: int) -> float:
        """C at the (0-based, whole) ``epoch`` of the regularized phase."""
        return c_value(
            self.c_schedule,
            epoch,
            c0=self.c0,
            c_final=self.c_final,
            gamma=self.c_gamma,
            every=self.c_every,
            decay_epochs=self.decay_epochs or self._phase_epochs,
        )

    # -- hooks -------------------------------------------------------------------------------
    def prepare(
        self, model: nn.Module, targets: Mapping[str, nn.Parameter], info: DataInfo, epochs: float
    ) -> nn.Module:
        if self.pretrained:
            _load_pretrained(model, self.pretrained)
        self._phase_epochs = max(epochs, 1e-9)
        self._names = list(dict.fromkeys(module_of(n) for n in targets))
        self._positions = _record_positions(model, self._names, info)
        for name in self._names:
            try:
                gated = decompose_gated(model.get_submodule(name))
            except ValueError as e:
                raise ValueError(f"funnel: target {name!r}: {e}") from None
            model = _replace(model, name, gated)
        self._gates = [
            g
            for name in self._names
            for g in gate_params(cast(nn.Sequential, model.get_submodule(name)))
        ]
        return model

    def extra_loss(self, model: nn.Module, epoch: int) -> torch.Tensor:
        gates = torch.cat([g.reshape(-1) for g in self._gates])
        return self.lam * self._penalty(gates, self.c_at(epoch)).sum()

    def _gate_table(self, model: nn.Module) -> dict[str, tuple[torch.Tensor, ...]]:
        return {
            name: layer_gates(cast(nn.Sequential, model.get_submodule(name)))
            for name in self._names
        }

    def report(self, model: nn.Module, phase: str) -> PhaseReport:
        if phase == "decompose":
            gates = sum(g.numel() for g in self._gates)
            return PhaseReport({"gates": float(gates), "layers": float(len(self._names))})
        if phase != "train" or self._compressed is not None:
            return PhaseReport()
        table = self._gate_table(model)
        total = sum(g.numel() for gs in table.values() for g in gs)
        below = sum(int((g.abs() < self.threshold).sum()) for gs in table.values() for g in gs)
        hist = {
            name: {
                part: gate_histogram(g)
                for part, g in zip(("g_s", "g_core", "g_t"), gs, strict=True)
            }
            for name, gs in table.items()
        }
        metrics = {
            "pruning_ratio": below / max(total, 1),
            "gates_below_threshold": float(below),
            "gates": float(total),
        }
        if self.penalty == "funnel":  # C of the last epoch of the phase
            metrics["c_last"] = float(self.c_at(max(math.ceil(self._phase_epochs) - 1, 0)))
        details = {"threshold": self.threshold, "edges": HIST_EDGES, "histograms": hist}
        return PhaseReport(metrics, details)

    def end_phase(self, model: nn.Module) -> tuple[nn.Module, PhaseReport]:
        table = self._gate_table(model)
        total = sum(g.numel() for gs in table.values() for g in gs)
        below = sum(int((g.abs() < self.threshold).sum()) for gs in table.values() for g in gs)
        layers: dict[str, dict[str, Any]] = {}
        for name in self._names:
            new, summary = compress_gated(
                cast(nn.Sequential, model.get_submodule(name)),
                self.threshold,
                *self._positions[name],
            )
            model = _replace(model, name, new)
            layers[name] = summary
        self._compressed = layers
        self._gates = []
        full = sum(sum(s["ranks_full"]) for s in layers.values())
        kept = sum(sum(s["ranks_kept"]) for s in layers.values())
        decomposed = sum(s["decomposed"] for s in layers.values())
        return model, PhaseReport(
            {
                "pruning_ratio": below / max(total, 1),
                "rank_ratio": kept / max(full, 1),
                "layers_decomposed": float(decomposed),
                "layers_reverted": float(len(layers) - decomposed),
            },
            {"layers": layers},
        )

    def state_dict(self) -> dict[str, Any] | None:
        return None if self._compressed is None else {"layers": self._compressed}

    def restore(self, model: nn.Module, state: dict[str, Any]) -> nn.Module:
        for name, summary in state["layers"].items():
            model = _replace(
                model,
                name,
                compressed_skeleton(cast(nn.Sequential, model.get_submodule(name)), summary),
            )
        self._compressed = dict(state["layers"])
        self._gates = []
        return model


def _record_positions(
    model: nn.Module, names: list[str], info: DataInfo
) -> dict[str, tuple[int, int]]:
    """Input and output positions per sample (``H·W`` of a conv, vectors of a linear) of each
    named layer, from one forward pass on a zero input of ``info.input_shape``."""
    positions: dict[str, tuple[int, int]] = {}
    handles = []

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            x = inputs[0]
            if isinstance(mod, nn.Linear):
                positions[name] = (x.numel() // mod.in_features, output.numel() // mod.out_features)
            else:
                positions[name] = (x.shape[-1] * x.shape[-2], output.shape[-1] * output.shape[-2])

        return fn

    for name in names:
        handles.append(model.get_submodule(name).register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros((1, *info.input_shape), dtype=info.input_dtype, device=p.device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n in names if n not in positions]
    if missing:
        raise ValueError(f"funnel: target layer(s) {missing} are not used in the forward pass")
    return positions
