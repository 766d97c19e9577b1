"""The one YAML reader of the project: numbers as people write them, errors as one line.

PyYAML follows YAML 1.1, where ``1e-3``, ``1E5`` and ``1e5`` are *strings* (a float needs a dot
and a signed exponent there). Every spec, config, ``--set`` value and knob read back from
MLflow goes through :func:`loads` / :func:`load_file`, which also read those as floats
(YAML 1.2's rule), so ``theta: {choices: [1e-3]}`` is a number everywhere.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["YamlError", "dumps", "load_file", "loads", "parse_scalar"]


class YamlError(ValueError):
    """A file or text that cannot be read as YAML; the message says where and why, and
    ``problems`` lists each problem (without the source) when there are several."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class _Loader(yaml.SafeLoader):
    """SafeLoader plus YAML 1.2 floats without a dot or without an exponent sign, noting every
    key a mapping repeats (PyYAML keeps the last one silently, so a range written and then a
    fixed value under one knob would search nothing)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then a key of base: overriding it is what merge is for
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                earlier = seen.get(key)
            except TypeError:  # an unhashable key: refused by SafeLoader itself
                continue
            if earlier is None:
                seen[key] = line
            else:
                self.duplicates.append(
                    (line, f"duplicate key {key!r} at line {line} (earlier at line {earlier})")
                )
        return super().construct_mapping(node, deep)


_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+.0123456789"))


MAX_VALUES = 100_000  # far above any spec or config; bounds what aliases can expand to
MAX_DEPTH = 100  # nesting; deeper would exhaust the recursion of whatever walks the data


def loads(text: str, source: str = "YAML text") -> Any:
    """Parse ``text``; raise :class:`YamlError` naming ``source``, line and column."""
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise YamlError(f"{source}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise YamlError(f"{source}: nested too deeply to read") from None
    finally:
        loader.dispose()
    if loader.duplicates:
        found = [why for _, why in sorted(loader.duplicates)]
        raise YamlError(f"{source}: {'; '.join(found)}", found)
    _check_expansion(data, source)
    return data


def _check_expansion(data: Any, source: str) -> None:
    """Anchors and aliases (``&a``, ``*a``) may make a list contain itself, or a few lines
    expand to billions of values; everything that walks the data (validation, copies) would
    then never end. Refuse both."""
    count, path, stack = 0, set(), [(data, 0, False)]
    while stack:
        node, depth, leaving = stack.pop()
        if leaving:
            path.discard(id(node))
            continue
        count += 1
        if count > MAX_VALUES:
            raise YamlError(f"{source}: holds more than {MAX_VALUES} values (aliases expanding?)")
        if depth > MAX_DEPTH:
            raise YamlError(f"{source}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, dict | list):
            if id(node) in path:
                raise YamlError(f"{source}: an alias (*name) refers to a value that contains it")
            path.add(id(node))
            stack.append((node, depth, True))
            children = node.values() if isinstance(node, dict) else node
            stack.extend((c, depth + 1, False) for c in children)


def load_file(path: str | Path) -> Any:
    """Read and parse a YAML file: a missing file, a folder, unreadable or non-UTF-8 bytes and
    invalid YAML each raise :class:`YamlError` with a one-line message."""
    p = Path(path)
    if not p.exists():
        raise YamlError(f"{p}: no such file")
    if p.is_dir():
        raise YamlError(f"{p}: is a folder, not a YAML file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise YamlError(f"{p}: cannot be read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YamlError(
            f"{p}: not UTF-8 text (byte {e.start} is 0x{raw[e.start]:02x}); save it as UTF-8"
        ) from None
    return loads(text, str(p))


def parse_scalar(text: str, strict: bool = False) -> Any:
    """A value written on a command line or stored as text: ``0.1`` -> 0.1, ``1e-05`` -> 1e-05,
    ``37`` -> 37, ``true`` -> True, ``[1, 2]`` -> [1, 2]; text that is not YAML stays text.

    With ``strict``, text that opens a YAML list, mapping or quoted string but does not close
    it (``[1,``) raises :class:`YamlError` instead: it was meant as YAML, and is not."""
    try:
        return loads(text)
    except YamlError as e:
        if strict and text.lstrip()[:1] in ("[", "{", '"', "'"):
            raise YamlError(f"{text!r}: {str(e).removeprefix('YAML text: ')}") from None
        return text


def dumps(data: Any) -> str:
    """YAML text of ``data`` in the order given (what :func:`loads` reads back as it was)."""
    return yaml.safe_dump(data, sort_keys=False)
