"""Shared helpers of the low-rank distortions (SVD, tiled SVD, Tucker-2, CP).

All functions work on a leading batch of matrices so that layers (or tiles) of the same shape
are decomposed by one batched LAPACK/cuSOLVER call: a distortion step runs every pNR optimizer
steps on every target layer, and one batched call is much cheaper than a Python loop of small
ones.

The distortions need only the leading singular *subspaces*, not the singular values, so they
use ``eigh`` of the smaller Gram matrix (``A·Aᵀ`` or ``Aᵀ·A``), 2–5× faster than ``svd`` on
CPU. The Gram matrix is formed in float64: squaring the condition number there loses no more
than a float32 SVD would. Export, which needs the factors once, uses ``torch.linalg.svd``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

# SVD kernels exist for float32/float64 (and complex) only; half precision is lifted to float32.
_SVD_DTYPES = (torch.float32, torch.float64)


def lowered_shape(w: torch.Tensor) -> tuple[int, int]:
    """Shape ``(m, n)`` of the lowered matrix: conv ``(T, S·kh·kw)``, linear ``(out, in)``."""
    m = int(w.shape[0])
    return m, (w.numel() // m if m else 0)


def svd_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` in a dtype that ``torch.linalg.svd`` accepts."""
    return x if x.dtype in _SVD_DTYPES else x.float()


def truncated_svd(mats: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors ``(A, B)`` of the best rank-``rank`` approximation ``A @ B`` of each matrix.

    ``mats`` is ``(..., m, n)``; ``A = U_r·diag(σ_r)`` is ``(..., m, r)`` and ``B = V_rᵀ`` is
    ``(..., r, n)`` with ``r = min(rank, m, n)``. The singular values go into the left factor
    so the right factor keeps orthonormal rows.
    """
    u, s, vh = torch.linalg.svd(svd_dtype(mats), full_matrices=False)
    r = min(rank, s.shape[-1])
    return u[..., :, :r] * s[..., None, :r], vh[..., :r, :]


def _top_eigvecs(gram: torch.Tensor, rank: int) -> torch.Tensor:
    """Eigenvectors of the ``rank`` largest eigenvalues of symmetric ``gram`` (float64)."""
    _, vecs = torch.linalg.eigh(gram)  # ascending eigenvalues
    return vecs[..., :, -rank:]


def leading_left_singular_vectors(mats: torch.Tensor, rank: int) -> torch.Tensor:
    """An orthonormal basis ``(..., m, r)`` of the leading rank-``r`` left singular subspace of
    each matrix, ``r = min(rank, m)``, in float64 (signs and order within the basis are
    arbitrary; the subspace is what HOSVD needs)."""
    x = mats.double()
    return _top_eigvecs(x @ x.mT, min(rank, x.shape[-2]))


def lowrank_approx(mats: torch.Tensor, rank: int) -> torch.Tensor:
    """Best rank-``rank`` approximation (Eckart–Young) of each matrix in ``mats (..., m, n)``.

    The projection onto the leading singular subspace of the smaller side: ``U_r U_rᵀ A`` or
    ``A V_r V_rᵀ`` (equal to the truncated SVD up to rounding). Same dtype as ``mats``.
    """
    x = mats.double()
    m, n = x.shape[-2:]
    if m <= n:
        u = _top_eigvecs(x @ x.mT, min(rank, m))
        out = u @ (u.mT @ x)
    else:
        v = _top_eigvecs(x.mT @ x, min(rank, n))
        out = (x @ v) @ v.mT
    return out.to(mats.dtype)


def ceil_frac(x: float) -> int:
    """``ceil(x)`` that forgives float noise: ``0.3·10 = 3.0000000000000004`` gives 3, not 4."""
    return math.ceil(x - 1e-9)


def divisors(n: int) -> list[int]:
    """Positive divisors of ``n`` in increasing order."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def group_by_shape(weights: Mapping[str, torch.Tensor]) -> dict[tuple[Any, ...], list[str]]:
    """Parameter names grouped by (shape, dtype, device): each group stacks into one batch."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, w in weights.items():
        groups.setdefault((tuple(w.shape), w.dtype, w.device), []).append(name)
    return groups


def batched_apply(
    weights: Mapping[str, torch.Tensor],
    fn: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Apply ``fn`` to every same-shape group of ``weights`` stacked on a new leading dim.

    ``fn`` maps ``(L, *shape)`` to ``(L, *shape)``; the result keeps the input order of names.
    """
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for names in group_by_shape(weights).values():
            stacked = torch.stack([weights[n].detach() for n in names])
            for n, w in zip(names, fn(stacked).unbind(0), strict=True):
                out[n] = w
    return {n: out[n] for n in weights}


def check_matrix_like(name: str, w: torch.Tensor, method: str) -> str | None:
    """A validate message when ``w`` is not a conv kernel / linear weight, else ``None``."""
    if w.dim() not in (2, 3, 4, 5):
        return (
            f"{method}: layer {name!r} has shape {tuple(w.shape)}; only linear (out, in) and conv "
            f"(T, S, d, d) weights can be decomposed — remove it from the target layers"
        )
    return None


def matrix_problems(
    weights: Mapping[str, torch.Tensor],
    method: str,
    check: Callable[[str, torch.Tensor, int, int], str | None],
) -> list[str]:
    """The validate messages of a method that lowers every weight to a matrix: the
    :func:`check_matrix_like` message of a weight that is no conv kernel / linear weight, else
    ``check(name, w, m, n)`` on its lowered ``m×n`` shape (None: fine)."""
    problems = []
    for name, w in weights.items():
        msg = check_matrix_like(name, w, method)
        if msg is None:
            m, n = lowered_shape(w)
            msg = check(name, w, m, n)
        if msg:
            problems.append(msg)
    return problems


def conv_or_linear_problems(
    weights: Mapping[str, torch.Tensor], method: str, label: str, kernel: str
) -> list[str]:
    """The validate messages of a kernel decomposition (CP, Tucker-2), which takes conv
    kernels ``kernel`` (e.g. ``"(T, S, d, d)"``) and linear weights only."""
    return [
        f"{method}: layer {name!r} has shape {tuple(w.shape)}; {label} needs a conv kernel "
        f"{kernel} or a linear weight (out, in) — remove it from the target layers"
        for name, w in weights.items()
        if w.dim() not in (2, 4)
    ]


def fmt_list(xs: Iterable[int]) -> str:
    """``1, 2, 4`` for messages."""
    return ", ".join(str(x) for x in xs)
