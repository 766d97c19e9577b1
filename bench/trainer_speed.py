"""Trainer throughput vs a minimal loop doing the same pruning, at pNR 1, 10 and 100.

Same model (LeNet-300-100), same data source and batches, same optimizer. Both sides prune the
same target weights to 95% with the same gradual (cubic) schedule every pNR steps, with the
same pruning function; the minimal loop measures nothing, the trainer does everything a run
does at an event: e_w and delta_w (every event), the probe losses before and after the
distortion (every ``run.measure_every``-th event; default from ``run.measure_budget``), the
divergence check and its callbacks. So trainer ÷ minimal − 1 is the cost of the trainer's
event measurements and bookkeeping, the quantity with a budget (≤ 5% of training time at
pNR 10, ≤ 10% at pNR 1). The bench also times that event work directly, inside the trainer on
the same clock as its chunk, as a share of the trainer's training time: a ratio of two
timings of the same run, steadier on a busy host than the ratio of two runs.

The two sides run in lockstep, ``--chunk`` steps at a time, in alternating order, for every
pNR in turn: timings a fraction of a second apart see the same machine, so the drifts of a
shared host cancel in the ratio; by default the timings are the CPU time of the (single)
training thread, so time the host spends elsewhere is not charged to either side
(``--wall`` for wall-clock). The steady-state ratio is the median of all rounds' paired
per-chunk ratios (the last chunk, where the trainer also evaluates the validation and test
splits, is left out and reported as an end cost). Both sides run on one thread (``--threads``)
and flush subnormal floats (the trainer's default; the minimal loop gets the same setting, so
the comparison is of the event work alone).

    .venv/bin/python bench/trainer_speed.py [--steps 4000] [--rounds 3] [--pnr 1 10 100]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from trainers.callbacks import Callback
from trainers.config import parse_train_config
from trainers.data import DataSplits, load_dataset
from trainers.distortions import DistortionContext
from trainers.loop import Trainer, subnormals_flushed, task_loss
from trainers.models import build_model

RATE = 0.95
TARGETS = {1: 0.10, 10: 0.05}  # pNR -> the budget of the trainer's extra time


class PauseEvery(Callback):
    """Hands control back every ``chunk`` steps (``fit`` resumes where it stopped)."""

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk

    def on_distortion(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if step % self.chunk == 0:
            trainer.request_stop()


class MinimalLoop:
    """The textbook loop plus the same gradual pruning as the trainer, and nothing else."""

    def __init__(self, data: DataSplits, trainer: Trainer, lr: float, seed: int) -> None:
        torch.manual_seed(seed)
        self.data, self.seed, self.step = data, seed, 0
        self.model = build_model("lenet300100", data.info)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)
        params = dict(self.model.named_parameters())
        self.targets = {name: params[name] for name in trainer.targets}
        # Its own copy: the trainer's gets a timer (EventClock) that must not see these calls.
        self.distortion, self.pnr = copy.copy(trainer.distortion), trainer.pnr
        self.total, self.events = trainer.total_steps, trainer.num_events

    def advance(self, n: int) -> None:
        done = 0
        with subnormals_flushed(True):
            while done < n:
                epoch, start = divmod(self.step, len(self.data.train))
                for x, y in self.data.train.epoch(epoch, self.seed, start):
                    loss = task_loss(self.model(x), y)
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    self.opt.step()
                    self.step += 1
                    done += 1
                    if self.step % self.pnr == 0:
                        self.prune()
                    if done == n:
                        break

    @torch.no_grad()
    def prune(self) -> None:
        ctx = DistortionContext(self.step, self.total, self.step // self.pnr - 1, self.events)
        after = self.distortion.apply({n: p.detach() for n, p in self.targets.items()}, ctx)
        for name, p in self.targets.items():
            p.copy_(after[name])

    @torch.no_grad()
    def evaluate(self) -> int:
        """Correct test predictions."""
        self.model.eval()
        correct = sum(
            int((self.model(x).argmax(1) == y).sum()) for x, y in self.data.test.epoch(0, 0)
        )
        self.model.train()
        return correct


def make_trainer(
    data: DataSplits, steps: int, lr: float, seed: int, pnr: int, chunk: int, threads: int
) -> Trainer:
    cfg = parse_train_config(
        {
            "data": {"name": "synthetic", "batch_size": data.train.batch_size},  # data passed in
            "model": {"name": "lenet300100"},
            "optim": {"optimizer": "sgd", "lr": lr, "momentum": 0.9},
            "compression": {
                "method": "prune",
                "pnr": pnr,
                "params": {"rate": RATE, "schedule": "gradual"},
            },
            "run": {"steps": steps, "seed": seed, "device": "cpu", "eval_every": 1e9,
                    "threads": threads},
        }
    )  # fmt: skip
    return Trainer(cfg, callbacks=[PauseEvery(chunk)], data=data)


def clock() -> float:
    """CPU seconds of this thread: with one torch thread all the work of both sides runs on
    it, and a busy host's descheduling, which wall time would charge to whichever side it
    hits, does not count. ``--wall`` times wall-clock seconds instead."""
    return time.perf_counter() if WALL else time.thread_time()


WALL = False


class EventClock:
    """Seconds the trainer spends in its distortion events beyond the distortion itself: the
    event work the minimal loop does not do (e_w, delta_w, probe losses, the sync and the
    divergence check, callbacks), timed inside the trainer on the same clock as its chunk."""

    def __init__(self, trainer: Trainer) -> None:
        self.extra = 0.0
        event, apply = trainer._distortion_event, trainer.distortion.apply

        def timed_event() -> None:
            t0 = clock()
            event()
            self.extra += clock() - t0

        def timed_apply(weights, ctx):
            t0 = clock()
            out = apply(weights, ctx)
            self.extra -= clock() - t0
            return out

        trainer._distortion_event = timed_event
        trainer.distortion.apply = timed_apply


def lockstep_round(
    data: DataSplits, steps: int, seed: int, pnr: int, chunk: int, threads: int
) -> tuple[list[tuple[float, float, float]], Trainer]:
    """Seconds spent by (minimal loop, trainer, the trainer's event work beyond the
    distortion) on each chunk of a ``steps``-step run."""
    trainer = make_trainer(data, steps, 0.01, seed, pnr, chunk, threads)
    minimal = MinimalLoop(data, trainer, 0.01, seed)
    events = EventClock(trainer)
    chunks = []
    while not trainer.done:
        took = {}
        events.extra = 0.0
        for side in ("minimal", "trainer") if len(chunks) % 2 == 0 else ("trainer", "minimal"):
            t0 = clock()
            if side == "minimal":
                minimal.advance(chunk)
                if minimal.step == trainer.total_steps:
                    minimal.evaluate()  # once, as the trainer evaluates at its last event
            else:
                trainer.fit()
            took[side] = clock() - t0
        chunks.append((took["minimal"], took["trainer"], events.extra))
    assert minimal.step == trainer.step == steps
    # Same pruning, same batches: the weights agree (the trainer's measurements change nothing).
    for name, p in minimal.targets.items():
        assert torch.allclose(p, trainer.targets[name], atol=1e-5), name
    return chunks, trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pnr", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--chunk", type=int, default=200, help="steps per timed chunk")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of both sides")
    ap.add_argument(
        "--dataset", default="fashion_mnist", help="fashion_mnist (Debian package) or digits"
    )
    ap.add_argument("--wall", action="store_true", help="time wall-clock instead of CPU seconds")
    args = ap.parse_args()
    global WALL
    WALL = args.wall
    if args.threads != 1 and not args.wall:
        ap.error("CPU time of the calling thread only covers one torch thread: add --wall")
    torch.set_num_threads(args.threads)
    for p in args.pnr:
        if args.chunk % p or args.steps % args.chunk:
            ap.error("--chunk must be a multiple of every --pnr, and --steps of --chunk")

    data = load_dataset(args.dataset, batch_size=args.batch_size, test_batch_size=1000)
    for p in args.pnr:  # warm-up: allocator and kernels
        lockstep_round(data, 2 * args.chunk, 0, p, args.chunk, args.threads)
    results: dict[int, list[list[tuple[float, float]]]] = {p: [] for p in args.pnr}
    every: dict[int, int] = {}
    for r in range(args.rounds):
        for p in args.pnr:  # interleaved: every pNR sees the same spells of a busy machine
            chunks, trainer = lockstep_round(data, args.steps, r, p, args.chunk, args.threads)
            results[p].append(chunks)
            every[p] = trainer.measure_every

    print(
        f"LeNet-300-100 on {args.dataset}, batch {args.batch_size}, {args.steps} steps, gradual "
        f"pruning to {RATE:.0%}, {args.rounds} rounds, chunks of {args.chunk} steps, torch "
        f"threads {torch.get_num_threads()}, {'wall-clock' if WALL else 'CPU'} time"
    )
    print(
        "pNR  every  minimal chunk  trainer/minimal: median (quartiles)   per round"
        "              event work / training time: median, per round      target"
    )
    for p in args.pnr:
        rounds = results[p]
        ratios = [t / m for chunks in rounds for m, t, _ in chunks[:-1]]
        q = statistics.quantiles(ratios, n=4)
        per_round = [round(statistics.median(t / m for m, t, _ in c[:-1]), 3) for c in rounds]
        # The last chunk also holds the end-of-run evaluations: not event work.
        share = [statistics.median(e / t for _, t, e in c[:-1]) for c in rounds]
        pooled = statistics.median(e / t for chunks in rounds for _, t, e in chunks[:-1])
        minimal_chunk = statistics.median(m for chunks in rounds for m, _, _ in chunks[:-1])
        target = f"<= {TARGETS[p]:.0%}" if p in TARGETS else ""
        print(
            f"{p:>3}  {every[p]:>5}  {minimal_chunk * 1e3:>10.0f} ms  "
            f"{statistics.median(ratios):.3f} ({q[0]:.3f}..{q[2]:.3f})      {per_round!s:<24} "
            f"{pooled:6.2%}  {[f'{x:.2%}' for x in share]!s:<32} {target}"
        )


if __name__ == "__main__":
    main()
