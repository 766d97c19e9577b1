"""Pass 2 of config validation: what only the data and the model's weights reveal.

The data is looked for (one sample: that also tells the input shape), the model is built on it,
and the compression method is checked against the target weights (a rank above a layer's size,
a tile that does not divide a layer, no layer selected). Each check runs when the sections it
needs passed pass 1, so a problem in one section does not hide those of the others.

Nothing is downloaded or written: a dataset with ``download: true`` that is not there yet is
taken as fine (the run will fetch it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainers.data import DataInfo, load_dataset
from trainers.distortions import make_distortion
from trainers.models import build_model
from trainers.targets import compression_targets
from trainers.validation import Problem

BUILT_IN_DATA = ("digits", "synthetic", "synthetic_text")  # generated or shipped: no files

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
    data, model_cfg, comp = (sections.get(k) for k in ("data", "model", "compression"))
    if data is None:
        return []
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
