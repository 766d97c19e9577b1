"""Nuclear-norm compression-aware training by proximal SGD (docs/design.md §5; Alvarez &
Salzmann).

Minimises ``L + τ·Σ_l ‖Θ_l‖_*`` over the lowered target matrices ``Θ_l`` (conv ``T×(S·d·d)``,
linear ``out×in``): plain SGD between proximal events — the trainer's distortion events, every
pNR steps (the paper uses one epoch: ``compression.pnr: epoch``) — and at each event the proximal
operator of the nuclear norm, soft-thresholding of the singular values::

    Θ = U·diag(σ)·Vᵀ  →  U·diag(max(σ − ρτ, 0))·Vᵀ        (ρ: the learning rate at the event)

then, when ``lam > 0``, the proximal step of the sparse group Lasso on the units (rows)
``(1−α)·λ·√P·Σ_n‖θ_n‖₂ + α·λ·‖θ‖₁`` (``P``: row length): an elementwise soft-threshold by
``ρ·α·λ`` followed by a row shrinkage ``θ_n ← θ_n·max(0, 1 − ρ(1−α)λ√P/‖θ_n‖)``. ``λ`` may differ
per layer (``lam_layers``: fnmatch patterns on parameter names → λ; the paper uses one value for
the first layers and one for the rest).

Post-processing: each layer keeps the smallest rank holding ``energy`` % of the sum of its
singular values and is exported as two layers (``K ≈ A·B``, the SVD export of
:mod:`trainers.distortions.svd`) when that is cheaper than the dense layer (``r(m+n) < mn``),
else it stays dense and untruncated. So that the trained model *is* the exported one (training
ends on a distortion, docs/design.md §3), the truncation happens at the last proximal event,
and the export takes the (numerical) rank the weights then have. With ``energy = 100`` (default) the
truncation drops only the singular values the soft-threshold already zeroed: no loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fnmatch import fnmatch

import torch
from torch import nn

from trainers.distortions.base import Distortion, DistortionContext
from trainers.distortions.lowrank import check_matrix_like, group_by_shape, lowered_shape
from trainers.distortions.svd import SVD


def soft_threshold_singular_values(mats: torch.Tensor, thr: float) -> torch.Tensor:
    """The nuclear-norm proximal step on each matrix of ``mats (..., m, n)``:
    ``U·diag(max(σ − thr, 0))·Vᵀ`` (computed in float64, returned in ``mats``' dtype)."""
    u, s, vh = torch.linalg.svd(mats.double(), full_matrices=False)
    return ((u * (s - thr).clamp_min(0)[..., None, :]) @ vh).to(mats.dtype)


def sparse_group_lasso_prox(mat: torch.Tensor, l1: float, group: float) -> torch.Tensor:
    """Proximal step of ``group·Σ_n‖θ_n‖₂ + l1·‖θ‖₁`` on the rows ``θ_n`` of ``mat``:
    soft-threshold every entry by ``l1``, then shrink every row's norm by ``group``."""
    if l1 > 0:
        mat = mat.sign() * (mat.abs() - l1).clamp_min(0)
    if group > 0:
        norms = mat.norm(dim=-1, keepdim=True)
        mat = mat * (1 - group / norms.clamp_min(1e-30)).clamp_min(0)
    return mat


def energy_rank(s: torch.Tensor, energy: float, shape: tuple[int, int] | None = None) -> int:
    """The smallest rank whose singular values hold ``energy`` % of their sum (≥ 1).

    ``s`` are singular values in decreasing order (of an ``m×n`` matrix: ``shape``). At 100 %
    this is the number of non-zero singular values (float32 rounding level, the tolerance of
    :func:`numerical_rank`); below, the
    smallest ``r`` with ``σ_1 + … + σ_r ≥ energy/100 · Σσ`` (up to a 1e-9 relative tolerance, so
    that σ = (4, 3, 2, 1) at 70 % gives 2).
    """
    s = s.double()
    if energy >= 100:
        return max(1, int((s > _tol(s, torch.float32, shape)).sum()))
    total = float(s.sum())
    if total <= 0:
        return 1
    cum = torch.cumsum(s, 0)
    need = energy / 100 * total * (1 - 1e-9)
    return max(1, int((cum < need).sum()) + 1)


def _tol(s: torch.Tensor, dtype: torch.dtype, shape: tuple[int, int] | None = None) -> float:
    """The numerical-rank tolerance ``σ_max·max(m, n)·eps`` (NumPy's ``matrix_rank`` rule)."""
    big = max(shape) if shape else len(s)
    return float(s.max()) * big * torch.finfo(dtype).eps if len(s) else 0.0


def numerical_rank(w: torch.Tensor) -> int:
    """Rank of the lowered matrix of ``w`` at the rounding level of ``w``'s dtype (≥ 1)."""
    m, n = lowered_shape(w)
    s = torch.linalg.svdvals(w.detach().reshape(m, n).double())
    dtype = w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float32
    return max(1, int((s > _tol(s, dtype, (m, n))).sum()))


def _cheaper(r: int, m: int, n: int) -> bool:
    return r * (m + n) < m * n


class Nuclear(Distortion):
    """Nuclear-norm proximal step (plus optional sparse group Lasso) at every event.

    Args:
        tau: τ, the nuclear-norm weight; the singular values shrink by ``lr·tau`` per event.
        alpha: α in [0, 1], the L1 share of the sparse group Lasso.
        lam: λ of the sparse group Lasso (0: off).
        lam_layers: per-layer λ, ``{fnmatch pattern on the parameter name: λ}`` (first match
            wins; other layers take ``lam``).
        energy: e_l, the percentage of singular-value energy each layer keeps at export, in
            (0, 100].
    """

    name = "nuclear"

    def __init__(
        self,
        tau: float = 0.0,
        alpha: float = 0.0,
        lam: float = 0.0,
        energy: float = 100.0,
        lam_layers: dict[str, float] | None = None,
    ) -> None:
        def number(key: str, v: object) -> float:
            if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
                raise ValueError(f"nuclear: {key} must be a number, got {v!r}")
            return float(v)

        self.tau = number("tau", tau)
        self.alpha = number("alpha", alpha)
        self.lam = number("lam", lam)
        self.energy = number("energy", energy)
        if self.tau < 0:
            raise ValueError(f"nuclear: tau must be >= 0, got {tau!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"nuclear: alpha must be in [0, 1], got {alpha!r}")
        if self.lam < 0:
            raise ValueError(f"nuclear: lam must be >= 0, got {lam!r}")
        if not 0.0 < self.energy <= 100.0:
            raise ValueError(f"nuclear: energy must be a percentage in (0, 100], got {energy!r}")
        if lam_layers is not None and not isinstance(lam_layers, dict):
            raise ValueError(f"nuclear: lam_layers must map patterns to λ, got {lam_layers!r}")
        self.lam_layers = {
            str(k): number(f"lam_layers.{k}", v) for k, v in (lam_layers or {}).items()
        }
        if any(v < 0 for v in self.lam_layers.values()):
            raise ValueError(f"nuclear: every λ in lam_layers must be >= 0, got {lam_layers!r}")

    def layer_lam(self, name: str) -> float:
        """λ of the sparse group Lasso for parameter ``name``."""
        return next((v for pat, v in self.lam_layers.items() if fnmatch(name, pat)), self.lam)

    def validate(self, weights: Mapping[str, torch.Tensor]) -> list[str]:
        return [
            msg for name, w in weights.items() if (msg := check_matrix_like(name, w, "nuclear"))
        ]

    def apply(
        self, weights: Mapping[str, torch.Tensor], ctx: DistortionContext
    ) -> dict[str, torch.Tensor]:
        thr = ctx.lr * self.tau
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for names in group_by_shape(weights).values():  # one batched SVD per shape
                stacked = torch.stack([weights[n].detach() for n in names])
                if not torch.isfinite(stacked).all():
                    raise FloatingPointError(
                        f"nuclear: non-finite weights in {', '.join(names)} (training diverged); "
                        "lower optim.lr"
                    )
                mats = stacked.reshape(len(names), stacked.shape[1], -1)
                if thr > 0:
                    mats = soft_threshold_singular_values(mats, thr)
                for name, mat in zip(names, mats.unbind(0), strict=True):
                    lam = self.layer_lam(name)
                    if lam > 0 and ctx.lr > 0:
                        p = mat.shape[-1]
                        mat = sparse_group_lasso_prox(
                            mat,
                            ctx.lr * self.alpha * lam,
                            ctx.lr * (1 - self.alpha) * lam * math.sqrt(p),
                        )
                    out[name] = mat.reshape(weights[name].shape)
            if ctx.event == ctx.num_events - 1:  # training ends here: post-process (truncate)
                out = {n: self.truncate(w) for n, w in out.items()}
        return {n: out[n] for n in weights}

    def truncate(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` truncated to its energy rank when the two-layer form is cheaper, else ``w``."""
        m, n = lowered_shape(w)
        u, s, vh = torch.linalg.svd(w.reshape(m, n).double(), full_matrices=False)
        r = energy_rank(s, self.energy, (m, n))
        if not _cheaper(r, m, n) or r >= len(s):
            return w
        return ((u[:, :r] * s[:r]) @ vh[:r]).reshape(w.shape).to(w.dtype)

    def export_rank(self, w: torch.Tensor) -> int | None:
        """Rank of the two-layer export of ``w`` (its numerical rank), or None to stay dense."""
        m, n = lowered_shape(w)
        r = numerical_rank(w)
        return r if _cheaper(r, m, n) else None

    def stored_params(self, name: str, w: torch.Tensor) -> float:
        m, n = lowered_shape(w)
        r = self.export_rank(w)
        return float(m * n if r is None else r * (m + n))

    def macs_fraction(self, name: str, w: torch.Tensor) -> float:
        # d×d conv S→r then 1×1 conv r→T: r(m + n) MACs per output position (as SVD).
        return self.stored_params(name, w) / w.numel()

    def export_layer(self, module: nn.Module, weight: torch.Tensor) -> nn.Module | None:
        """Two layers ``K ≈ A·B`` at the weight's rank (the SVD export), or None (stay dense)
        when that is not cheaper than the dense layer."""
        r = self.export_rank(weight)
        return None if r is None else SVD(rank=r).export_layer(module, weight)
