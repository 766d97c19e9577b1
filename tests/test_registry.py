"""The one registry shape behind methods, models, datasets and search spaces."""

from __future__ import annotations

import sys
from functools import partial

import pytest

from search_spaces import SPACES
from trainers.data import DATASETS
from trainers.distortions import REGISTRY
from trainers.models import MODELS
from trainers.registry import Registry, UnknownName


def scale(x: float, factor: float, offset: float = 0.0) -> float:
    return x * factor + offset


class Box:
    def __init__(self, size: int, *, label: str = "") -> None:
        self.size, self.label = size, label


def test_entries_are_objects_or_lazy_paths_imported_on_first_use():
    reg = Registry("thing", {"scale": scale})
    reg.register("dedent", "textwrap:dedent")
    assert reg.names() == ["scale", "dedent"] and list(reg) == reg.names() and len(reg) == 2
    assert "dedent" in reg and "nope" not in reg
    assert reg["scale"] is scale
    import textwrap

    assert reg["dedent"] is textwrap.dedent


def test_listing_imports_nothing():
    reg = Registry("thing", {"never": "no_such_module_anywhere:thing"})
    assert reg.names() == ["never"] and "no_such_module_anywhere" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        reg["never"]


def test_bad_registrations_are_refused():
    reg = Registry("thing", {"a": scale})
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        reg.register("a", Box)
    with pytest.raises(ValueError, match="'module:attribute'"):
        reg.register("b", "textwrap.dedent")


def test_unknown_name_lists_the_valid_ones_and_suggests_a_close_one():
    reg = Registry("widget", {"sprocket": scale, "gear": Box})
    with pytest.raises(ValueError) as err:
        reg["sprockt"]
    assert (
        str(err.value)
        == "unknown widget 'sprockt' (did you mean 'sprocket'?); valid: gear, sprocket"
    )
    assert isinstance(err.value, KeyError) and isinstance(err.value, UnknownName)
    assert reg.get("sprockt") is None  # a Mapping: .get and `in` work as usual
    with pytest.raises(ValueError, match="unknown widget 'x'; valid: gear, sprocket"):
        reg.create("x")


def test_create_checks_keywords_against_the_signature():
    reg = Registry("thing", {"scale": scale, "box": Box}, arg_noun="knob", skip=0)
    assert reg.options("scale") == ["x", "factor", "offset"]
    assert reg.options("box") == ["size", "label"]  # self left out, keyword-only kept
    assert reg.create("scale", x=2.0, factor=3.0) == 6.0
    with pytest.raises(
        ValueError,
        match=r"unknown knob\(s\) \['fator'\] for thing 'scale'; its knobs are: x, factor, offset",
    ):
        reg.create("scale", x=1.0, fator=2.0)
    with pytest.raises(
        ValueError, match=r"thing 'box' needs knob\(s\) \['size'\]; its knobs are: size, label"
    ):
        reg.create("box", label="a")


def test_skipped_leading_parameters_and_partial_keywords_are_not_options():
    reg = Registry("thing", {"double": partial(scale, factor=2.0)}, skip=1)
    assert reg.options("double") == ["offset"]  # x is passed positionally, factor is fixed
    assert reg.create("double", 5.0, offset=1.0) == 11.0
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['factor'\]"):
        reg.create("double", 5.0, factor=3.0)


@pytest.mark.parametrize(
    ("registry", "kind"),
    [(REGISTRY, "distortion"), (MODELS, "model"), (DATASETS, "dataset"), (SPACES, "search space")],
)
def test_the_four_registries_answer_alike(registry, kind):
    assert isinstance(registry, Registry) and registry.kind == kind
    with pytest.raises(ValueError, match=f"unknown {kind} 'nope'; valid: ") as err:
        registry["nope"]
    assert all(name in str(err.value) for name in registry.names())
