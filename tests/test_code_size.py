"""Modules and classes stay small enough to read in one sitting (docs/design.md §10): no module
over 500 lines and no class over 300 in trainers/, search_spaces/ and sweeps/. A change that
crosses a limit splits along a real seam instead."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("trainers", "search_spaces", "sweeps")
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300


def _sizes() -> tuple[dict[str, int], dict[str, int]]:
    modules, classes = {}, {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            name = str(path.relative_to(ROOT))
            modules[name] = len(text.splitlines())
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ClassDef):
                    classes[f"{name}:{node.name}"] = node.end_lineno - node.lineno + 1
    return modules, classes


def test_no_module_or_class_is_over_its_limit():
    modules, classes = _sizes()
    assert len(modules) > 50 and classes  # the walk found the code
    long_modules = {m: n for m, n in modules.items() if n > MAX_MODULE_LINES}
    long_classes = {c: n for c, n in classes.items() if n > MAX_CLASS_LINES}
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_classes, f"classes over {MAX_CLASS_LINES} lines: {long_classes}"
