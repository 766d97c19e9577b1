"""Real-data check of the e_opt analysis: LeNet-300-100 on Fashion-MNIST, occasional weight
decay over a θ × pNR grid, then pruning at two rates over the same pNR, each run through
`compsweep run` (grid sampler, every cell with two seeds) and `compsweep analyze`.

    .venv/bin/python bench/eopt_fmnist.py                      # both studies, ~25 min on 2 CPUs
    .venv/bin/python bench/eopt_fmnist.py --study weight_decay  # one of them
    .venv/bin/python bench/eopt_fmnist.py --analyze-only        # re-read the last sweeps

Setup (the papers' LeNet setup): Adam at a constant lr 1e-3 (so e_w/pNR has one meaning across
the run), batch 50, 12000 steps (every pNR of the grid divides it, so all trials train equally
long and end on a distortion), all three layers as targets. Data: the first 12000 training
images split in half, 6000 to train on and 6000 to validate on (test: the 10000 test images),
so the model overfits and regularization has something to fix. Each cell runs with seeds 0 and
1 (`search.replicates: 2`) and the analysis averages them.

Selection metric: validation loss. Measured on the full training set (54000 images) and on
6000, occasional weight decay leaves validation *accuracy* flat within its noise (about
±0.3 pp) below an e_w/pNR of a few 1e-6 and only costs accuracy above, so the best accuracy
of a strength lands anywhere on the plateau and most strengths are "best" at the largest pNR
tried. Validation loss has a clear minimum at the same e_w/pNR for every θ. Accuracy and test
accuracy are printed beside it; the analysis on accuracy can be read with `compsweep analyze
--metric val_accuracy` on the same sweeps.

* weight decay: θ ∈ {3e-3, 3e-2, 3e-1} × pNR ∈ {1, 3, 10, 30, 100, 300, 1000, 3000}
  (48 trials). A one-seed pilot found the val-loss optima near e_w/pNR 2e-5, at pNR 3 and 30
  for θ = 3e-3 and 3e-2, and θ = 0.3 still improving at pNR 1000 (where one event shrinks
  every weight by 30%).
* pruning: rate ∈ {0.9, 0.97} (constant: the same rate at every event) × pNR ∈ {1, 3, 10, 30,
  100, 300, 1000} (28 trials).

Wall time on a 2-CPU host, one study after the other: 17 min (weight decay, 48 trials) and
8 min (pruning, 28 trials) when the host was otherwise quiet; 81 and 70 min with both studies
at once on a host loaded 15-30 over. Every trial runs on one thread, so its results do not
depend on the load.

For each study it prints the table of trials (strength, pNR, seed, e_w/pNR, validation loss,
validation and test accuracy), the same averaged over seeds, e_opt with its range, the
suggested against the observed best pNR per strength, and whether the check holds: at least
two strengths have an interior optimum, e_opt's range contains the e_w/pNR of every interior
best point, and every interior group's suggested pNR lies within one grid step of its
observed best. Exit status 0 when every study run holds, 1 when one does not, 2 when a sweep
or the analysis fails.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sweeps.analysis import USED, Analysis, GroupResult, analyze  # noqa: E402
from sweeps.results import load_trials, resolve_sweep  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
STEPS = 12000
REPLICATES = 2
# 6000 training and 6000 validation images (the first 12000 of the training set, split in
# half): few enough to overfit, so regularization has something to fix; a validation set large
# enough that one image is 0.017 pp.
DATA = {"name": "fashion_mnist", "batch_size": 50, "limit_train": 12000, "val_fraction": 0.5}
METRIC = "val_loss"

STUDIES = {
    "weight_decay": {
        "space": "weight_decay",
        "strength": "theta",
        "values": [3e-3, 3e-2, 3e-1],
        "pnr": [1, 3, 10, 30, 100, 300, 1000, 3000],
    },
    "prune": {
        "space": "prune",
        "strength": "rate",
        "values": [0.9, 0.97],
        "pnr": [1, 3, 10, 30, 100, 300, 1000],
    },
}


def spec_for(study: str, workdir: Path, steps: int) -> dict:
    s = STUDIES[study]
    return {
        "name": f"eopt-fmnist-{study.replace('_', '-')}",
        "train": {
            "data": DATA,
            "model": {"name": "lenet300100"},
            "optim": {"optimizer": "adam", "lr": 1e-3, "schedule": "constant"},
            "compression": {"method": s["space"], "targets": {"min_params": 0}},
            "run": {"steps": steps, "eval_every": 20.0, "device": "cpu", "seed": 0},
        },
        "space": {
            "name": s["space"],
            "overrides": {
                "pnr": {"choices": s["pnr"]},
                s["strength"]: {"choices": s["values"]},
                "lr": 1e-3,
            },
        },
        "objective": {"metrics": [METRIC]},
        "budget": {"max_concurrent": 2},
        "search": {"sampler": "grid", "replicates": REPLICATES},
        "scheduler": {"name": "none"},
        "resources": {"cpus": 1},
        "failure": {"max_failures": 1},
        "storage": {"path": str(workdir / "results")},
        "tracking": {"uri": f"sqlite:///{workdir / 'mlflow.db'}"},
        "seed": 0,
    }


def _cli(*args: str, log: Path | None = None) -> int:
    """Run `compsweep ARGS` with this interpreter, echoing its output (and keeping a copy)."""
    cmd = [sys.executable, "-m", "sweeps.cli", *args]
    print("+ compsweep " + " ".join(args), flush=True)
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:  # fmt: skip
        sink = log.open("a") if log else None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if sink:
                sink.write(line)
        if sink:
            sink.close()
    return proc.returncode


def _sweep_dirs(workdir: Path, name: str) -> list[Path]:
    return sorted(p.parent for p in (workdir / "results").glob(f"{name}-*/compsweep.json"))


def run_study(study: str, workdir: Path, steps: int, analyze_only: bool) -> Path | None:
    spec = spec_for(study, workdir, steps)
    if analyze_only:
        found = _sweep_dirs(workdir, spec["name"])
        if not found:
            print(
                f"no {spec['name']} sweep under {workdir / 'results'}: run without --analyze-only"
            )
        return found[-1] if found else None
    spec_path = workdir / f"{spec['name']}.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    before = set(_sweep_dirs(workdir, spec["name"]))
    t0 = time.perf_counter()
    rc = _cli("run", str(spec_path), log=workdir / f"{spec['name']}.log")
    minutes = (time.perf_counter() - t0) / 60
    new = [p for p in _sweep_dirs(workdir, spec["name"]) if p not in before]
    if rc != 0 or not new:
        print(f"`compsweep run` of {spec_path} failed (exit {rc}); see {workdir}")
        return None
    cells = len(STUDIES[study]["values"]) * len(STUDIES[study]["pnr"])
    print(f"{spec['name']}: {cells * REPLICATES} "
          f"trials in {minutes:.1f} min wall")  # fmt: skip
    return new[-1]


def _strength(g: GroupResult) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in g.group.strength[1:])  # fmt: skip


def print_trials(a: Analysis) -> None:
    print(f"\n{'strength':<12} {'pNR':>5} {'seed':>4} {'e_w':>10} {'e_w/pNR':>10} {'reg. err':>8} "
          f"{a.metric:>8} {'val acc':>8} {'test acc':>8}")  # fmt: skip
    for g in a.groups:
        best = {id(t) for t in g.best.trials}
        for p in sorted(g.points, key=lambda p: p.pnr):
            for t in sorted(p.trials, key=lambda t: t.seed or 0):
                err = a.reg_error.get(t.trial_id)
                mark = " *" if id(t) in best else ""
                print(f"{_strength(g):<12} {t.pnr:>5g} {t.seed!s:>4} {t.mean_e_w:>10.3e} "
                      f"{t.mean_e_w_per_pnr:>10.3e} {'-' if err is None else f'{err:+.2f}':>8} "
                      f"{t.value:>8.4f} {t.val_accuracy:>8.4f} "
                      f"{t.test_accuracy or float('nan'):>8.4f}{mark}")  # fmt: skip
    print(f"(* the best {a.metric} of its strength, seeds averaged; "
          "reg. err = log10(e_w/pNR / e_opt))")  # fmt: skip
    for t, why in a.skipped:
        print(f"skipped trial {t.trial_id}: {why}")


def print_points(a: Analysis) -> None:
    """Seeds averaged: the curve each strength's optimum is located on."""
    print(f"\n{'strength':<12} {'pNR':>5} {'seeds':>5} {'e_w/pNR':>10} {a.metric:>8} "
          f"{'val acc':>8} {'test acc':>8}")  # fmt: skip
    for g in a.groups:
        for p in sorted(g.points, key=lambda p: p.pnr):
            mark = " *" if p is g.best else ""
            print(f"{_strength(g):<12} {p.pnr:>5g} {len(p.trials):>5} {10**p.x:>10.3e} "
                  f"{p.value:>8.4f} {p.val_accuracy:>8.4f} "
                  f"{p.test_accuracy or float('nan'):>8.4f}{mark}")  # fmt: skip


def check(a: Analysis, grid: list[float]) -> list[str]:
    """Why the check fails (empty: it holds)."""
    used = a.usable_groups
    problems = []
    if len(used) < 2:
        problems.append(f"only {len(used)} strength(s) with an interior optimum; need 2")
    if a.centre is None:
        return problems + ["no e_opt"]
    for g in used:
        x = 10**g.best.x
        if not a.e_opt_low <= x <= a.e_opt_high:
            problems.append(f"{_strength(g)}: best trial's e_w/pNR {x:.3g} outside e_opt's range")
        i = grid.index(g.best.pnr)
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        s = g.suggestion.pnr if g.suggestion else None
        if s is None or not lo <= s <= hi:
            problems.append(f"{_strength(g)}: suggested pNR {s if s is None else f'{s:.3g}'} "
                            f"not within one grid step of the best {g.best.pnr:g} ({lo:g}–{hi:g})")  # fmt: skip
    return problems


def report(study: str, folder: Path) -> bool:
    """Print the tables the check needs, from the sweep's runs in MLflow; True if it holds."""
    a = analyze(load_trials(resolve_sweep(str(folder))), metric=METRIC)
    grid = [float(p) for p in STUDIES[study]["pnr"]]
    print(f"\n=== {study}: LeNet-300-100 / Fashion-MNIST, sweep {folder.name} ===")
    print_trials(a)
    print_points(a)
    if a.centre is not None:
        print(f"\ne_opt = {a.e_opt:.3e}, range {a.e_opt_low:.3e} – {a.e_opt_high:.3e} "
              f"(bootstrap {10**a.centre.boot_low:.3e} – {10**a.centre.boot_high:.3e}; group "
              f"optima and best trials {10**a.centre.spread_low:.3e} – {10**a.centre.spread_high:.3e}), from "
              f"{a.centre.groups} strength(s)")  # fmt: skip
    else:
        print("\n" + "\n".join(a.cannot_support()))
    print(f"\n{'strength':<12} {'status':<11} {'optimum e_w/pNR':>15} {'observed best pNR':>17} "
          f"{'suggested pNR':>20}  {a.metric + ', val acc (test) at best':>30}")  # fmt: skip
    for g in a.groups:
        s = g.suggestion.text() if g.suggestion else "-"
        print(f"{_strength(g):<12} {g.status:<11} {g.optimum.e_w_per_pnr:>15.3e} "
              f"{g.best_pnr_text:>17} {s:>20}  {g.best.value:.4f}, {g.best.val_accuracy:.4f} "
              f"({g.best.test_accuracy or math.nan:.4f})")  # fmt: skip
        if g.status != USED:
            print(f"{'':<12} {g.reason}")
    problems = check(a, grid)
    if problems:
        print("\nCHECK FAILS:\n  " + "\n  ".join(problems))
    else:
        print("\nCHECK HOLDS: e_opt's range contains every interior-best trial's e_w/pNR, and "
              "each interior strength's suggested pNR is within one grid step of its best")  # fmt: skip
    return not problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", choices=[*STUDIES, "all"], default="all")
    ap.add_argument("--workdir", default=str(ROOT / "bench_results" / "eopt_fmnist"),
                    help="sweeps, MLflow store and analysis output (default bench_results/eopt_fmnist)")  # fmt: skip
    ap.add_argument("--steps", type=int, default=STEPS,
                    help=f"steps per trial (default {STEPS}; ≥ 10000 for the check)")  # fmt: skip
    ap.add_argument("--analyze-only", action="store_true",
                    help="skip `compsweep run`; analyze the latest sweep of each study")  # fmt: skip
    args = ap.parse_args()
    if not FMNIST.is_file():
        print(f"Fashion-MNIST not found at {FMNIST.parent}: apt-get install dataset-fashion-mnist")
        return 2
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    studies = list(STUDIES) if args.study == "all" else [args.study]
    holds = True
    for study in studies:
        folder = run_study(study, workdir, args.steps, args.analyze_only)
        if folder is None:
            return 2
        out = workdir / "analysis" / folder.name
        if _cli("analyze", str(folder), "--output", str(out)) != 0:
            return 2
        holds = report(study, folder) and holds
        print(f"plots and tables: {out}")
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())
