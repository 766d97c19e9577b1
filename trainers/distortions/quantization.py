"""Multi-bit binary-code quantization (Xu et al., 2018): w ≈ Σ_i α_i·b_i per output row.

Greedy initialisation (each bit fits the residual: b = sign(r), α = mean|r|), then alternating
refinement: α by least squares for fixed codes, codes by nearest representable value for fixed
α. With q = 1 this is exactly α·sign(w) with the optimal α = mean|w|.
"""

from __future__ import annotations

import itertools

import torch

from trainers.distortions.base import Distortion, DistortionContext, as_rows


def _sign(x: torch.Tensor) -> torch.Tensor:
    # sign(0) = +1: every weight must take a code in {−1, +1}.
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def binary_code_quantize(
    w: torch.Tensor, bits: int, iters: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize each row of ``w`` (as a matrix, one row per output unit) to ``bits`` binary codes.

    Returns:
        ``(w_q, alpha, codes)``: the quantized tensor (shape of ``w``), ``alpha`` of shape
        ``(rows, bits)`` and ``codes`` of shape ``(rows, n, bits)`` with entries ±1.
    """
    rows = as_rows(w)
    r = rows.clone()
    alphas, codes = [], []
    for _ in range(bits):
        b = _sign(r)
        a = r.abs().mean(dim=1)
        r = r - a[:, None] * b
        alphas.append(a)
        codes.append(b)
    alpha = torch.stack(alphas, dim=1)  # (rows, q)
    code = torch.stack(codes, dim=2)  # (rows, n, q)
    if bits > 1:
        # All 2^q sign patterns; for q <= 4 (16 patterns) enumerating beats a search tree.
        patterns = torch.tensor(
            list(itertools.product((-1.0, 1.0), repeat=bits)), dtype=w.dtype, device=w.device
        )
        for _ in range(iters):
            # α: least squares per row, (BᵀB) α = Bᵀw; lstsq copes with rank-deficient codes.
            rhs = rows.unsqueeze(2)  # (rows, n, 1)
            alpha = torch.linalg.lstsq(code, rhs).solution.squeeze(2)
            # codes: nearest representable value Σ α_i p_i among all patterns.
            levels = alpha @ patterns.T  # (rows, 2^q)
            nearest = (rows.unsqueeze(2) - levels.unsqueeze(1)).abs().argmin(dim=2)  # (rows, n)
            code = patterns[nearest]  # (rows, n, q)
    w_q = (code * alpha.unsqueeze(1)).sum(dim=2)
    return w_q.view_as(w), alpha, code


class BinaryCodeQuantization(Distortion):
    """Quantize every target tensor to ``bits``-bit binary codes per output row."""

    name = "quantize"

    def __init__(self, bits: int, iters: int = 2) -> None:
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ValueError(f"quantize: bits must be an integer in [1, 8], got {bits!r}")
        if iters < 0:
            raise ValueError(f"quantize: iters must be >= 0, got {iters}")
        self.bits = bits
        self.iters = int(iters)

    def distort_tensor(self, name: str, w: torch.Tensor, ctx: DistortionContext) -> torch.Tensor:
        return binary_code_quantize(w, self.bits, self.iters)[0]

    def stored_params(self, name: str, w: torch.Tensor) -> float:
        # q bits per weight plus q full-precision scales per row, in 32-bit units.
        return self.bits * w.numel() / 32.0 + self.bits * w.shape[0]
