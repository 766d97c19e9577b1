"""Layers of exported (structurally compressed) models, and helpers to build them.

The factorizing distortions build their compressed layers here from standard ``torch.nn``
modules where they can (SVD, Tucker-2: ``nn.Sequential`` of convs / linears) and from the
layer classes below where they cannot (tiled SVD). :data:`LAYERS` lists those classes: the
loader of saved models (:mod:`trainers.serialize`) rebuilds them by name, so a new layer class
goes into this module and into :data:`LAYERS`.

A layer class whose MACs the counter (:mod:`trainers.counting`, which knows Conv2d / Linear /
LSTM by their shapes) cannot derive defines ``forward_macs(output) -> int``, the MACs of the
forward call that produced ``output``; the counter asks it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LAYERS",
    "TiledLowRankConv2d",
    "TiledLowRankLinear",
    "check_restructurable",
    "conv_args",
    "copy_bias",
]


# --------------------------------------------------------------------------------------------
# Tiled low-rank layers


class TiledLowRankLinear(nn.Module):
    """``y = K x + b`` with ``K (out×in)`` stored as ``k×k`` tiles ``K[i, j] = U[i, j] @ V[i, j]``.

    Parameters: ``u (out/k, in/k, k, r)``, ``v (out/k, in/k, r, k)``, optional ``bias (out,)``;
    ``(out/k)(in/k)·2kr`` weights, the tiled SVD storage count.
    """

    def __init__(
        self, in_features: int, out_features: int, tile: int, rank: int, bias: bool = True
    ) -> None:
        super().__init__()
        if in_features % tile or out_features % tile:
            raise ValueError(f"{tile}×{tile} tiles do not divide {out_features}×{in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.tile, self.rank = tile, rank
        grid = (out_features // tile, in_features // tile)
        self.u = nn.Parameter(torch.zeros(*grid, tile, rank))
        self.v = nn.Parameter(torch.zeros(*grid, rank, tile))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def lowered(self, cols: torch.Tensor) -> torch.Tensor:
        """``K @ cols`` for ``cols (B, in, L)``: per tile, ``V`` then ``U``, summed over ``j``."""
        b, _, length = cols.shape
        nj, k = self.u.shape[1], self.tile
        z = torch.einsum("ijrk,bjkl->bijrl", self.v, cols.reshape(b, nj, k, length))
        y = torch.einsum("ijkr,bijrl->bikl", self.u, z)
        return y.reshape(b, self.out_features, length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.lowered(x.reshape(-1, self.in_features, 1)).reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias

    def forward_macs(self, output: torch.Tensor) -> int:
        """Per output vector every tile costs ``k·r`` MACs for ``V`` and ``k·r`` for ``U``."""
        return (output.numel() // self.out_features) * 2 * self.u.numel()

    def dense_weight(self) -> torch.Tensor:
        """The full ``out×in`` matrix (for checks)."""
        return _untile(self.u @ self.v)


class TiledLowRankConv2d(nn.Module):
    """A conv whose lowered kernel ``T×(S·kh·kw)`` is stored as rank-r ``k×k`` tiles.

    The input is lowered with ``unfold`` (im2col, the same column order as
    ``weight.reshape(T, -1)``) and multiplied by the tiled factors; same arguments and output as
    the ``nn.Conv2d`` it replaces (``groups=1``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        tile: int,
        rank: int,
        stride: Sequence[int] = (1, 1),
        padding: Sequence[int] | str = (0, 0),
        dilation: Sequence[int] = (1, 1),
        padding_mode: str = "zeros",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = tuple(kernel_size)
        self.stride, self.dilation = tuple(stride), tuple(dilation)
        self.padding = padding if isinstance(padding, str) else tuple(padding)
        self.padding_mode = padding_mode
        self.tile, self.rank = tile, rank
        n = in_channels * math.prod(self.kernel_size)
        self.mat = TiledLowRankLinear(n, out_channels, tile, rank, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def _pads(self) -> tuple[int, int, int, int] | None:
        """Explicit ``F.pad`` amounts (left, right, top, bottom), or None for unfold's padding."""
        if isinstance(self.padding, str):
            if self.padding == "valid":
                return (0, 0, 0, 0)
            tot = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=True)]
            return (tot[1] // 2, tot[1] - tot[1] // 2, tot[0] // 2, tot[0] - tot[0] // 2)
        if self.padding_mode != "zeros":
            ph, pw = self.padding
            return (pw, pw, ph, ph)
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = self._pads()
        padding = cast("tuple[int, ...]", self.padding)  # a str padding is replaced just below
        if pads is not None:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, pads, mode=mode)
            padding = (0, 0)
        h, w = x.shape[-2:]
        cols = F.unfold(x, self.kernel_size, self.dilation, padding, self.stride)
        ph, pw = padding
        (kh, kw), (dh, dw), (sh, sw) = self.kernel_size, self.dilation, self.stride
        h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        y = self.mat.lowered(cols).reshape(x.shape[0], self.out_channels, h_out, w_out)
        return y if self.bias is None else y + self.bias[:, None, None]

    def forward_macs(self, output: torch.Tensor) -> int:
        """Per output position every tile costs ``k·r`` MACs for ``V`` and ``k·r`` for ``U``.

        The inner :class:`TiledLowRankLinear` runs through ``.lowered()``, not its forward, so
        a MAC-counting forward hook on it does not fire: nothing is counted twice.
        """
        return (output.numel() // self.out_channels) * 2 * self.mat.u.numel()


def _untile(tiles: torch.Tensor) -> torch.Tensor:
    """``(m/k, n/k, k, k)`` tile grid → ``m×n`` matrix."""
    gi, gj, k, _ = tiles.shape
    return tiles.transpose(1, 2).reshape(gi * k, gj * k)


# The layer classes of this project that exported models may contain, by class name: the loader
# rebuilds these (besides standard torch.nn modules) and the fx tracer keeps them as leaves.
LAYERS: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (TiledLowRankConv2d, TiledLowRankLinear)
}


# --------------------------------------------------------------------------------------------
# Helpers of the export_layer hooks


def check_restructurable(module: nn.Module, weight: torch.Tensor, method: str) -> None:
    """Raise ``ValueError`` unless ``weight`` is the weight of an ``nn.Linear`` or of a
    ``groups=1`` ``nn.Conv2d`` (``export`` adds the target's name to the message)."""
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        kind = f"a Conv2d with groups={module.groups}"
    elif not isinstance(module, nn.Linear | nn.Conv2d):
        kind = f"a {type(module).__name__}"
    elif tuple(weight.shape) != tuple(module.weight.shape):
        kind = f"a {type(module).__name__} parameter of shape {tuple(weight.shape)}, not its weight"
    else:
        return
    raise ValueError(
        f"{kind}: {method} can only restructure the weight of an nn.Linear or a groups=1 "
        f"nn.Conv2d — exclude it from the targets"
    )


def conv_args(conv: nn.Conv2d) -> dict[str, Any]:
    """The geometry of ``conv`` (stride, padding, dilation, padding mode) as constructor kwargs."""
    return {
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "padding_mode": conv.padding_mode,
    }


def copy_bias(dst: nn.Module, src: nn.Module) -> None:
    """Copy ``src``'s bias (if any) into ``dst``'s."""
    if src.bias is not None:
        cast(torch.Tensor, dst.bias).data.copy_(cast(torch.Tensor, src.bias).detach())
