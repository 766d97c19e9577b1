"""CP (CANDECOMP/PARAFAC) decomposition of conv kernels, as in Lebedev et al. 2015.

A kernel ``K (T, S, kh, kw)`` is approximated by a sum of ``R`` rank-one tensors

    K̃[t, s, i, j] = Σ_r U_T[t, r] · U_S[s, r] · U_Y[i, r] · U_X[j, r]

computed by TensorLy's ``parafac`` (alternating least squares from an SVD start) on its PyTorch
backend, so it runs where the weights are, GPU included. The exported layer is the paper's
four-layer pipeline: ``1×1`` conv ``S→R``, ``kh×1`` depthwise conv, ``1×kw`` depthwise conv
(the original stride, padding and dilation split between the two), ``1×1`` conv ``R→T`` with
the original bias. A linear weight ``(T, S)`` is a two-way CP, ``U_T·U_Sᵀ``, exported as two
linear layers ``S→R→T``.

The rank is ``rank`` for every layer, or from ``ratio``, the fraction of a layer's weights the
factors keep: ``R = max(1, round(ratio · T·S·kh·kw / (T + S + kh + kw)))``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import cast

import torch
from torch import nn

from trainers.distortions.base import Distortion, DistortionContext
from trainers.distortions.layers import check_restructurable, copy_bias
from trainers.distortions.lowrank import conv_or_linear_problems


def cp_rank(shape: tuple[int, ...] | torch.Size, rank: int | None, ratio: float | None) -> int:
    """The CP rank used on a weight of ``shape``: ``rank``, or the rank whose factors hold
    ``ratio`` of the layer's weights (at least 1)."""
    if rank is not None:
        return rank
    assert ratio is not None
    return max(1, round(ratio * math.prod(shape) / sum(shape)))


def cp_factors(w: torch.Tensor, rank: int, iters: int = 50) -> list[torch.Tensor]:
    """Factors ``[U_T (T×R), U_S (S×R), U_Y (kh×R), U_X (kw×R)]`` (two for a linear weight) of
    the rank-``rank`` CP of ``w``, the CP weights folded into ``U_T``; in ``w``'s dtype.

    Deterministic: SVD start (padded from a fixed seed when ``rank`` exceeds a mode's size)
    and a fixed number of ALS sweeps, so a resumed run reproduces the same factors.
    """
    import tensorly as tl  # on use: seconds to import, and only CP needs it
    from tensorly.decomposition import parafac

    # TensorLy's backend is process state: set for this thread only, and put back.
    with tl.backend_context("pytorch", local_threadsafe=True):
        cp = parafac(
            w.detach().double(),
            rank=rank,
            n_iter_max=iters,
            init="svd",
            tol=0,
            random_state=0,
        )
    weights, factors = cp
    factors = [f.clone() for f in factors]
    factors[0] = factors[0] * weights.reshape(1, -1)
    return [f.to(w.dtype) for f in factors]


def cp_to_weight(factors: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``Σ_r`` of the outer products of the factors' columns (``tensorly.cp_to_tensor``)."""
    letters = "tsyx"[: len(factors)]
    expr = ",".join(f"{c}r" for c in letters) + "->" + letters
    return torch.einsum(expr, *(f.double() for f in factors)).to(dtype)


def cp_approx(w: torch.Tensor, rank: int, iters: int = 50) -> torch.Tensor:
    """The rank-``rank`` CP reconstruction of ``w`` (conv kernel or linear weight)."""
    return cp_to_weight(cp_factors(w, rank, iters), w.dtype)


class CP(Distortion):
    """CP decomposition of every target conv kernel (and of linear weights named in
    ``targets.include``).

    Args:
        rank: the CP rank R, the same for every layer; or
        ratio: per layer, the fraction of its weights the factors keep, in (0, 1].
        iters: ALS sweeps of ``parafac`` per decomposition.

    Exactly one of ``rank`` and ``ratio`` is given.
    """

    name = "cp"

    def __init__(
        self, rank: int | None = None, ratio: float | None = None, iters: int = 50
    ) -> None:
        if (rank is None) == (ratio is None):
            raise ValueError("cp: give exactly one of rank (int ≥ 1) or ratio (in (0, 1])")
        if rank is not None and (isinstance(rank, bool) or int(rank) != rank or rank <= 0):
            raise ValueError(f"cp: rank must be a positive integer, got {rank!r}")
        if ratio is not None and not 0.0 < ratio <= 1.0:
            raise ValueError(f"cp: ratio must be in (0, 1], got {ratio!r}")
        if isinstance(iters, bool) or int(iters) != iters or iters < 1:
            raise ValueError(f"cp: iters must be a positive integer, got {iters!r}")
        self.rank = None if rank is None else int(rank)
        self.ratio = None if ratio is None else float(ratio)
        self.iters = int(iters)
        # (h(w), its factors) of the last event: export uses exactly the factors that made
        # the final weights, since ALS on h(w) would only approximate them again.
        self._last: list[tuple[torch.Tensor, list[torch.Tensor]]] = []

    def applies_to(self, name: str, w: torch.Tensor) -> bool:
        # The method is for conv kernels; a linear weight (a two-way CP, i.e. a low-rank
        # factorization) is compressed when targets.include names it.
        return w.dim() == 4

    def layer_rank(self, w: torch.Tensor) -> int:
        """The CP rank this distortion uses on ``w``."""
        return cp_rank(w.shape, self.rank, self.ratio)

    def validate(self, weights: Mapping[str, torch.Tensor]) -> list[str]:
        return conv_or_linear_problems(weights, "cp", "CP", "(T, S, kh, kw)")

    def apply(
        self, weights: Mapping[str, torch.Tensor], ctx: DistortionContext
    ) -> dict[str, torch.Tensor]:
        out, self._last = {}, []
        with torch.no_grad():
            for name, w in weights.items():
                factors = cp_factors(w, self.layer_rank(w), self.iters)
                out[name] = cp_to_weight(factors, w.dtype)
                self._last.append((out[name], factors))
        return out

    def factors_of(self, weight: torch.Tensor) -> list[torch.Tensor]:
        """The factors of ``weight``: those that produced it at the last event, else a new
        decomposition (with enough ALS sweeps to reproduce a weight that is already rank R)."""
        for made, factors in self._last:
            if made.shape == weight.shape and torch.equal(made, weight):
                return factors
        return cp_factors(weight, self.layer_rank(weight), max(self.iters, 1000))

    def stored_params(self, name: str, w: torch.Tensor) -> float:
        return float(self.layer_rank(w) * sum(w.shape))

    def macs_fraction(self, name: str, w: torch.Tensor) -> float:
        # Exact at stride 1 with 'same' padding, as for Tucker-2; compression_report measures
        # the exported model's real MACs.
        return self.stored_params(name, w) / w.numel()

    def export_layer(self, module: nn.Module, weight: torch.Tensor) -> nn.Module:
        """Conv → ``1×1`` conv ``S→R``, ``kh×1`` and ``1×kw`` depthwise convs (stride, padding
        and dilation split by axis), ``1×1`` conv ``R→T`` (original bias); linear → two
        linears ``S→R→T``."""
        check_restructurable(module, weight, self.name)
        r = self.layer_rank(weight)
        factors = self.factors_of(weight)
        has_bias = module.bias is not None
        if isinstance(module, nn.Linear):
            u_t, u_s = factors
            first = nn.Linear(module.in_features, r, bias=False)
            second = nn.Linear(r, module.out_features, bias=has_bias)
            first.weight.data.copy_(u_s.T)
            second.weight.data.copy_(u_t)
            copy_bias(second, module)
            return nn.Sequential(first, second)
        if module.padding_mode != "zeros":
            raise ValueError(
                f"a Conv2d with padding_mode={module.padding_mode!r}: its padding does not split "
                "into a vertical and a horizontal pass — exclude it from the targets"
            )
        conv = cast(nn.Conv2d, module)  # check_restructurable: a Linear or a groups=1 Conv2d
        u_t, u_s, u_y, u_x = factors
        (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
        pad = conv.padding
        pad_v: str | tuple[int, int]
        pad_h: str | tuple[int, int]
        pad_v, pad_h = (pad, pad) if isinstance(pad, str) else ((pad[0], 0), (0, pad[1]))
        layers = [
            nn.Conv2d(conv.in_channels, r, 1, bias=False),
            nn.Conv2d(r, r, (kh, 1), stride=(sh, 1), padding=pad_v, dilation=(dh, 1),
                      groups=r, bias=False),
            nn.Conv2d(r, r, (1, kw), stride=(1, sw), padding=pad_h, dilation=(1, dw),
                      groups=r, bias=False),
            nn.Conv2d(r, conv.out_channels, 1, bias=has_bias),
        ]  # fmt: skip
        weights = [
            u_s.T[..., None, None],
            u_y.T[:, None, :, None],
            u_x.T[:, None, None, :],
            u_t[..., None, None],
        ]
        for layer, wt in zip(layers, weights, strict=True):
            layer.weight.data.copy_(wt)
        copy_bias(layers[-1], module)
        return nn.Sequential(*layers)
