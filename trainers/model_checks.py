"""Pass 2 of config validation: what only the data and the model's weights reveal.

The data is looked for (one sample: that also tells the input shape), the model is built on it,
and the compression method is checked against the target weights (a rank above a layer's size,
a tile that does not divide a layer, no layer selected). Each check runs when the sections it
needs passed pass 1, so a problem in one section does not hide those of the others.

Nothing is downloaded or written: a dataset with ``download: true`` that is not there yet is
taken as fine (the run will fetch it).

The run's length is checked too, for the datasets whose training-set size is known without
loading them (:func:`train_samples`): a batch larger than the samples left to train on, and a
pNR longer than the whole run.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

from trainers.batches import batch_size_problem
from trainers.data import DataInfo, load_dataset
from trainers.datasets import LOADERS
from trainers.distortions import make_distortion
from trainers.methods import MethodRecipe
from trainers.models import build_model
from trainers.run_plan import event_interval, pnr_problem, requested_steps
from trainers.targets import compression_targets
from trainers.validation import Problem

BUILT_IN_DATA = ("digits", "synthetic", "synthetic_text")  # generated or shipped: no files

# Training samples of a dataset's full training split, known without loading it (digits: 1437 of
# its 1797 images; the others are the standard files). Not listed: size unknown, not checked.
_TRAIN_SAMPLES = {"digits": 1437, "fashion_mnist": 60_000, "mnist": 60_000}
_SIZED_BY_OPTION = ("synthetic", "synthetic_text")  # generated: options.n_train samples

# Input shapes of datasets found once in this process: reading a dataset only to learn its
# shape costs up to a second (Fashion-MNIST's archives), and validation asks again and again.
_INFO: dict[str, DataInfo] = {}


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def data_info(data: Any, look_for_files: bool = True) -> tuple[DataInfo | None, list[Problem]]:
    """The input description of dataset section ``data`` (one sample loaded), or the problem.

    ``(None, [])`` when it cannot be told here: files not looked for, or to be downloaded.
    """
    if not look_for_files and data.name not in BUILT_IN_DATA:
        return None, []
    key = repr((data.name, data.root, data.options))
    if key in _INFO:
        return _INFO[key], []
    try:
        info = load_dataset(
            data.name,
            batch_size=1,
            test_batch_size=1,
            root=data.root,
            download=False,
            limit_train=1,
            limit_test=1,
            val_fraction=0,  # one sample: none to hold out (the split is checked as a field)
            **data.options,
        ).info
    except FileNotFoundError as e:
        if data.download:
            return None, []
        return None, [Problem("data.root", _one_line(e))]
    except ValueError as e:
        return None, [Problem("data", _one_line(e))]
    except Exception as e:  # e.g. a corrupt data file: say so rather than crash
        return None, [
            Problem("data", f"cannot read {data.name!r}: {type(e).__name__}: {_one_line(e)}")
        ]
    _INFO[key] = info
    return info, []


def model_problems(
    sections: Mapping[str, Any], look_for_files: bool = True, cache: dict[str, Any] | None = None
) -> list[Problem]:
    """Problems of the sound ``sections`` of a training config (``data``, ``model``,
    ``compression`` and ``run`` models) on the real data and model; paths as in the config.

    ``cache`` (a dict kept by the caller) reuses built models across calls with the same data
    and model sections.
    """
    cache = {} if cache is None else cache
    if sections.get("data") is None:
        return []
    return run_length_problems(sections) + _data_and_model_problems(sections, look_for_files, cache)


def _data_and_model_problems(
    sections: Mapping[str, Any], look_for_files: bool, cache: dict[str, Any]
) -> list[Problem]:
    data: Any = sections["data"]
    model_cfg, comp = sections.get("model"), sections.get("compression")
    info, problems = data_info(data, look_for_files)
    if info is None or model_cfg is None:
        return problems
    key = repr((data.name, data.root, data.options, model_cfg))
    if key not in cache:
        try:
            cache[key] = build_model(model_cfg.name, info, **model_cfg.options)
        except ValueError as e:
            cache[key] = Problem("model", _one_line(e))
        except Exception as e:
            cache[key] = Problem("model", f"cannot be built: {type(e).__name__}: {_one_line(e)}")
    model = cache[key]
    if isinstance(model, Problem):
        return [model]
    if comp is None or comp.method == "none":
        return []
    try:
        distortion = make_distortion(comp.method, **comp.params)
        found = compression_targets(model, comp.targets, distortion)[1]
    except Exception as e:
        return [Problem("compression", f"cannot be applied: {type(e).__name__}: {_one_line(e)}")]
    # compression_targets words each problem as "field: what is wrong".
    return [
        Problem(*msg.split(": ", 1)) if ": " in msg else Problem("compression", msg)
        for msg in found
    ]


def train_samples(data: Any) -> int | None:
    """The samples data section ``data`` trains on (after ``limit_train`` and the validation
    hold-out, as :func:`trainers.batches.holdout` carves it), or None when the dataset's size
    is unknown without loading it."""
    n: Any = _TRAIN_SAMPLES.get(data.name)
    if data.name in _SIZED_BY_OPTION:
        default = inspect.signature(LOADERS[data.name]).parameters["n_train"].default
        n = data.options.get("n_train", default)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return None
    if data.limit_train is not None:
        n = min(n, data.limit_train)
    if data.val_fraction > 0:
        n -= max(1, math.floor(data.val_fraction * n + 0.5))
    return n


def run_length_problems(sections: Mapping[str, Any]) -> list[Problem]:
    """A training batch larger than the training set, or a pNR longer than the run: found here
    when the dataset's size is known (:func:`train_samples`), else by the trainer when built."""
    data: Any = sections.get("data")
    comp, run = sections.get("compression"), sections.get("run")
    n = train_samples(data) if data is not None else None
    if n is None:
        return []
    if n < 1:
        return [
            Problem(
                "data.val_fraction",
                f"{data.val_fraction} of the training samples leaves none to train on; lower "
                "data.val_fraction or raise data.limit_train",
            )
        ]
    steps_per_epoch = n // data.batch_size
    if steps_per_epoch < 1:
        return [Problem(*batch_size_problem(data.batch_size, n).split(": ", 1))]
    if run is None or comp is None or comp.method == "none":
        return []
    try:
        distorting = not isinstance(make_distortion(comp.method, **comp.params), MethodRecipe)
    except Exception:  # bad knobs: reported with the compression section
        return []
    requested = requested_steps(run, steps_per_epoch)
    pnr = event_interval(comp, steps_per_epoch)
    if distorting and requested // pnr == 0:
        return [Problem(*pnr_problem(pnr, requested).split(": ", 1))]
    return []
