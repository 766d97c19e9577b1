"""Which weight tensors a distortion touches."""

from __future__ import annotations

from fnmatch import fnmatch

from torch import nn

from trainers.config import TargetConfig
from trainers.distortions import Distortion

_LAYER_TYPES = (nn.Conv2d, nn.Linear, nn.LSTM)


def select_targets(
    model: nn.Module, cfg: TargetConfig, distortion: Distortion | None = None
) -> dict[str, nn.Parameter]:
    """Conv/linear weights and LSTM weight matrices, in module order.

    By default the first conv is skipped (it is tiny and sensitive: the papers keep it) and so are
    layers with fewer than ``cfg.min_params`` weights. ``include`` patterns, when given, replace
    that default: exactly the matching parameters are targets. ``exclude`` patterns take
    parameters out in either case. Biases are never targets. The default also leaves out
    tensors the ``distortion`` does not apply to (e.g. linear weights for Tucker-2).
    """
    first_conv = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    targets: dict[str, nn.Parameter] = {}
    for mod_name, mod in model.named_modules():
        if not isinstance(mod, _LAYER_TYPES):
            continue
        for p_name, p in mod.named_parameters(recurse=False):
            if p.dim() < 2:  # biases
                continue
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            forced = any(fnmatch(full, pat) for pat in cfg.include)
            default_in = (
                not (cfg.skip_first_conv and mod_name == first_conv)
                and p.numel() >= cfg.min_params
                and (distortion is None or distortion.applies_to(full, p))
            )
            if (forced or (default_in and not cfg.include)) and not any(
                fnmatch(full, pat) for pat in cfg.exclude
            ):
                targets[full] = p
    return targets


def module_of(param_name: str) -> str:
    """``"layer1.0.conv1.weight"`` → ``"layer1.0.conv1"``."""
    return param_name.rpartition(".")[0]


def compression_targets(
    model: nn.Module, cfg: TargetConfig, distortion: Distortion
) -> tuple[dict[str, nn.Parameter], list[str]]:
    """The targets of ``distortion`` in ``model``, and every problem with them (none selected,
    a rank above a layer's size, a tile that does not divide...), each naming the field to fix."""
    targets = select_targets(model, cfg, distortion)
    if not targets:
        return targets, [
            "compression.targets: no weight tensor selected; relax min_params/exclude or add include patterns"
        ]
    weights = {n: p.detach() for n, p in targets.items()}
    return targets, [f"compression.params: {m}" for m in distortion.validate(weights)]
