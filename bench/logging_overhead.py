"""Trainer throughput with MLflow logging on vs off, measured side by side in one run.

The same Trainer config (small CNN on synthetic 8x8 data, magnitude pruning, evaluation every
epoch) runs once without callbacks ("off") and once with a callback that forwards every
``on_distortion`` / ``on_evaluation`` metric to a :class:`sweeps.tracking.TrialTracker`, as
``sweeps/trial.py``'s TuneBridge does (minus Ray: no Tune report, no checkpoint). Like a sweep
without a scheduler, the tracker sends in the background and is not flushed at evaluations;
``--flush-each-evaluation`` measures what a sweep with ASHA does (a blocking flush before each
report, so a stopped trial has sent everything). Two tracking back ends: a real ``mlflow server`` on 127.0.0.1
(``tests/mlflow_server.py``) and the embedded SQLite store (``sqlite:///<tmp>/mlflow.db``).

The "on" region runs from creating the tracker (its run is created in the background while
training starts) through ``fit()``, logging the final metrics, to ``tracker.close()``
returning: the close/flush of the last points IS included (its median is also printed
separately). Params and tags are logged as a trial does; artifacts are not. One-off costs of a
process (importing mlflow, opening the SQLite store, creating the experiment) are paid in a
warm-up and excluded; they are printed for information.

Configs: pNR=10 (logging every 10 steps) and pNR=1 (every step: the worst case). Rounds
rotate the order of off / server / sqlite so machine noise hits all alike; medians compared.

Then a lockstep comparison (:meth:`Bench.lockstep`), steadier than whole runs: two identical
trainers, one logging and one not, advance in alternating chunks of a few hundred ms, and the
paired per-chunk ratios are compared (wall, and CPU time of the training and sender threads).

Printed per back end: steps/s and the wall-time ratio on/off (the target, >= 0.97); the time
the training thread spent blocked in the flush at each evaluation and in close(); the ratio of
this process's CPU time off/on (all threads, so the tracker's sender is counted); and the CPU
time of the tracker's sender thread alone (``TrialTracker.sender_cpu_s``), which a shared
host's noise disturbs least: wall times of identical runs differ by ±20% here. With the
server, its own CPU time is shown too (here it shares the machine; a cluster server would not).

    .venv/bin/python bench/logging_overhead.py [--rounds 5] [--steps 1920] [--steps-pnr1 960] [--flush-each-evaluation]
    .venv/bin/python bench/logging_overhead.py --rounds 0 --lockstep-rounds 3   # lockstep only
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from sweeps.tracking import TrialTracker, ensure_experiment, flatten_params
from trainers.callbacks import Callback
from trainers.config import parse_train_config
from trainers.data import load_dataset
from trainers.loop import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mlflow_server import MlflowServer  # noqa: E402

MODES = ("off", "server", "sqlite")
LABELS = {"off": "off", "server": "on, mlflow server", "sqlite": "on, sqlite embedded"}


class TrackerBridge(Callback):
    """TuneBridge minus Ray: every point to the tracker (optionally a flush at evaluations)."""

    def __init__(self, tracker: TrialTracker, flush_each_evaluation: bool) -> None:
        self.tracker = tracker
        self.flush_each_evaluation = flush_each_evaluation
        self.flush_wait = 0.0  # seconds the training thread spent blocked in flush()

    def on_distortion(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(metrics, step=step)

    def on_evaluation(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(metrics, step=step)
        if self.flush_each_evaluation:
            t0 = time.perf_counter()
            self.tracker.flush(timeout=10.0)
            self.flush_wait += time.perf_counter() - t0


class PauseEvery(Callback):
    """Hands control back every ``events`` distortion events (``fit`` resumes where it stopped)."""

    def __init__(self, events: int) -> None:
        self.events, self.seen = events, 0

    def on_distortion(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.seen += 1
        if self.seen % self.events == 0:
            trainer.request_stop()


def make_config(args: argparse.Namespace, pnr: int, steps: int, seed: int):
    return parse_train_config(
        {
            "data": {"name": "synthetic"},  # unused: the preloaded data is passed in
            "model": {"name": args.model},
            "optim": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9},
            "compression": {
                "method": "prune",
                "pnr": pnr,
                "params": {"rate": 0.8, "schedule": "gradual"},
                "targets": {"min_params": 10},
            },
            "run": {"steps": steps, "seed": seed, "device": "cpu", "eval_every": args.eval_every},
        }
    )


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path, uris: dict[str, str]) -> None:
        self.args = args
        self.root = root
        self.uris = uris
        self.data = load_dataset(
            "synthetic",
            batch_size=args.batch_size,
            test_batch_size=256,
            n_train=args.n_train,
            n_test=256,
        )
        self.experiments: dict[str, str] = {}
        self.sweep_id = f"bench-logging-{time.strftime('%Y%m%d-%H%M%S')}"
        self.runs: dict[str, list[str]] = {"server": [], "sqlite": []}
        self.close_times: dict[tuple[str, int], list[float]] = {}
        self.problems: list[str] = []
        self.server_cpus: dict[int, list[float]] = {}
        self.flush_waits: dict[tuple[str, int], list[float]] = {}
        self.sender_cpus: dict[tuple[str, int], list[float]] = {}
        self.server_pid: int | None = None

    def experiment(self, mode: str) -> str:
        if mode not in self.experiments:
            self.experiments[mode] = ensure_experiment(self.uris[mode], "bench-logging-overhead")
        return self.experiments[mode]

    def run(self, mode: str, pnr: int, steps: int, tag: str) -> tuple[float, float]:
        """(wall s, process CPU s) of one run; for "on" modes including the tracker's close().

        Process CPU counts every thread of this process (the tracker's sender too), and is
        barely affected by other processes competing for the cores."""
        cfg = make_config(self.args, pnr, steps, seed=0)
        trainer = Trainer(cfg, data=self.data)
        if mode == "off":
            c0, t0 = time.process_time(), time.perf_counter()
            trainer.fit()
            return time.perf_counter() - t0, time.process_time() - c0
        exp = self.experiment(mode)  # created once per back end, outside the timed region
        s0 = self.server_cpu() if mode == "server" else 0.0
        c0, t0 = time.process_time(), time.perf_counter()
        tracker = TrialTracker(
            tracking_uri=self.uris[mode],
            experiment_id=exp,
            sweep_id=self.sweep_id,
            trial_id=f"{mode}-pnr{pnr}-{tag}",
            spool_dir=self.root / "spool" / f"{mode}-pnr{pnr}-{tag}",
        )
        tracker.set_tags({"compsweep.method": "prune"})
        tracker.log_params(flatten_params(cfg.to_dict()))
        bridge = TrackerBridge(tracker, self.args.flush_each_evaluation)
        trainer.callbacks.append(bridge)
        final = trainer.fit()
        tracker.log_metrics(final, step=trainer.step)
        t_close = time.perf_counter()
        ok = tracker.close("FINISHED", timeout=600)
        t1, c1 = time.perf_counter(), time.process_time()
        self.close_times.setdefault((mode, pnr), []).append(t1 - t_close)
        self.flush_waits.setdefault((mode, pnr), []).append(bridge.flush_wait)
        self.sender_cpus.setdefault((mode, pnr), []).append(tracker.sender_cpu_s or 0.0)
        if mode == "server":
            self.server_cpus.setdefault(pnr, []).append(self.server_cpu() - s0)
        if not ok or tracker.errors:
            self.problems.append(f"{mode} pNR={pnr} {tag}: close ok={ok}, errors={tracker.errors}")
        if tracker.run_id:
            self.runs[mode].append(tracker.run_id)
        return t1 - t0, c1 - c0

    def lockstep(self, mode: str, pnr: int, steps: int, tag: str) -> list[tuple[float, float]]:
        """Paired per-chunk ratios off/on, (wall, CPU), of two identical trainers alternating.

        Chunks of ``--chunk-events`` distortion events. After each "on" chunk the tracker is
        flushed, untimed, so its sending never overlaps an "off" chunk; the CPU time its sender
        thread used during that flush is added to the "on" chunk, as if the sender had taken
        it from the trainer (on a busy machine it does). The server's own work and the wait
        for its answer are not counted: in a sweep nobody waits for them.

        wall: the chunk's wall time (+ the sender's CPU in the flush). CPU: the training
        thread's CPU time + the sender thread's over the chunk and its flush: the whole cost
        when every core is busy (a sweep at full concurrency), and blind to a shared host's
        other tenants, which only stretch wall time. The first pair (the run's creation,
        first kernels) is left out."""
        cfg = make_config(self.args, pnr, steps, seed=0)
        k = max(1, self.args.chunk_events if pnr > 1 else self.args.chunk_events * 4)
        off = Trainer(cfg, callbacks=[PauseEvery(k)], data=self.data)
        tracker = TrialTracker(
            tracking_uri=self.uris[mode],
            experiment_id=self.experiment(mode),
            sweep_id=self.sweep_id,
            trial_id=f"lockstep-{mode}-pnr{pnr}-{tag}",
            spool_dir=self.root / "spool" / f"lockstep-{mode}-pnr{pnr}-{tag}",
        )
        tracker.log_params(flatten_params(cfg.to_dict()))
        on = Trainer(cfg, callbacks=[TrackerBridge(tracker, False), PauseEvery(k)], data=self.data)
        sender_clock = time.pthread_getcpuclockid(tracker.sender_thread.ident)
        ratios = []
        while not off.done:
            wall, cpu = {}, {}
            for side in ("off", "on") if len(ratios) % 2 == 0 else ("on", "off"):
                s0, t0, c0 = (
                    time.clock_gettime(sender_clock),
                    time.perf_counter(),
                    time.thread_time(),
                )
                (off if side == "off" else on).fit()
                wall[side], cpu[side] = time.perf_counter() - t0, time.thread_time() - c0
                if side == "on":
                    s1 = time.clock_gettime(sender_clock)
                    tracker.flush(timeout=60)
                    s2 = time.clock_gettime(sender_clock)
                    wall[side] += s2 - s1
                    cpu[side] += s2 - s0
            ratios.append((wall["off"] / wall["on"], cpu["off"] / cpu["on"]))
        assert on.step == off.step == steps
        tracker.log_metrics(on.final_metrics(), step=on.step)
        if not tracker.close("FINISHED", timeout=600) or tracker.errors:
            self.problems.append(f"lockstep {mode} pNR={pnr} {tag}: errors={tracker.errors}")
        return ratios[1:]

    def server_cpu(self) -> float:
        """CPU seconds used so far by the mlflow server process and its uvicorn child."""
        try:
            import psutil  # a dev dependency
        except ImportError:
            return float("nan")
        if self.server_pid is None:
            return float("nan")
        try:
            proc = psutil.Process(self.server_pid)
            total = 0.0
            for p in [proc, *proc.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
            return total
        except psutil.Error:
            return float("nan")

    def check_runs(self) -> list[str]:
        """After timing: every run holds one e_w point per distortion event."""
        from mlflow import MlflowClient

        out = []
        for mode, run_ids in self.runs.items():
            client = MlflowClient(self.uris[mode])
            for run_id in run_ids:
                run = client.get_run(run_id)
                events = int(run.data.metrics.get("num_distortions", -1))
                got = len(client.get_metric_history(run_id, "e_w"))
                if got != events or run.info.status != "FINISHED":
                    out.append(
                        f"{mode} run {run_id}: {got} e_w points, {events} events, {run.info.status}"
                    )
        return out


def fmt(times: list[float]) -> str:
    return f"median {statistics.median(times):.2f}s; {[round(t, 2) for t in times]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--flush-each-evaluation",
        action="store_true",
        help="flush the tracker at every evaluation, as a sweep with a scheduler (ASHA) does",
    )
    ap.add_argument("--steps", type=int, default=1920, help="steps of the pNR=10 runs")
    ap.add_argument("--steps-pnr1", type=int, default=960, help="steps of the pNR=1 runs")
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=4096)
    ap.add_argument("--eval-every", type=float, default=1.0, help="epochs between evaluations")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a trial: its cpus)")
    ap.add_argument(
        "--lockstep-rounds", type=int, default=3, help="rounds of the lockstep comparison"
    )
    ap.add_argument(
        "--chunk-events",
        type=int,
        default=10,
        help="distortion events per lockstep chunk at pNR 10 (x4 at pNR 1)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    torch.set_num_threads(args.threads)
    configs = [(10, args.steps), (1, args.steps_pnr1)]

    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="compsweep-bench-logging-"))
    server = MlflowServer(root / "server")
    t = time.perf_counter()
    server.start()
    t_server = time.perf_counter() - t
    try:
        uris = {"server": server.uri, "sqlite": f"sqlite:///{root / 'mlflow.db'}"}
        bench = Bench(args, root, uris)
        bench.server_pid = server._proc.pid if server._proc is not None else None
        # Warm-up (excluded): kernels, `import mlflow`, SQLite store and experiments.
        warm: dict[str, float] = {}
        for mode in MODES:
            t = time.perf_counter()
            bench.run(mode, 10, 40, "warmup")
            warm[mode] = time.perf_counter() - t
        bench.runs = {"server": [], "sqlite": []}
        bench.close_times.clear()
        bench.server_cpus.clear()
        bench.flush_waits.clear()
        bench.sender_cpus.clear()

        wall: dict[tuple[str, int], list[float]] = {}
        cpu: dict[tuple[str, int], list[float]] = {}
        for r in range(args.rounds):
            order = MODES[r % 3 :] + MODES[: r % 3]
            for pnr, steps in configs:
                for mode in order:
                    w, c = bench.run(mode, pnr, steps, f"r{r}")
                    wall.setdefault((mode, pnr), []).append(w)
                    cpu.setdefault((mode, pnr), []).append(c)
        lock: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for r in range(args.lockstep_rounds):
            for pnr, steps in configs:
                for mode in ("server", "sqlite") if r % 2 == 0 else ("sqlite", "server"):
                    lock.setdefault((mode, pnr), []).extend(
                        bench.lockstep(mode, pnr, steps, f"r{r}")
                    )
        load_after = os.getloadavg()
        problems = bench.problems + bench.check_runs()
    finally:
        server.stop()

    steps_per_epoch = len(bench.data.train)
    print(
        f"{args.model} on synthetic 8x8 ({args.n_train} train, batch {args.batch_size}, "
        f"{steps_per_epoch} steps/epoch), prune (gradual to 0.8), eval every "
        f"{args.eval_every:g} epoch(s) {'with' if args.flush_each_evaluation else 'without'} a "
        f"flush, torch threads {torch.get_num_threads()}, {args.rounds} rounds"
    )
    print(
        "'on' = tracker created + fit + final metrics + tracker.close() (close INCLUDED); "
        "'off' = fit alone"
    )
    print(
        f"one-off, excluded: mlflow server start {t_server:.1f}s; warm-up runs (40 steps, first "
        f"mlflow import / store / experiment): off {warm['off']:.2f}s, server {warm['server']:.2f}s, "
        f"sqlite {warm['sqlite']:.2f}s"
    )
    for pnr, steps in configs if args.rounds else ():  # --rounds 0: lockstep only
        off, off_cpu = wall[("off", pnr)], cpu[("off", pnr)]
        m_off, c_off = statistics.median(off), statistics.median(off_cpu)
        print(f"\npNR={pnr}: {steps} steps, {steps // pnr} distortion events x 6 metrics")
        print(
            f"  {LABELS['off']:<20}: {steps / m_off:7.1f} steps/s  ({fmt(off)}); "
            f"process CPU median {c_off:.2f}s"
        )
        for mode in ("server", "sqlite"):
            on, on_cpu = wall[(mode, pnr)], cpu[(mode, pnr)]
            m_on, c_on = statistics.median(on), statistics.median(on_cpu)
            paired = statistics.median(o / n for o, n in zip(off, on, strict=True))
            close = statistics.median(bench.close_times[(mode, pnr)])
            waits = statistics.median(bench.flush_waits[(mode, pnr)])
            extra = ""
            if mode == "server":
                extra = (
                    f"; server process CPU median {statistics.median(bench.server_cpus[pnr]):.2f}s"
                )
            print(
                f"  {LABELS[mode]:<20}: {steps / m_on:7.1f} steps/s  ({fmt(on)}); "
                f"process CPU median {c_on:.2f}s{extra}"
            )
            print(
                f"    training thread blocked: in the flush at each evaluation {waits:.3f}s, "
                f"in close() {close:.3f}s (medians per run)"
            )
            print(
                f"    ratio on/off, steps/s (wall): {m_off / m_on:.3f}  (paired per round: "
                f"{paired:.3f})   target >= 0.97"
            )
            print(f"    ratio on/off, steps per CPU-second of this process: {c_off / c_on:.3f}")
            sender = statistics.median(bench.sender_cpus[(mode, pnr)])
            print(
                f"    tracker's sender thread: {sender:.3f} CPU-s per run = "
                f"{100 * sender / c_off:.1f}% of the off run's CPU -> ratio "
                f"{c_off / (c_off + sender):.3f} (the steadiest of these)"
            )
    if lock:
        print(
            f"\nlockstep: two identical trainers, off and on, alternating chunks of "
            f"{args.chunk_events} events at pNR 10 and {4 * args.chunk_events} at pNR 1; each "
            f"on chunk charged with its sender thread's CPU time in an untimed flush after it; "
            f"{args.lockstep_rounds} rounds"
        )
        for (mode, pnr), ratios in sorted(lock.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
            text = []
            for i, what in enumerate(("wall", "CPU")):
                values = [r[i] for r in ratios]
                q = statistics.quantiles(values, n=4)
                text.append(f"{what} {statistics.median(values):.3f} ({q[0]:.3f}..{q[2]:.3f})")
            print(
                f"  pNR={pnr:<3} {LABELS[mode]:<20}: median paired chunk ratio off/on, "
                f"{', '.join(text)}, {len(ratios)} chunks   target >= 0.97"
            )
    print(
        f"\nload average: before {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {' '.join(f'{x:.2f}' for x in load_after)} ({os.cpu_count()} CPUs)"
    )
    if problems:
        print("PROBLEMS:\n  " + "\n  ".join(problems))
    else:
        print("all runs FINISHED with one e_w point per distortion event (checked after timing)")
    if args.keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
