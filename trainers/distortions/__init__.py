"""Distortions h(w): registry name → module, imported lazily (Ray Tune style)."""

from __future__ import annotations

import importlib
from typing import Any

from trainers.distortions.base import Distortion, DistortionContext

# name -> "module:Class". A new compression method is one module plus one line here.
REGISTRY: dict[str, str] = {
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
    "funnel": "trainers.distortions.funnel:Funnel",  # a MethodRecipe (trainers.methods), not a Distortion
}


def distortion_class(name: str) -> type[Distortion]:
    """The class registered under ``name``; unknown names raise ``ValueError`` listing valid ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown distortion {name!r}; valid: {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_distortion(name: str, **params: Any) -> Distortion:
    """Build a distortion from its registry name and knobs (bad knobs raise ``ValueError``)."""
    cls = distortion_class(name)
    try:
        return cls(**params)
    except TypeError as e:  # unexpected / missing keyword: say which knobs exist
        import inspect

        knobs = [p for p in inspect.signature(cls).parameters if p != "self"]
        raise ValueError(f"distortion {name!r}: {e}; its knobs are: {', '.join(knobs)}") from None


__all__ = ["REGISTRY", "Distortion", "DistortionContext", "distortion_class", "make_distortion"]
