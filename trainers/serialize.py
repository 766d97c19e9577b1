"""Saving and loading exported models without the trainer or the original model class.

:func:`save_exported` stores the state dict plus a JSON-able description (the ``torch.fx``
graph of the forward pass and the constructor arguments of its standard ``torch.nn`` modules
and of the layers in :mod:`trainers.distortions.layers`), so :func:`load_exported` rebuilds the
model from plain data: ``torch.load(weights_only=True)``, no pickled code.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import json
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from trainers.distortions.layers import LAYERS

__all__ = ["FORMAT", "load_exported", "rebuild", "save_exported", "structure_spec"]

FORMAT = "compsweep.exported/1"

# This project's layer classes that a saved model may contain, by class name.
_OWN_MODULES: dict[str, type[nn.Module]] = dict(LAYERS)
_OWN_TYPES = tuple(_OWN_MODULES.values())
# Constructor arguments of modules whose __init__ takes *args/**kwargs.
_RNN_ARGS = [
    "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
    "bidirectional", "proj_size",
]  # fmt: skip
# Modules a loaded graph may call functions from (the graph is data, not code to trust blindly).
_FUNCTION_MODULES = ("torch", "_operator", "operator", "math")
_BUILTINS = {"getattr", "len", "int", "float", "bool", "slice", "tuple", "list", "max", "min"}


class _Tracer(fx.Tracer):
    """The default tracer, keeping this project's layers (e.g. tiled low-rank) as single calls."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _OWN_TYPES) or super().is_leaf_module(m, module_qualified_name)


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    return v


def _module_spec(name: str, mod: nn.Module) -> dict[str, Any]:
    cls = type(mod)
    if _OWN_MODULES.get(cls.__name__) is cls:
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


def _function_ref(fn: Callable[..., Any]) -> str:
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


def _resolve_function(ref: str) -> Callable[..., Any]:
    mod_name, _, attr = ref.partition(":")
    if mod_name == "builtins":
        if attr not in _BUILTINS:
            raise ValueError(f"load_exported: builtin {attr!r} is not allowed in a graph")
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
            root,
            path,
            lambda parent, leaf, m=mspec: parent.add_module(leaf, _build_module(m)),  # type: ignore[misc]
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
    ``trainers.models``); its leaf modules must be standard ``torch.nn`` modules or the layers
    of :mod:`trainers.distortions.layers` (e.g. the tiled low-rank layers).
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
