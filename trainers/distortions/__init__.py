"""Compression methods by name: the distortions h(w) and the phased recipes, imported lazily.

A new compression method is one module in this package plus one line in :data:`REGISTRY`
(docs/design.md §10).
"""

from __future__ import annotations

from typing import Any

from trainers.distortions.base import Distortion, DistortionContext
from trainers.registry import Registry

REGISTRY: Registry[Any] = Registry(
    "distortion",
    {
        "weight_decay": "trainers.distortions.weight_decay:WeightDecay",
        "uniform_noise": "trainers.distortions.noise:UniformNoise",
        "gaussian_noise": "trainers.distortions.noise:GaussianNoise",
        "prune": "trainers.distortions.pruning:MagnitudePruning",
        "quantize": "trainers.distortions.quantization:BinaryCodeQuantization",
        "svd": "trainers.distortions.svd:SVD",
        "tiled_svd": "trainers.distortions.tiled_svd:TiledSVD",
        "tucker2": "trainers.distortions.tucker2:Tucker2",
        "cp": "trainers.distortions.cp:CP",
        "nuclear": "trainers.distortions.nuclear:Nuclear",
        # A MethodRecipe (trainers.methods), not a Distortion: the trainer tells them apart.
        "funnel": "trainers.distortions.funnel:Funnel",
    },
    arg_noun="knob",
)


def distortion_class(name: str) -> type[Distortion]:
    """The class registered under ``name``; unknown names raise ``ValueError`` listing valid ones."""
    cls: type[Distortion] = REGISTRY[name]
    return cls


def make_distortion(name: str, **params: Any) -> Distortion:
    """Build a distortion from its registry name and knobs (bad knobs raise ``ValueError``
    naming the method's knobs)."""
    made: Distortion = REGISTRY.create(name, **params)
    return made


__all__ = ["REGISTRY", "Distortion", "DistortionContext", "distortion_class", "make_distortion"]
