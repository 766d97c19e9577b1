"""Trainer throughput vs a plain PyTorch loop, measured side by side in one run.

Same model (LeNet-300-100), same data source, same optimizer and batch size. The trainer prunes
to 90% every pNR = 100 steps (with its probe losses, e_w bookkeeping and divergence check, and
at the end the validation accuracy before and after the last distortion and the test accuracy,
on the default 10% validation hold-out); the plain loop just trains on the same batches and
evaluates the test set once at the end.

The two run in lockstep, one pNR chunk at a time (trainer: 100 steps and its distortion event;
plain loop: the same 100 steps), in alternating order. Timings a fraction of a second apart see
the same machine, so the drifts of a shared host (±10% between runs of a few seconds here)
cancel in the ratio instead of swamping it. Single chunks still carry spikes (a descheduled
thread) and whole rounds shift by a few percent (memory layout), so the steady-state ratio is
the median of all rounds' paired per-chunk ratios; the last chunk, where the trainer also
evaluates, is charged on top as a fixed cost. Chunking costs the trainer a little (it
re-enters ``fit`` once per chunk), so the ratio errs on the plain loop's side.
6000 steps are five epochs of Fashion-MNIST at batch 50. The trainer flushes subnormal floats
to zero while it trains (``run.flush_subnormals``); the plain loop does not, as written by hand
(its dense model has almost no subnormal momentum entries, so it would gain nothing).

    .venv/bin/python bench/trainer_speed.py [--steps 6000] [--rounds 5] [--threads 1] [--dataset fashion_mnist]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trainers.callbacks import Callback
from trainers.config import parse_train_config
from trainers.data import DataSplits, load_dataset
from trainers.loop import Trainer, task_loss
from trainers.models import build_model


class PauseAtEachEvent(Callback):
    """Hands control back after every distortion event (``fit`` resumes where it stopped)."""

    def on_distortion(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        trainer.request_stop()


class PlainLoop:
    """The textbook loop, advanced ``n`` steps at a time over the same batches as the trainer."""

    def __init__(self, data: DataSplits, lr: float, seed: int) -> None:
        torch.manual_seed(seed)
        self.data, self.seed, self.step = data, seed, 0
        self.model = build_model("lenet300100", data.info)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)

    def advance(self, n: int) -> None:
        done = 0
        while done < n:
            epoch, start = divmod(self.step, len(self.data.train))
            for x, y in self.data.train.epoch(epoch, self.seed, start):
                loss = task_loss(self.model(x), y)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                self.step += 1
                done += 1
                if done == n:
                    break

    @torch.no_grad()
    def evaluate(self) -> int:
        """Correct test predictions."""
        self.model.eval()
        correct = sum(
            int((self.model(x).argmax(1) == y).sum()) for x, y in self.data.test.epoch(0, 0)
        )
        self.model.train()
        return correct


def make_trainer(data: DataSplits, steps: int, lr: float, seed: int, pnr: int) -> Trainer:
    cfg = parse_train_config(
        {
            "data": {"name": "synthetic"},  # unused: the preloaded data below is passed in
            "model": {"name": "lenet300100"},
            "optim": {"optimizer": "sgd", "lr": lr, "momentum": 0.9},
            "compression": {"method": "prune", "pnr": pnr, "params": {"rate": 0.9}},
            "run": {"steps": steps, "seed": seed, "device": "cpu", "eval_every": 1e9},
        }
    )
    return Trainer(cfg, callbacks=[PauseAtEachEvent()], data=data)


def lockstep_round(
    data: DataSplits, steps: int, lr: float, seed: int, pnr: int
) -> list[tuple[float, float]]:
    """Seconds spent by (plain loop, trainer) on each pNR chunk of a ``steps``-step run."""
    trainer = make_trainer(data, steps, lr, seed, pnr)
    plain = PlainLoop(data, lr, seed)
    chunks = []
    while not trainer.done:
        took = {}
        for side in ("plain", "trainer") if len(chunks) % 2 == 0 else ("trainer", "plain"):
            t0 = time.perf_counter()
            if side == "plain":
                plain.advance(pnr)
                if plain.step == trainer.total_steps:
                    plain.evaluate()  # once, as the trainer evaluates at its last event
            else:
                trainer.fit()
            took[side] = time.perf_counter() - t0
        chunks.append((took["plain"], took["trainer"]))
    assert plain.step == trainer.step == steps
    return chunks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pnr", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: what a 1-CPU sweep trial gets; 2 threads are barely "
        "faster for this model here and several times noisier)",
    )
    ap.add_argument(
        "--dataset", default="fashion_mnist", help="fashion_mnist (Debian package) or digits"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.steps % args.pnr:
        ap.error("--steps must be a multiple of --pnr (the trainer ends on a distortion)")

    data = load_dataset(args.dataset, batch_size=args.batch_size, test_batch_size=1000)
    lockstep_round(data, 2 * args.pnr, 0.01, 0, args.pnr)  # warm-up: allocator and kernels
    rounds = [lockstep_round(data, args.steps, 0.01, r, args.pnr) for r in range(args.rounds)]

    # See the module docstring: pooled median of paired chunk ratios, plus the end cost.
    steady = [p / t for chunks in rounds for p, t in chunks[:-1]]
    plain_chunk = statistics.median(p for chunks in rounds for p, _ in chunks[:-1])
    end_cost = statistics.median(t - p for chunks in rounds for p, t in chunks[-1:])
    n = args.steps // args.pnr
    overall = 1.0 / (1.0 / statistics.median(steady) + end_cost / (n * plain_chunk))
    totals = [sum(p for p, _ in c) / sum(t for _, t in c) for c in rounds]

    print(
        f"LeNet-300-100 on {args.dataset}, batch {args.batch_size}, {args.steps} steps "
        f"({n} chunks of pNR={args.pnr}), {args.rounds} rounds, torch threads "
        f"{torch.get_num_threads()}"
    )
    print(
        f"plain loop, one chunk      : median {plain_chunk * 1e3:7.1f} ms "
        f"({args.pnr / plain_chunk:.0f} steps/s)"
    )
    print(
        f"trainer, one chunk + event : median ratio plain/trainer {statistics.median(steady):.3f} "
        f"(quartiles {statistics.quantiles(steady, n=4)[0]:.3f}..{statistics.quantiles(steady, n=4)[2]:.3f})"
    )
    print(f"trainer's end cost (validation and test evaluations): {end_cost * 1e3:.0f} ms")
    per_round = [statistics.median(p / t for p, t in c[:-1]) for c in rounds]
    print(f"median chunk ratio per round: {[round(x, 3) for x in per_round]}")
    print(f"ratio of raw totals per round (spikes included): {[round(x, 3) for x in totals]}")
    print(f"ratio trainer/plain (steps/s): {overall:.3f}   target >= 0.97")


if __name__ == "__main__":
    main()
