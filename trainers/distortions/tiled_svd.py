"""Tiled SVD (DeepTwist §4.2, pNR paper appendix C.2).

The lowered ``m×n`` matrix (conv ``T×(S·d·d)``, linear ``out×in``) is cut into ``k×k`` tiles
and each tile is replaced by its best rank-r approximation. Every tile of every target layer is
``k×k``, so one distortion step is ONE batched decomposition over ``(num_tiles, k, k)`` for the
whole model (``eigh`` of the tiles' Gram matrices, see :mod:`trainers.distortions.lowrank`).
Storage: ``num_tiles · 2kr`` numbers instead of ``m·n``. The exported layers are
:class:`~trainers.distortions.layers.TiledLowRankConv2d` / ``TiledLowRankLinear``, holding the
per-tile factors ``U (m/k, n/k, k, r)`` and ``V (m/k, n/k, r, k)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn

from trainers.distortions.base import Distortion, DistortionContext
from trainers.distortions.layers import (
    TiledLowRankConv2d,
    TiledLowRankLinear,
    check_restructurable,
    conv_args,
    copy_bias,
)
from trainers.distortions.lowrank import (
    divisors,
    fmt_list,
    lowered_shape,
    lowrank_approx,
    matrix_problems,
    truncated_svd,
)


def to_tiles(mats: torch.Tensor, tile: int) -> torch.Tensor:
    """Cut ``(..., m, n)`` into ``(..., (m/k)·(n/k), k, k)`` tiles, row-major over the tile grid."""
    *b, m, n = mats.shape
    t = mats.reshape(*b, m // tile, tile, n // tile, tile).transpose(-3, -2)
    return t.reshape(*b, (m // tile) * (n // tile), tile, tile)


def from_tiles(tiles: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Inverse of :func:`to_tiles`: ``(..., num_tiles, k, k)`` back to ``(..., m, n)``."""
    *b, _, k, _ = tiles.shape
    t = tiles.reshape(*b, m // k, n // k, k, k).transpose(-3, -2)
    return t.reshape(*b, m, n)


def check_tiling(m: int, n: int, tile: int, name: str = "") -> None:
    """Raise ``ValueError`` when ``tile×tile`` tiles do not divide an ``m×n`` matrix."""
    if m % tile or n % tile:
        layer = f"layer {name!r}: " if name else ""
        raise ValueError(
            f"tiled_svd: {layer}{tile}×{tile} tiles do not divide the lowered {m}×{n} matrix; "
            f"tile sizes that do: {fmt_list(divisors(math.gcd(m, n)))}"
        )


def tiled_svd_approx(w: torch.Tensor, tile: int, rank: int) -> torch.Tensor:
    """Rank-``rank`` SVD of every ``tile×tile`` tile of the lowered matrix of ``w``."""
    m, n = lowered_shape(w)
    check_tiling(m, n, tile)
    tiles = to_tiles(w.reshape(m, n), tile)
    return from_tiles(lowrank_approx(tiles, rank), m, n).reshape(w.shape)


def tiled_svd_approx_many(
    ws: list[torch.Tensor], tile: int, rank: int, names: list[str] | None = None
) -> list[torch.Tensor]:
    """:func:`tiled_svd_approx` of several weights with ONE batched SVD over all their tiles
    (``names`` only label error messages)."""
    if not ws:
        return []
    shapes = [lowered_shape(w) for w in ws]
    for i, (m, n) in enumerate(shapes):
        check_tiling(m, n, tile, names[i] if names else "")
    tiles = torch.cat(
        [to_tiles(w.reshape(m, n), tile) for w, (m, n) in zip(ws, shapes, strict=True)]
    )
    approx = lowrank_approx(tiles, rank)
    counts = [(m // tile) * (n // tile) for m, n in shapes]
    return [
        from_tiles(t, m, n).reshape(w.shape)
        for t, w, (m, n) in zip(approx.split(counts), ws, shapes, strict=True)
    ]


def tiled_svd_approx_loop(w: torch.Tensor, tile: int, rank: int) -> torch.Tensor:
    """Reference: the same result as :func:`tiled_svd_approx` with a Python loop over tiles
    (for tests and the speed benchmark only)."""
    m, n = lowered_shape(w)
    check_tiling(m, n, tile)
    mat = w.reshape(m, n)
    out = torch.empty_like(mat)
    for i in range(0, m, tile):
        for j in range(0, n, tile):
            u, s, vh = torch.linalg.svd(mat[i : i + tile, j : j + tile], full_matrices=False)
            out[i : i + tile, j : j + tile] = (u[:, :rank] * s[:rank]) @ vh[:rank]
    return out.reshape(w.shape)


def tiled_svd_factors(w: torch.Tensor, tile: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tile factors ``U (m/k, n/k, k, r)`` and ``V (m/k, n/k, r, k)``: tile ``(i, j)`` of the
    lowered matrix is ``U[i, j] @ V[i, j]``."""
    m, n = lowered_shape(w)
    check_tiling(m, n, tile)
    u, v = truncated_svd(to_tiles(w.reshape(m, n), tile), rank)
    grid = (m // tile, n // tile)
    return u.reshape(*grid, tile, -1).to(w.dtype), v.reshape(*grid, -1, tile).to(w.dtype)


class TiledSVD(Distortion):
    """Rank-r SVD of every ``tile×tile`` tile of each target's lowered matrix.

    Args:
        tile: tile size k; it must divide both lowered dimensions of every target layer.
        rank: rank r per tile, 1 ≤ r ≤ k.
    """

    name = "tiled_svd"

    def __init__(self, tile: int, rank: int) -> None:
        for knob, v in (("tile", tile), ("rank", rank)):
            if isinstance(v, bool) or int(v) != v or v <= 0:
                raise ValueError(f"tiled_svd: {knob} must be a positive integer, got {v!r}")
        if rank > tile:
            raise ValueError(
                f"tiled_svd: rank {rank} > tile {tile}: a {tile}×{tile} tile has rank at most "
                f"{tile}; use rank ≤ {tile} or a larger tile"
            )
        self.tile = int(tile)
        self.rank = int(rank)

    def validate(self, weights: Mapping[str, torch.Tensor]) -> list[str]:
        return matrix_problems(weights, "tiled_svd", self._tile_problem)

    def _tile_problem(self, name: str, w: torch.Tensor, m: int, n: int) -> str | None:
        k = self.tile
        if not (m % k or n % k):
            return None
        return (
            f"tiled_svd: layer {name!r} has a lowered matrix of {m}×{n}, which {k}×{k} "
            f"tiles do not divide; tile sizes that divide it: {fmt_list(divisors(math.gcd(m, n)))} "
            f"(or drop the layer from the targets)"
        )

    def apply(
        self, weights: Mapping[str, torch.Tensor], ctx: DistortionContext
    ) -> dict[str, torch.Tensor]:
        # All tiles are k×k whatever the layer: one batched SVD per (dtype, device).
        groups: dict[tuple[Any, ...], list[str]] = {}
        for name, w in weights.items():
            groups.setdefault((w.dtype, w.device), []).append(name)
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for names in groups.values():
                ws = [weights[n].detach() for n in names]
                out.update(
                    zip(names, tiled_svd_approx_many(ws, self.tile, self.rank, names), strict=True)
                )
        return {n: out[n] for n in weights}

    def distort_tensor(self, name: str, w: torch.Tensor, ctx: DistortionContext) -> torch.Tensor:
        with torch.no_grad():
            m, n = lowered_shape(w)
            check_tiling(m, n, self.tile, name)
            return tiled_svd_approx(w.detach(), self.tile, self.rank)

    def num_tiles(self, w: torch.Tensor) -> int:
        m, n = lowered_shape(w)
        return (m // self.tile) * (n // self.tile)

    def stored_params(self, name: str, w: torch.Tensor) -> float:
        return float(self.num_tiles(w) * 2 * self.tile * self.rank)

    def macs_fraction(self, name: str, w: torch.Tensor) -> float:
        # Per output position each tile costs k·r (V) + k·r (U) MACs, the same as its storage.
        return self.stored_params(name, w) / w.numel()

    def export_layer(self, module: Any, weight: torch.Tensor) -> nn.Module:
        """:class:`TiledLowRankConv2d` / :class:`TiledLowRankLinear` holding the tiles'
        factors (same arguments and bias as the dense layer)."""
        check_restructurable(module, weight, self.name)
        k, r = self.tile, self.rank
        u, v = tiled_svd_factors(weight, k, r)
        has_bias = module.bias is not None
        if isinstance(module, nn.Linear):
            new: TiledLowRankLinear | TiledLowRankConv2d = TiledLowRankLinear(
                module.in_features, module.out_features, k, r, bias=has_bias
            )
            factors = cast(TiledLowRankLinear, new)
        else:
            new = TiledLowRankConv2d(
                module.in_channels, module.out_channels, module.kernel_size, k, r, bias=has_bias,
                **conv_args(module),
            )  # fmt: skip
            factors = new.mat
        factors.u.data.copy_(u)
        factors.v.data.copy_(v)
        copy_bias(new, module)
        return new
