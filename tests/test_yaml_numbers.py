"""Numbers as people write them: YAML 1.2 floats (``1e-3``, ``1E5``, ``.5``) wherever text
becomes a value (files, ``--set``, knob values read back from MLflow), and YAML that cannot
be walked (self-containing or exploding aliases, runaway nesting) refused in one line."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers import yamlio

FORMATS = ("g", "e", "E", ".3e", ".1E", "r")


@settings(max_examples=300, database=None, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(FORMATS))
def test_any_written_float_reads_back_as_that_number(x, fmt):
    text = repr(x) if fmt == "r" else format(x, fmt)
    value = yamlio.parse_scalar(text)
    assert isinstance(value, float | int) and not isinstance(value, bool), text
    assert value == float(text)
    assert yamlio.loads(f"lr: {text}") == {"lr": float(text)}


def test_leading_dot_and_capital_exponent_and_special_values():
    assert yamlio.loads("a: .5\nb: 1E5\nc: 1e-3\nd: -2.5E+2\ne: 7") == {
        "a": 0.5, "b": 1e5, "c": 1e-3, "d": -250.0, "e": 7,
    }  # fmt: skip
    assert math.isnan(yamlio.parse_scalar(".nan")) and yamlio.parse_scalar("-.inf") == -math.inf
    assert yamlio.parse_scalar("1e") == "1e" and yamlio.parse_scalar("e5") == "e5"


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: &a [*a]", "an alias (*name) refers to a value that contains it"),
        ("[" * 150 + "]" * 150, "nested more than 100 levels deep"),
        (
            "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 7)),
            "holds more than 100000 values",
        ),
    ],
)
def test_yaml_that_cannot_be_walked_is_one_problem(text, message):
    with pytest.raises(
        yamlio.YamlError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")
    ):
        yamlio.loads(text, "spec.yaml")


def test_strict_set_values_refuse_unclosed_yaml_and_keep_plain_text():
    assert yamlio.parse_scalar("prune", strict=True) == "prune"
    assert yamlio.parse_scalar("not a uri", strict=True) == "not a uri"
    with pytest.raises(yamlio.YamlError, match=r"'\[1,': not valid YAML \(line 1, column 4\)"):
        yamlio.parse_scalar("[1,", strict=True)
    assert yamlio.parse_scalar("[1,") == "[1,"  # lenient: text read back stays text


def test_knob_values_read_back_from_mlflow_are_numbers():
    from sweeps.results import knob_value

    assert [knob_value(t) for t in ("1e-05", "1E5", ".5", "37", "prune")] == [
        1e-05,
        1e5,
        0.5,
        37,
        "prune",
    ]
