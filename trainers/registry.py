"""Name → object registries: compression methods, models, datasets, search spaces.

One shape for every "pick by name" table in the project (Ray Tune style): an entry is the
object itself or a lazy ``"module:attribute"`` path imported on first use, so listing the names
(e.g. for ``--help`` or a schema) imports nothing heavy. Every registry answers the same way:

- an unknown name is a :class:`UnknownName` (a ``ValueError``, and a ``KeyError`` so the
  registry is a read-only ``Mapping``) that lists the valid names and suggests a close one;
- :meth:`Registry.create` checks keyword arguments against the target's signature before the
  call, so an unknown or missing argument names the valid ones instead of a bare ``TypeError``.

Pure Python (the standard library only), so ``search_spaces`` can use it without torch.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

__all__ = ["Registry", "UnknownName", "keyword_parameters"]

T = TypeVar("T")


class UnknownName(ValueError, KeyError):
    """A name no registry entry has; the message lists the valid ones.

    Both a ``ValueError`` (what callers catch for bad input) and a ``KeyError`` (what a
    ``Mapping`` lookup raises, so ``in`` and ``.get`` behave).
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def keyword_parameters(target: Callable[..., Any], skip: int = 0) -> list[inspect.Parameter]:
    """The parameters a caller may pass by keyword to ``target``.

    Leaves out the first ``skip`` parameters (those the registry's owner passes itself, e.g. a
    dataset's common options), ``self`` of a class, ``*args`` / ``**kwargs``, and the keywords
    a ``functools.partial`` already fixes (``depth`` of ``resnet20``).
    """
    fixed = set(target.keywords) if isinstance(target, functools.partial) else set()
    fn: Any = target.func if isinstance(target, functools.partial) else target
    if inspect.isclass(fn):
        fn, skip = fn.__init__, skip + 1  # self
    params = list(inspect.signature(fn).parameters.values())[skip:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p for p in params if p.kind in kinds and p.name not in fixed]


class Registry(Mapping[str, T]):
    """Named entries of one kind, each an object or a lazy ``"module:attribute"`` path.

    Args:
        kind: what an entry is, in messages ("model", "search space", ...).
        entries: initial ``{name: object or "module:attribute"}``, in listing order.
        arg_noun: what a keyword argument of :meth:`create` is called in messages ("option",
            "knob").
        skip: leading parameters of every target that :meth:`create`'s caller passes
            positionally and that are not options (a model builder's ``info``).
    """

    def __init__(
        self,
        kind: str,
        entries: Mapping[str, T | str] | None = None,
        *,
        arg_noun: str = "option",
        skip: int = 0,
    ) -> None:
        self.kind = kind
        self.arg_noun = arg_noun
        self.skip = skip
        self._entries: dict[str, T | str] = {}
        self._loaded: dict[str, T] = {}
        for name, target in (entries or {}).items():
            self.register(name, target)

    # -- registering and listing ---------------------------------------------------------
    def register(self, name: str, target: T | str) -> None:
        """Add ``name`` → ``target`` (an object, or ``"module:attribute"`` imported on first
        use). A name is registered once: a second registration is a ``ValueError``."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if isinstance(target, str) and target.count(":") != 1:
            raise ValueError(
                f"{self.kind} {name!r}: a lazy entry is 'module:attribute', got {target!r}"
            )
        self._entries[name] = target

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"

    # -- looking up -------------------------------------------------------------------------
    def unknown(self, name: object) -> UnknownName:
        """The error for a name that is not registered (a near miss suggested)."""
        close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return UnknownName(
            f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(sorted(self._entries))}"
        )

    def __getitem__(self, name: str) -> T:
        """The object registered under ``name``, imported on first use."""
        if name not in self._entries:
            raise self.unknown(name)
        if name not in self._loaded:
            target = self._entries[name]
            if isinstance(target, str):
                module, attr = target.split(":")
                target = getattr(importlib.import_module(module), attr)
            self._loaded[name] = target
        return self._loaded[name]

    # -- creating ---------------------------------------------------------------------------
    def options(self, name: str) -> list[str]:
        """The keyword arguments :meth:`create` accepts for ``name``, in signature order."""
        return [p.name for p in keyword_parameters(self[name], self.skip)]  # type: ignore[arg-type]

    def check(self, name: str, kwargs: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming the valid arguments when ``kwargs`` has an unknown one
        or lacks a required one."""
        params = keyword_parameters(self[name], self.skip)  # type: ignore[arg-type]
        valid = [p.name for p in params]
        its = f"its {self.arg_noun}s are: {', '.join(valid) or 'none'}"
        unknown = [k for k in kwargs if k not in valid]
        if unknown:
            raise ValueError(
                f"unknown {self.arg_noun}(s) {unknown} for {self.kind} {name!r}; {its}"
            )
        missing = [p.name for p in params if p.default is p.empty and p.name not in kwargs]
        if missing:
            raise ValueError(f"{self.kind} {name!r} needs {self.arg_noun}(s) {missing}; {its}")

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call (or instantiate) the entry ``name`` with ``args`` (the ``skip`` leading ones)
        and keyword ``kwargs``, after :meth:`check`."""
        self.check(name, kwargs)
        return self[name](*args, **kwargs)  # type: ignore[operator]
