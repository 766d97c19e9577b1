"""Trainer throughput vs a plain PyTorch loop, measured side by side in one run.

Same model (LeNet-300-100), same data source, same optimizer and batch size. The trainer prunes
to 90% every pNR = 100 steps (with its probe losses, e_w bookkeeping and the final pre/post
evaluation); the plain loop just trains and evaluates once. Rounds alternate between the two so
machine noise hits both alike; the medians are compared.

    .venv/bin/python bench/trainer_speed.py [--steps 2000] [--rounds 3] [--dataset fashion_mnist]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trainers.config import parse_train_config
from trainers.data import load_dataset
from trainers.loop import Trainer, task_loss
from trainers.models import build_model


def plain_loop(data, steps: int, lr: float, seed: int) -> float:
    torch.manual_seed(seed)
    model = build_model("lenet300100", data.info)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    t0 = time.perf_counter()
    done, epoch = 0, 0
    while done < steps:
        for x, y in data.train.epoch(epoch, seed):
            loss = task_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
        epoch += 1
    model.eval()
    with torch.no_grad():
        # The plain loop evaluates once too, as the trainer does at its last event.
        sum(int((model(x).argmax(1) == y).sum()) for x, y in data.test.epoch(0, seed))
    return time.perf_counter() - t0


def trainer_run(data, steps: int, lr: float, seed: int, pnr: int) -> float:
    cfg = parse_train_config(
        {
            "data": {"name": "synthetic"},  # unused: the preloaded data below is passed in
            "model": {"name": "lenet300100"},
            "optim": {"optimizer": "sgd", "lr": lr, "momentum": 0.9},
            "compression": {"method": "prune", "pnr": pnr, "params": {"rate": 0.9}},
            "run": {"steps": steps, "seed": seed, "device": "cpu", "eval_every": 1e9},
        }
    )
    trainer = Trainer(cfg, data=data)
    t0 = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pnr", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument(
        "--dataset", default="fashion_mnist", help="fashion_mnist (Debian package) or digits"
    )
    args = ap.parse_args()

    data = load_dataset(args.dataset, batch_size=args.batch_size, test_batch_size=1000)
    plain_loop(data, 50, 0.01, 0)  # warm-up: allocator and kernels
    plain, trainer = [], []
    for r in range(args.rounds):
        plain.append(plain_loop(data, args.steps, 0.01, r))
        trainer.append(trainer_run(data, args.steps, 0.01, r, args.pnr))
    p, t = statistics.median(plain), statistics.median(trainer)
    print(
        f"LeNet-300-100 on {args.dataset}, batch {args.batch_size}, {args.steps} steps, "
        f"{args.rounds} rounds, torch threads {torch.get_num_threads()}"
    )
    print(
        f"plain PyTorch loop     : {args.steps / p:8.1f} steps/s  (median {p:.2f}s; {[round(x, 2) for x in plain]})"
    )
    print(
        f"trainer, prune pNR={args.pnr:<4}: {args.steps / t:8.1f} steps/s  (median {t:.2f}s; {[round(x, 2) for x in trainer]})"
    )
    print(f"ratio trainer/plain (steps/s): {p / t:.3f}   target >= 0.97")


if __name__ == "__main__":
    main()
