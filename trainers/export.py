"""Export of a trained (distorted) model in its compressed structure, and its save/load.

Training never changes the model's structure (occasional regularization): the final weights
are ``h(w)`` and merely *representable* in compressed form. :func:`export` builds that form:

* ``svd``: ``K ≈ A·B`` → ``d×d`` conv ``S→r`` (no bias) then ``1×1`` conv ``r→T`` (bias);
  linear → ``Linear(in, r, bias=False)`` then ``Linear(r, out)``.
* ``tiled_svd``: :class:`TiledLowRankConv2d` / :class:`TiledLowRankLinear`, holding per-tile
  factors ``U (m/k, n/k, k, r)`` and ``V (m/k, n/k, r, k)``; conv inputs are lowered by
  ``unfold`` and multiplied tile by tile in one batched product.
* ``tucker2``: ``1×1`` conv ``S→R_s``, ``d×d`` core conv ``R_s→R_t`` (original stride, padding,
  dilation), ``1×1`` conv ``R_t→T`` (original bias); linear → three linears ``S→R_s→R_t→T``.
* pruning, quantization, weight decay and noise: the structure is unchanged (pruning reports
  its non-zeros in :func:`compression_report`).

:func:`save_exported` stores the state dict plus a JSON-able description (the ``torch.fx``
graph of the forward pass and the constructor arguments of its standard ``torch.nn`` modules),
so :func:`load_exported` rebuilds the model without the trainer or the original model class.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import math
import operator
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from trainers.counting import count_macs, count_params
from trainers.distortions.base import Distortion
from trainers.distortions.svd import svd_factors
from trainers.distortions.tiled_svd import tiled_svd_factors
from trainers.distortions.tucker2 import tucker2_factors

__all__ = [
    "TiledLowRankConv2d",
    "TiledLowRankLinear",
    "compression_report",
    "export",
    "load_exported",
    "save_exported",
]

# Distortions whose compressed form is the dense structure itself (values change, shapes don't).
STRUCTURE_KEEPING = frozenset(
    {"weight_decay", "uniform_noise", "gaussian_noise", "prune", "quantize"}
)


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
        padding = self.padding
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


_TILED = (TiledLowRankConv2d, TiledLowRankLinear)


def _untile(tiles: torch.Tensor) -> torch.Tensor:
    """``(m/k, n/k, k, k)`` tile grid → ``m×n`` matrix."""
    gi, gj, k, _ = tiles.shape
    return tiles.transpose(1, 2).reshape(gi * k, gj * k)


# --------------------------------------------------------------------------------------------
# Building the compressed layers


def _conv_args(conv: nn.Conv2d) -> dict[str, Any]:
    return {
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "padding_mode": conv.padding_mode,
    }


def _like(mod: nn.Module, new: nn.Module) -> nn.Module:
    """``new`` on the device / dtype of ``mod``, in its training mode."""
    p = next(mod.parameters())
    return new.to(device=p.device, dtype=p.dtype).train(mod.training)


def _copy_bias(dst: nn.Module, src: nn.Module) -> None:
    if src.bias is not None:
        dst.bias.data.copy_(src.bias.detach())


def _svd_module(mod: nn.Module, distortion: Distortion, w: torch.Tensor) -> nn.Module:
    rank = distortion.layer_rank(w)
    a, b = svd_factors(w, rank)  # (T, r), (r, n)
    r = a.shape[1]
    has_bias = mod.bias is not None
    if isinstance(mod, nn.Linear):
        first = nn.Linear(mod.in_features, r, bias=False)
        second = nn.Linear(r, mod.out_features, bias=has_bias)
        first.weight.data.copy_(b)
        second.weight.data.copy_(a)
    else:
        first = nn.Conv2d(mod.in_channels, r, mod.kernel_size, bias=False, **_conv_args(mod))
        second = nn.Conv2d(r, mod.out_channels, 1, bias=has_bias)
        first.weight.data.copy_(b.reshape(r, *w.shape[1:]))
        second.weight.data.copy_(a.reshape(*a.shape, 1, 1))
    _copy_bias(second, mod)
    return nn.Sequential(first, second)


def _tiled_module(mod: nn.Module, distortion: Distortion, w: torch.Tensor) -> nn.Module:
    k, r = distortion.tile, distortion.rank
    u, v = tiled_svd_factors(w, k, r)
    has_bias = mod.bias is not None
    if isinstance(mod, nn.Linear):
        new = TiledLowRankLinear(mod.in_features, mod.out_features, k, r, bias=has_bias)
        target = new
    else:
        new = TiledLowRankConv2d(
            mod.in_channels, mod.out_channels, mod.kernel_size, k, r, bias=has_bias,
            **_conv_args(mod),
        )  # fmt: skip
        target = new.mat
    target.u.data.copy_(u)
    target.v.data.copy_(v)
    _copy_bias(new, mod)
    return new


def _tucker2_module(mod: nn.Module, distortion: Distortion, w: torch.Tensor) -> nn.Module:
    core, p_s, p_t = tucker2_factors(w, *distortion.ranks(w))
    r_t, r_s = core.shape[:2]
    has_bias = mod.bias is not None
    if isinstance(mod, nn.Linear):
        layers = [
            nn.Linear(mod.in_features, r_s, bias=False),
            nn.Linear(r_s, r_t, bias=False),
            nn.Linear(r_t, mod.out_features, bias=has_bias),
        ]
        weights = [p_s.T, core.reshape(r_t, r_s), p_t]
    else:
        layers = [
            nn.Conv2d(mod.in_channels, r_s, 1, bias=False),
            nn.Conv2d(r_s, r_t, mod.kernel_size, bias=False, **_conv_args(mod)),
            nn.Conv2d(r_t, mod.out_channels, 1, bias=has_bias),
        ]
        weights = [p_s.T[..., None, None], core, p_t[..., None, None]]
    for layer, wt in zip(layers, weights, strict=True):
        layer.weight.data.copy_(wt)
    _copy_bias(layers[-1], mod)
    return nn.Sequential(*layers)


_FACTORIZERS: dict[str, Callable[[nn.Module, Distortion, torch.Tensor], nn.Module]] = {
    "svd": _svd_module,
    "tiled_svd": _tiled_module,
    "tucker2": _tucker2_module,
}


def export(model: nn.Module, distortion: Distortion, targets: Sequence[str]) -> nn.Module:
    """A new model with the compressed structure, built from ``model``'s current weights.

    Args:
        model: the trained model; its target weights are (normally) already ``h(w)``. It is
            not modified.
        distortion: the distortion used in training (its knobs give the ranks / tiles).
        targets: names of the distorted parameters, e.g. ``"layer1.0.conv1.weight"``.

    Factorizing methods (``svd``, ``tiled_svd``, ``tucker2``) replace each target's
    ``nn.Conv2d`` / ``nn.Linear`` by its factorized form, exact when the weights are already
    ``h(w)``; other methods keep the structure. Raises ``ValueError`` for targets that are not
    the ``weight`` of a ``groups=1`` ``nn.Conv2d`` or of an ``nn.Linear`` (e.g. LSTM matrices),
    and for distortions without a known compressed form.
    """
    new = copy.deepcopy(model)
    if distortion.name in STRUCTURE_KEEPING:
        return new
    if distortion.name not in _FACTORIZERS:
        known = sorted(set(_FACTORIZERS) | STRUCTURE_KEEPING)
        raise ValueError(
            f"export: no compressed structure for distortion {distortion.name!r}; "
            f"known: {', '.join(known)}"
        )
    build = _FACTORIZERS[distortion.name]
    for target in targets:
        mod_name, _, p_name = target.rpartition(".")
        mod = new.get_submodule(mod_name)
        ok = isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.groups == 1)
        if p_name != "weight" or not ok:
            raise ValueError(
                f"export: target {target!r} is not the weight of an nn.Linear or a groups=1 "
                f"nn.Conv2d ({type(mod).__name__}); {distortion.name} can only restructure "
                f"those — exclude it from the targets"
            )
        with torch.no_grad():
            replacement = _like(mod, build(mod, distortion, mod.weight.detach()))
        parent_name, _, child = mod_name.rpartition(".")
        setattr(new.get_submodule(parent_name), child, replacement)
    return new


# --------------------------------------------------------------------------------------------
# Report


def _tiled_macs(model: nn.Module, input_shape: Sequence[int], dtype: torch.dtype) -> int:
    """MACs of the tiled low-rank layers (``count_macs`` only sees Conv2d / Linear / LSTM)."""
    macs = 0
    handles = []

    def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        # Per output position every tile costs k·r MACs for V and k·r for U.
        factors = mod.mat if isinstance(mod, TiledLowRankConv2d) else mod
        channels = output.shape[1] if isinstance(mod, TiledLowRankConv2d) else output.shape[-1]
        macs += (output.numel() // channels) * 2 * factors.u.numel()

    for mod in model.modules():
        # A tiled conv calls its inner tiled linear through .lowered(), not forward(): its hook
        # does not fire, so nothing is counted twice.
        if isinstance(mod, _TILED):
            handles.append(mod.register_forward_hook(hook))
    if not handles:
        return 0
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), dtype=dtype, device=p.device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return macs


def model_macs(
    model: nn.Module, input_shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> int:
    """MACs for one sample, including the tiled low-rank layers."""
    return count_macs(model, input_shape, dtype) + _tiled_macs(model, input_shape, dtype)


def count_nonzero(model: nn.Module) -> int:
    """Non-zero parameter values (what pruning saves in a sparse format)."""
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())


def compression_report(
    original: nn.Module,
    exported: nn.Module,
    input_shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Params, MACs (one sample of ``input_shape``) and non-zeros before/after compression.

    ``compression_ratio = params_before / params_after``; ``macs_ratio`` likewise;
    ``nnz_ratio = nnz_before / nnz_after`` is the storage gain of pruning (sparse storage).
    """
    params_before, params_after = count_params(original), count_params(exported)
    macs_before = model_macs(original, input_shape, dtype)
    macs_after = model_macs(exported, input_shape, dtype)
    nnz_before, nnz_after = count_nonzero(original), count_nonzero(exported)
    return {
        "params_before": params_before,
        "params_after": params_after,
        "compression_ratio": params_before / max(params_after, 1),
        "macs_before": macs_before,
        "macs_after": macs_after,
        "macs_ratio": macs_before / max(macs_after, 1),
        "nnz_before": nnz_before,
        "nnz_after": nnz_after,
        "nnz_ratio": nnz_before / max(nnz_after, 1),
    }


# --------------------------------------------------------------------------------------------
# Save / load: fx graph + module constructor arguments + state dict

FORMAT = "compsweep.exported/1"

_OWN_MODULES: dict[str, type[nn.Module]] = {
    "TiledLowRankConv2d": TiledLowRankConv2d,
    "TiledLowRankLinear": TiledLowRankLinear,
}
# Constructor arguments of modules whose __init__ takes *args/**kwargs.
_RNN_ARGS = [
    "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
    "bidirectional", "proj_size",
]  # fmt: skip
# Modules a loaded graph may call functions from (the graph is data, not code to trust blindly).
_FUNCTION_MODULES = ("torch", "_operator", "operator", "math")
_BUILTINS = {"getattr", "len", "int", "float", "bool", "slice", "tuple", "list", "max", "min"}


class _Tracer(fx.Tracer):
    """The default tracer, keeping the tiled low-rank layers as single calls."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _TILED) or super().is_leaf_module(m, module_qualified_name)


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    return v


def _module_spec(name: str, mod: nn.Module) -> dict[str, Any]:
    cls = type(mod)
    if cls in _OWN_MODULES.values():
        kind = f"compsweep:{cls.__name__}"
    elif getattr(nn, cls.__name__, None) is cls:
        kind = f"torch.nn:{cls.__name__}"
    else:
        raise ValueError(
            f"save_exported: module {name!r} ({cls.__module__}.{cls.__qualname__}) is neither a "
            f"torch.nn module nor traceable into them; make its forward fx-traceable"
        )
    if isinstance(mod, nn.RNNBase):
        names = _RNN_ARGS
    else:
        params = inspect.signature(cls.__init__).parameters.values()
        skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        names = [
            p.name
            for p in params
            if p.kind not in skip and p.name not in ("self", "device", "dtype")
            and not p.name.startswith("_")
        ]  # fmt: skip
    kwargs = {}
    for n in names:
        if not hasattr(mod, n):
            continue
        v = getattr(mod, n)
        if n == "bias" and (v is None or isinstance(v, torch.Tensor)):
            v = v is not None
        kwargs[n] = _jsonable(v)
    try:
        json.dumps(kwargs)
    except TypeError as e:
        raise ValueError(
            f"save_exported: arguments of module {name!r} are not JSON-able: {e}"
        ) from None
    return {"type": kind, "kwargs": kwargs}


def _function_ref(fn: Callable) -> str:
    """``"module:qualname"`` that :func:`_resolve_function` maps back to ``fn`` itself."""
    mod = getattr(fn, "__module__", None) or ""
    for attr in (getattr(fn, "__name__", None), getattr(fn, "__qualname__", None)):
        if attr and mod:
            ref = f"{mod}:{attr}"
            try:
                if _resolve_function(ref) is fn:
                    return ref
            except (ValueError, AttributeError, ImportError):
                pass
    raise ValueError(f"save_exported: cannot name the function {fn!r} used in the forward pass")


def _resolve_function(ref: str) -> Callable:
    mod_name, _, attr = ref.partition(":")
    if mod_name == "builtins":
        if attr not in _BUILTINS:
            raise ValueError(f"load_exported: builtin {attr!r} is not allowed in a graph")
        import builtins

        return getattr(builtins, attr)
    if mod_name.split(".")[0] not in _FUNCTION_MODULES:
        raise ValueError(f"load_exported: functions from {mod_name!r} are not allowed in a graph")
    obj: Any = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _encode(v: Any) -> Any:
    if isinstance(v, fx.Node):
        return {"node": v.name}
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, tuple):  # also torch.Size
        return {"tuple": [_encode(x) for x in v]}
    if isinstance(v, list):
        return [_encode(x) for x in v]
    if isinstance(v, dict):
        return {"dict": [[k, _encode(x)] for k, x in v.items()]}
    if isinstance(v, slice):
        return {"slice": [_encode(v.start), _encode(v.stop), _encode(v.step)]}
    if v is Ellipsis:
        return {"ellipsis": True}
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).removeprefix("torch.")}
    if isinstance(v, torch.device):
        return {"device": str(v)}
    if isinstance(v, torch.memory_format):
        return {"memory_format": str(v).removeprefix("torch.")}
    raise ValueError(f"save_exported: cannot store the graph argument {v!r} ({type(v).__name__})")


def _decode(v: Any, env: dict[str, fx.Node]) -> Any:
    if isinstance(v, list):
        return [_decode(x, env) for x in v]
    if not isinstance(v, dict):
        return v
    ((tag, x),) = v.items()
    if tag == "node":
        return env[x]
    if tag == "tuple":
        return tuple(_decode(y, env) for y in x)
    if tag == "dict":
        return {k: _decode(y, env) for k, y in x}
    if tag == "slice":
        return slice(*(_decode(y, env) for y in x))
    if tag == "ellipsis":
        return Ellipsis
    if tag in ("dtype", "memory_format"):
        out = getattr(torch, x)
        if not isinstance(out, torch.dtype | torch.memory_format):
            raise ValueError(f"load_exported: bad {tag} {x!r}")
        return out
    if tag == "device":
        return torch.device(x)
    raise ValueError(f"load_exported: unknown graph argument tag {tag!r}")


def _trace(model: nn.Module) -> fx.GraphModule:
    return fx.GraphModule(model, _Tracer().trace(model))


def structure_spec(gm: fx.GraphModule) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON-able description of a traced model, and the tensors its graph reads that are
    not in its state dict (non-persistent buffers)."""
    nodes, modules, attrs = [], {}, {}
    state_keys = set(gm.state_dict())
    extra: dict[str, torch.Tensor] = {}
    for node in gm.graph.nodes:
        target: Any = node.target
        if node.op == "call_function":
            target = _function_ref(node.target)
        elif node.op == "call_module" and target not in modules:
            modules[target] = _module_spec(target, gm.get_submodule(target))
        elif node.op == "get_attr" and target not in attrs:
            value = operator.attrgetter(target)(gm)
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"save_exported: attribute {target!r} is not a tensor")
            kind = "parameter" if isinstance(value, nn.Parameter) else "buffer"
            if target not in state_keys:
                kind = "nonpersistent"
                extra[target] = value.detach().cpu()
            attrs[target] = {"kind": kind, "shape": list(value.shape), "dtype": str(value.dtype)}
        nodes.append(
            {
                "op": node.op,
                "name": node.name,
                "target": target,
                "args": _encode(node.args),
                "kwargs": _encode(node.kwargs),
            }
        )
    return {"format": FORMAT, "graph": nodes, "modules": modules, "attributes": attrs}, extra


def _set_path(root: nn.Module, path: str, fn: Callable[[nn.Module, str], None]) -> None:
    """Create holder modules along ``path`` and let ``fn(parent, leaf_name)`` attach the leaf."""
    *parents, leaf = path.split(".")
    mod = root
    for p in parents:
        if not hasattr(mod, p):
            mod.add_module(p, nn.Module())
        mod = getattr(mod, p)
    fn(mod, leaf)


def _build_module(spec: dict[str, Any]) -> nn.Module:
    ns, _, cls_name = spec["type"].partition(":")
    if ns == "compsweep" and cls_name in _OWN_MODULES:
        cls = _OWN_MODULES[cls_name]
    elif ns == "torch.nn" and isinstance(getattr(nn, cls_name, None), type):
        cls = getattr(nn, cls_name)
    else:
        raise ValueError(f"load_exported: unknown module type {spec['type']!r}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["kwargs"].items()}
    return cls(**kwargs)


def rebuild(spec: dict[str, Any], extra: dict[str, torch.Tensor] | None = None) -> fx.GraphModule:
    """A ``GraphModule`` from :func:`structure_spec`'s description; its state is still to be
    loaded (``extra`` holds the non-persistent buffers)."""
    if spec.get("format") != FORMAT:
        raise ValueError(f"load_exported: not a {FORMAT} file (format={spec.get('format')!r})")
    root = nn.Module()
    for path, mspec in spec["modules"].items():
        _set_path(
            root, path, lambda parent, leaf, m=mspec: parent.add_module(leaf, _build_module(m))
        )
    for path, a in spec["attributes"].items():
        dtype = getattr(torch, a["dtype"].removeprefix("torch."))
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"load_exported: bad dtype {a['dtype']!r}")
        if a["kind"] == "nonpersistent":
            value = (extra or {})[path]
        else:
            value = torch.zeros(a["shape"], dtype=dtype)  # filled by load_state_dict

        def attach(
            parent: nn.Module, leaf: str, kind: str = a["kind"], t: torch.Tensor = value
        ) -> None:
            if kind == "parameter":
                parent.register_parameter(leaf, nn.Parameter(t))
            else:
                parent.register_buffer(leaf, t, persistent=kind == "buffer")

        _set_path(root, path, attach)
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for nd in spec["graph"]:
        target = nd["target"]
        if nd["op"] == "call_function":
            target = _resolve_function(target)
        node = graph.create_node(
            nd["op"], target, _decode(nd["args"], env), _decode(nd["kwargs"], env), name=nd["name"]
        )
        env[nd["name"]] = node
    graph.lint()
    return fx.GraphModule(root, graph)


def save_exported(model: nn.Module, path: str | Path) -> None:
    """Save ``model`` as ``{"structure": JSON-able spec, "state_dict": ..., "extra": ...}``.

    The forward pass must be traceable by ``torch.fx`` (true of every model in
    ``trainers.models``); its leaf modules must be standard ``torch.nn`` modules or the tiled
    low-rank layers of this module.
    """
    gm = _trace(model)
    spec, extra = structure_spec(gm)
    json.dumps(spec)  # fail here, not at load time, if anything is not JSON-able
    state = gm.state_dict()
    payload = {
        "structure": spec,
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "extra": extra,
    }
    torch.save(payload, Path(path))


def load_exported(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model saved by :func:`save_exported` (an ``fx.GraphModule``, in eval mode).

    Only plain data is unpickled (``weights_only=True``); functions named in the graph must come
    from torch, operator or math.
    """
    payload = torch.load(Path(path), map_location=map_location, weights_only=True)
    model = rebuild(payload["structure"], payload.get("extra"))
    model.load_state_dict(payload["state_dict"], strict=True)
    return model.to(map_location).eval()
