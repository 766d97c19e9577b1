"""Noise distortions: multiplicative uniform noise and additive Gaussian noise.

Noise is drawn from a generator seeded by (run seed, event index), so a resumed run distorts
with exactly the same noise and the training's own RNG stream is left untouched.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from trainers.distortions.base import Distortion, DistortionContext


def uniform_noise(
    w: torch.Tensor, amplitude: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``w·(1 − u)`` with ``u ~ U(−a, a)`` elementwise."""
    u = torch.rand(w.shape, generator=generator, device=w.device, dtype=w.dtype)
    return w * (1.0 - amplitude * (2.0 * u - 1.0))


def gaussian_noise(
    w: torch.Tensor, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``w + ε`` with ``ε ~ N(0, std²)``."""
    return w + std * torch.randn(w.shape, generator=generator, device=w.device, dtype=w.dtype)


class _SeededNoise(Distortion):
    """A noise distortion: subclasses implement :meth:`noisy`."""

    def noisy(self, w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``w`` with noise drawn from ``generator``."""
        raise NotImplementedError

    def apply(
        self, weights: Mapping[str, torch.Tensor], ctx: DistortionContext
    ) -> dict[str, torch.Tensor]:
        # One generator per event (and device), drawn through in a fixed (name) order:
        # reproducible.
        gens: dict[torch.device, torch.Generator] = {}
        out = {}
        for name, w in weights.items():
            g = gens.setdefault(w.device, ctx.generator(w.device))
            out[name] = self.noisy(w, g)
        return out


class UniformNoise(_SeededNoise):
    """Multiplicative uniform noise of amplitude ``a`` (a ∈ [0, 1))."""

    name = "uniform_noise"

    def __init__(self, a: float) -> None:
        if not 0.0 <= a < 1.0:
            raise ValueError(f"uniform_noise: a must be in [0, 1), got {a}")
        self.a = float(a)

    def noisy(self, w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return uniform_noise(w, self.a, generator)


class GaussianNoise(_SeededNoise):
    """Additive Gaussian noise; ``eta`` is the standard deviation of ε."""

    name = "gaussian_noise"

    def __init__(self, eta: float) -> None:
        if eta < 0:
            raise ValueError(f"gaussian_noise: eta must be >= 0, got {eta}")
        self.eta = float(eta)

    def noisy(self, w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return gaussian_noise(w, self.eta, generator)
