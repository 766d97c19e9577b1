"""Fuzzed specs, configs and --set lines through the command line's validation, in-process.

A seeded generator mutates every shipped spec and training config: keys deleted and inserted,
values replaced by wrong types, NaN, infinities, huge numbers, unicode and nested garbage,
sections turned into lists, raw bytes that are no YAML or no UTF-8, and bad ``--set`` lines.
Each case runs ``compsweep run FILE --check`` or ``compsweep train FILE --check``; every one must
end in exit code 0 or 2 without a traceback, and nothing may be written to disk or reach Ray,
MLflow or a training loop.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from sweeps.cli import main
from trainers import yamlio

ROOT = Path(__file__).parent.parent
SPECS = sorted((ROOT / "sweeps" / "specs").glob("*.yaml"))
CONFIGS = sorted((ROOT / "trainers" / "configs").glob("*.yaml"))
CASES = 2400
SEED = 20260

NASTY: list[Any] = [
    "five", "", " ", "ünïcödé ✓ 💥", "\x00", "x" * 300, "1e-3", "epoch", "none", "../..",
    float("nan"), float("inf"), -float("inf"), 10**30, -(10**30), 1e308, -1e-308, 2**64,
    -1, 0, 1, 0.5, 1.5, True, False, None, [], {}, [None], [1, [2, {"a": None}]],
    {"low": "a", "high": "b"}, {"low": 5, "high": 1}, {"low": 0, "log": True}, {"choices": []},
    {"choices": [[1], {"x": 1}]}, {"choices": [1e-3, float("nan")]}, {"step": -1},
    {"": {"": {"": []}}}, {1: 2, None: 3},
]  # fmt: skip
KEYS = ["bogus", "ñame", "💥", "", " name", "__class__", "modes", "nmae", "lr", "root", "1", "."]
SET_LINES = [
    "budget.num_trials=3", "budget.num_trials.x=3", "budget.num_trials=[1,", "nope.x=1",
    "name.first=1", "optim.lr=1e-3", "optim.lr=.nan", "run.steps.deep.er=1", "=1", "noequals",
    "ü=1", "space.overrides.pnr={low: 1, high: 1e1}", "train.optim.lr=-.inf", "train=null",
    "space=5", "a..b=1", "run.epochs=1E1", "tracking.uri=ftp://x", "tracking.uri=not a uri",
    "storage.path=/dev/null", "data.name=digitz", "seed=-1", "train.data.root=/nonexistent",
    'optim.lr="0.1', "objective.metrics=[test_accuracy]", "search.sampler=grid",
]  # fmt: skip
RAW = [
    b"", b"\xff\xfe\x00n\x00a", b"name: caf\xe9\n", b"[", b"{a: 1", b"\t- x", b"- 1\n- 2\n",
    b"a: &a [*a]\n", b"!!python/object/apply:os.system ['echo pwned']\n", b"---\n---\n",
    b"a: 1\na: 2\n", b"[" * 200 + b"]" * 200, b"? [1, 2]\n: x\n", b"42\n", b"~\n",
]  # fmt: skip


def _positions(node: Any, out: list) -> list:
    """Every (container, key) in a document, to pick a place to mutate."""
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for k, v in list(items):
        out.append((node, k))
        _positions(v, out)
    return out


def _garbage(rng: random.Random, depth: int = 0) -> Any:
    if depth > 2 or rng.random() < 0.5:
        return copy.deepcopy(rng.choice(NASTY))
    if rng.random() < 0.5:
        return [_garbage(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(KEYS): _garbage(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _typo(text: str, rng: random.Random) -> str:
    if len(text) < 2:
        return text + "x"
    i = rng.randrange(len(text) - 1)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def mutate(doc: Any, rng: random.Random) -> Any:
    """``doc`` with one to three random changes."""
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        places = _positions(doc, [])
        op = rng.random()
        if not places or op < 0.03:
            return _garbage(rng)  # the whole document replaced
        parent, key = rng.choice(places)
        value = parent[key]
        if op < 0.25 and isinstance(parent, dict):
            del parent[key]
        elif op < 0.4:
            target = value if isinstance(value, dict) else parent
            if isinstance(target, dict):
                target[rng.choice(KEYS)] = _garbage(rng)
        elif op < 0.55 and isinstance(value, str):
            parent[key] = _typo(value, rng)
        elif op < 0.65 and isinstance(value, dict):
            parent[key] = list(value.values()) if rng.random() < 0.5 else rng.choice(NASTY)
        else:
            parent[key] = _garbage(rng)
    return doc


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


@pytest.fixture
def sealed(tmp_path, monkeypatch):
    """A working folder, and tripwires on everything past validation."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def tripwire(what: str):
        def fail(*args, **kwargs):
            raise AssertionError(f"validation reached {what}")

        return fail

    monkeypatch.setattr("sweeps.runner.run_sweep", tripwire("run_sweep"))
    monkeypatch.setattr("trainers.loop.Trainer.fit", tripwire("Trainer.fit"))
    monkeypatch.setattr("sweeps.final.train_final", tripwire("train_final"))
    monkeypatch.setattr("ray.init", tripwire("ray.init"))
    # Reachability of a tracking server is a network call: record it instead of making it.
    asked: list[str] = []
    monkeypatch.setattr(
        "sweeps.tracking.check_tracking_uri", lambda uri, timeout=10: asked.append(uri)
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU time below is then this test's time
    yield work, asked
    torch.set_num_threads(threads)


@pytest.mark.slow  # 2400 cases: a fifth of the unit tests' time; `make test` runs it
def test_fuzzed_specs_configs_and_set_lines_never_crash(sealed):
    work, asked = sealed
    bases = [("run", yamlio.load_file(p)) for p in SPECS] + [
        ("train", yamlio.load_file(p)) for p in CONFIGS
    ]
    rng = random.Random(SEED)
    outcomes = {0: 0, 2: 0}
    inputs = work.parent / "inputs"
    inputs.mkdir()
    before = _tree(work)
    cpu, wall = time.process_time(), time.perf_counter()
    for case in range(CASES):
        command, base = bases[case % len(bases)]
        path = inputs / f"case{case % 7}.yaml"
        if rng.random() < 0.08:
            path.write_bytes(rng.choice(RAW))
        else:
            path.write_text(
                yamlio.dumps(mutate(base, rng)) if rng.random() < 0.9 else yamlio.dumps(base)
            )
        argv = [command, str(path), "--check"]
        for line in rng.sample(SET_LINES, k=rng.choice([0, 0, 1, 2])):
            argv += ["--set", line]
        if command == "train" and rng.random() < 0.05:
            argv += rng.choice([["--tracking-uri", "ftp://x"], ["--checkpoint", "/missing/x.pt"],
                                ["--steps", "3"], ["--register", "m"]])  # fmt: skip
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse's usage errors
                code = e.code
        text = err.getvalue()
        context = f"case {case}: compsweep {' '.join(argv)}\n{path.read_bytes()[:2000]!r}\n{text}"
        assert code in (0, 2), context
        assert "Traceback" not in text, context
        if code == 2 and text.startswith("error: "):
            assert all(line.startswith(("error: ", "  - ")) for line in text.splitlines()), context
        outcomes[code] += 1
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{CASES} fuzzed inputs in {wall:.1f}s ({cpu:.1f}s CPU): {outcomes}")
    assert _tree(work) == before  # nothing written: no store, no results folder, no checkpoint
    assert not any(Path(p).exists() for p in ("mlflow.db", "mlruns", "compsweep_results"))
    assert outcomes[0] > 20 and outcomes[2] > CASES / 2  # both valid and invalid inputs ran
    assert all(isinstance(u, str) for u in asked)
    assert cpu < 60, f"{CASES} cases took {cpu:.0f}s of CPU"
    assert math.isfinite(wall) and os.getcwd() == str(work)
