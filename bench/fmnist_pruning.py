"""Occasional pruning on real data: LeNet-300-100 on Fashion-MNIST pruned to 90%.

Trains the dense baseline and pruned models with pNR in {1, 10, 100} under the same schedule
(the paper's LeNet setup: Adam, batch 50, no dropout, gradual pruning, same total steps) and
prints the test accuracies. Nothing is selected here, so all 60k training images train (no
validation hold-out). Fashion-MNIST comes from Debian's `dataset-fashion-mnist`.

    .venv/bin/python bench/fmnist_pruning.py [--steps 20000] [--pnr 1 10 100]
"""

from __future__ import annotations

import argparse
import time

from trainers.config import parse_train_config
from trainers.data import load_dataset
from trainers.loop import Trainer


def run(data, steps: int, method: str, pnr: int, rate: float, seed: int) -> dict:
    params = (
        {"rate": rate, "schedule": "gradual", "ramp_start": 0.0, "ramp_end": 0.75}
        if method == "prune"
        else {}
    )
    cfg = parse_train_config(
        {
            "data": {"name": "fashion_mnist", "batch_size": 50},
            "model": {"name": "lenet300100"},
            "optim": {"optimizer": "adam", "lr": 1e-3, "schedule": "cosine"},
            "compression": {
                "method": method,
                "pnr": pnr,
                "params": params,
                "targets": {"min_params": 0},
            },  # all three layers, as in the paper
            "run": {"steps": steps, "seed": seed, "device": "cpu", "eval_every": 1e9},
        }
    )
    t0 = time.perf_counter()
    trainer = Trainer(cfg, data=data)
    final = trainer.fit()
    final["seconds"] = time.perf_counter() - t0
    return {**trainer.last_eval, **final}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=0.9)
    ap.add_argument("--pnr", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = load_dataset("fashion_mnist", batch_size=50, test_batch_size=1000, val_fraction=0)
    print(
        f"LeNet-300-100, Fashion-MNIST 60k/10k, Adam 1e-3 cosine, batch 50, {args.steps} steps, seed {args.seed}"
    )
    print(
        f"{'run':<22} {'test acc':>9} {'pruned':>8} {'ratio':>7} {'mean e_w/pNR':>13} {'time':>7}"
    )
    rows = [("dense baseline", run(data, args.steps, "none", 1, 0.0, args.seed))]
    for pnr in args.pnr:
        rows.append(
            (
                f"prune {args.rate:.0%} pNR={pnr}",
                run(data, args.steps, "prune", pnr, args.rate, args.seed),
            )
        )
    for name, m in rows:
        pruned = 1 - m["params"] / m["params_dense"]
        print(
            f"{name:<22} {m['test_accuracy']:>9.4f} {pruned:>8.1%} {m['compression_ratio']:>7.2f} "
            f"{m['mean_e_w_per_pnr']:>13.3e} {m['seconds']:>6.0f}s"
        )


if __name__ == "__main__":
    main()
