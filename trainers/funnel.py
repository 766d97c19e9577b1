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
phase; this module adds the pruning ratio, the kept ranks and a gate histogram per layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from trainers.data import DataInfo
from trainers.distortions.layers import check_restructurable, conv_args
from trainers.distortions.tucker2 import tucker2_factors, tucker2_ranks
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


# ------------------------------------------------------------------------------------------
# Gated Tucker-2 layers


def _three_layers(
    linear: bool, s: int, t: int, r_s: int, r_t: int, geometry: Any, bias: bool
) -> list[nn.Module]:
    """Empty ``S→R_s``, core ``R_s→R_t`` and ``R_t→T`` layers; a conv core takes the kernel size,
    stride, padding and dilation of ``geometry`` (a conv)."""
    if linear:
        return [
            nn.Linear(s, r_s, bias=False),
            nn.Linear(r_s, r_t, bias=False),
            nn.Linear(r_t, t, bias=bias),
        ]
    return [
        nn.Conv2d(s, r_s, 1, bias=False),
        nn.Conv2d(r_s, r_t, geometry.kernel_size, bias=False, **conv_args(geometry)),
        nn.Conv2d(r_t, t, 1, bias=bias),
    ]


def _dense_layer(linear: bool, s: int, t: int, geometry: Any, bias: bool) -> nn.Module:
    if linear:
        return nn.Linear(s, t, bias=bias)
    return nn.Conv2d(s, t, geometry.kernel_size, bias=bias, **conv_args(geometry))


def _dims(seq: nn.Sequential) -> tuple[bool, int, int]:
    """``(is linear, S, T)`` of a three-layer decomposition."""
    first, _, last = cast(Any, seq)
    if isinstance(first, nn.Linear):
        return True, first.in_features, last.out_features
    return False, first.in_channels, last.out_channels


def _like(new: nn.Module, ref: torch.Tensor, training: bool) -> nn.Module:
    return new.to(device=ref.device, dtype=ref.dtype).train(training)


def decompose_gated(module: nn.Module) -> nn.Sequential:
    """The full-rank Tucker-2 (HOSVD) of a conv / linear layer as three weight-normed layers.

    Computes the same function up to rounding. A factor of zero norm (a kernel whose mode
    unfolding has a lower rank than its size, e.g. a dead channel) is left out: it contributes
    nothing and a zero vector has no direction for weight norm.
    """
    check_restructurable(module, cast(torch.Tensor, module.weight), "funnel")
    linear = isinstance(module, nn.Linear)
    w = cast(torch.Tensor, module.weight).detach()
    with torch.no_grad():
        core, p_s, p_t = tucker2_factors(w.double(), *tucker2_ranks(w.shape, 1.0))
        flat = core.reshape(core.shape[0], core.shape[1], -1)
        n_t, n_s = flat.norm(dim=(1, 2)), flat.norm(dim=(0, 2))
        keep_t = n_t > 1e-7 * n_t.max()
        keep_s = n_s > 1e-7 * n_s.max()
        if not keep_t.any() or not keep_s.any():  # an all-zero kernel: one factor per mode
            keep_t[0] = keep_s[0] = True
        core, p_s, p_t = core[keep_t][:, keep_s], p_s[:, keep_s], p_t[:, keep_t]
        r_t, r_s = core.shape[:2]
        s, t = w.shape[1], w.shape[0]
        layers = _three_layers(linear, s, t, r_s, r_t, module, module.bias is not None)
        if linear:
            values = [p_s.T, core.reshape(r_t, r_s), p_t]
        else:
            values = [p_s.T[..., None, None], core, p_t[..., None, None]]
        for layer, value in zip(layers, values, strict=True):
            cast(torch.Tensor, layer.weight).copy_(value)
        if module.bias is not None:
            cast(torch.Tensor, layers[2].bias).copy_(cast(torch.Tensor, module.bias).detach())
    for layer, dim in zip(layers, (0, 0, 1), strict=True):
        weight_norm(layer, "weight", dim=dim)  # g = ‖v‖ per factor vector
    return _like(nn.Sequential(*layers), w, module.training)  # type: ignore[return-value]


def is_gated(mod: nn.Module) -> bool:
    return (
        isinstance(mod, nn.Sequential)
        and len(mod) == 3
        and all(parametrize.is_parametrized(m, "weight") for m in mod)
    )


def gate_params(seq: nn.Sequential) -> list[nn.Parameter]:
    """The gate parameters ``[g_S, g_core, g_T]`` of a gated layer."""
    return [cast(Any, m).parametrizations.weight.original0 for m in seq]


def layer_gates(seq: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gate values ``(g_S (R_s,), g_core (R_t,), g_T (R_t,))`` of a gated layer."""
    g_s, g_c, g_t = (g.detach().reshape(-1) for g in gate_params(seq))
    return g_s, g_c, g_t


def dense_macs(s: int, t: int, k2: int, pos_in: int, pos_out: int) -> int:
    """MACs of the original layer per sample: ``P_out·S·T·d²`` (``P``: output positions)."""
    return pos_out * s * t * k2


def tucker_macs(s: int, t: int, k2: int, r_s: int, r_t: int, pos_in: int, pos_out: int) -> int:
    """MACs of the decomposed layer per sample: ``P_in·S·R_s + P_out·(R_s·R_t·d² + R_t·T)`` (the
    first ``1×1`` conv runs at the input resolution, before the core's stride)."""
    return pos_in * s * r_s + pos_out * (r_s * r_t * k2 + r_t * t)


def keep_masks(seq: nn.Sequential, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Which R_s / R_t indices survive: gate ``|g| ≥ threshold`` (for R_t both the core's and
    the last factor's gate); at least one per mode (the largest gate) always stays."""
    g_s, g_c, g_t = (g.abs() for g in layer_gates(seq))
    keep_s = g_s >= threshold
    both = torch.minimum(g_c, g_t)
    keep_t = both >= threshold
    if not keep_s.any():
        keep_s[g_s.argmax()] = True
    if not keep_t.any():
        keep_t[both.argmax()] = True
    return keep_s, keep_t


def compress_gated(
    seq: nn.Sequential, threshold: float, pos_in: int, pos_out: int
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune one gated layer, fold its gates into the weights, and keep it decomposed only when
    that costs fewer MACs than the dense layer (else fold it back into one dense layer).

    Returns the plain replacement module (no parametrization left) and a summary: full and kept
    ranks, whether it stays decomposed, and both MAC counts (per sample).
    """
    first, core, last = cast(Any, seq)
    linear, s, t = _dims(seq)
    keep_s, keep_t = keep_masks(seq, threshold)
    with torch.no_grad():
        w1 = first.weight.detach()[keep_s]  # the parametrized weight: gates folded in
        w2 = core.weight.detach()[keep_t][:, keep_s]
        w3 = last.weight.detach()[:, keep_t]
    r_s, r_t = int(keep_s.sum()), int(keep_t.sum())
    k2 = 1 if linear else math.prod(core.kernel_size)
    macs_dense = dense_macs(s, t, k2, pos_in, pos_out)
    macs_tucker = tucker_macs(s, t, k2, r_s, r_t, pos_in, pos_out)
    decomposed = macs_tucker < macs_dense
    bias = last.bias is not None
    with torch.no_grad():
        if decomposed:
            layers = _three_layers(linear, s, t, r_s, r_t, core, bias)
            for layer, value in zip(layers, (w1, w2, w3), strict=True):
                cast(torch.Tensor, layer.weight).copy_(value)
            new: nn.Module = nn.Sequential(*layers)
            out = layers[2]
        else:
            a, b, c = w1.double(), w2.double(), w3.double()
            if linear:
                dense = c @ b @ a
            else:
                dense = torch.einsum("tb,baij,as->tsij", c[:, :, 0, 0], b, a[:, :, 0, 0])
            new = out = _dense_layer(linear, s, t, core, bias)
            cast(torch.Tensor, new.weight).copy_(dense)
        if bias:
            cast(torch.Tensor, out.bias).copy_(last.bias.detach())
    summary = {
        "ranks_full": [int(first.weight.shape[0]), int(core.weight.shape[0])],
        "ranks_kept": [r_s, r_t],
        "decomposed": bool(decomposed),
        "macs_dense": int(macs_dense),
        "macs_decomposed": int(macs_tucker),
    }
    return _like(new, w1, seq.training), summary


def compressed_skeleton(seq: nn.Sequential, summary: Mapping[str, Any]) -> nn.Module:
    """An (uninitialised) module of the structure :func:`compress_gated` made of ``seq``."""
    _, core, last = cast(Any, seq)
    linear, s, t = _dims(seq)
    bias = last.bias is not None
    if summary["decomposed"]:
        new: nn.Module = nn.Sequential(
            *_three_layers(linear, s, t, *summary["ranks_kept"], core, bias)  # type: ignore[call-arg]
        )
    else:
        new = _dense_layer(linear, s, t, core, bias)
    return _like(new, next(seq.parameters()), seq.training)


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
