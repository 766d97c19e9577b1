"""The README's tables of config fields, spec fields, search spaces and distortions match the
models and registries they describe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sweeps.schema import readme_tables
from trainers.config import _signature_model
from trainers.distortions import REGISTRY, distortion_class

README = (Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize("name", ["config", "spec", "spaces"])
def test_generated_table_is_in_the_readme(name):
    table = readme_tables()[name]
    assert table in README, (
        f"the README's {name} table is out of date; `python -m sweeps.schema` prints it:\n{table}"
    )


def test_distortion_table_names_every_method_and_its_knobs():
    table = README[README.index("| name | h(w) | knobs |") :].split("\n\n")[0]
    rows = {
        re.match(r"\| `(\w+)`", line).group(1): line.rstrip(" |").rsplit(" | ", 1)[-1]
        for line in table.splitlines()[2:]
    }
    periodic = {name for name in REGISTRY if name != "funnel"}  # funnel: its own paragraph
    assert periodic <= set(rows), periodic - set(rows)
    for name in periodic:
        _, knobs = _signature_model(distortion_class(name), 0)
        for knob in knobs:
            assert f"`{knob}`" in rows[name], (name, knob)
    assert "`funnel` is not a periodic distortion" in README
