"""Occasional low-rank regularization on real data: LeNet-5 on Fashion-MNIST.

Tucker-2 (R_c = 0.5, on conv2) and tiled SVD (tile k, rank r per tile, on conv2 and fc1),
trained with pNR in {1, 50, 200}, against the plain route at the same number of steps: train
dense for E − F epochs, decompose once (apply h(w) and export the factorized structure), then
fine-tune the exported (decomposed) model for F epochs, which keeps it low-rank by
construction. Also the dense baseline (E epochs). Everything uses Adam 1e-3 with a cosine
schedule, batch 50; the plain route's fine-tuning restarts Adam and its cosine over F epochs.

Each pNR run ends on a distortion: its accuracy is measured right after the last h(w) (the
compressed model). All accuracies are on the test set; nothing is selected here, so all 60k
training images train (no validation hold-out; the trainers get the test set as their
validation source too, only so that they report the accuracy right before the last h(w)). The run is exported (``trainers.export.export``) and the exported model's
own test accuracy is printed next to it as a check (they should agree up to float rounding).
Ratios come from ``compression_report`` on the exported model: params (whole model), MACs
(one sample), and the target layers' own storage ratio. Fashion-MNIST comes from Debian's
``dataset-fashion-mnist``.

Epochs may be fractional (one epoch is 1200 steps of batch 50). The default E = 0.5 costs
about 6.5 CPU-minutes on one thread (16 minutes wall-clock when the 2 cores were shared with a
load of ~8); tiled SVD at pNR = 1 is 40% of it (a decomposition and two probe forwards per step).

    .venv/bin/python bench/fmnist_lowrank.py [--epochs 0.5] [--finetune-epochs E/3]
        [--pnr 1 50 200] [--rc 0.5] [--tile 10] [--rank 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from typing import Any

import torch
from torch import nn

from trainers.config import TargetConfig, TrainConfig, parse_train_config
from trainers.data import DataSplits, load_dataset
from trainers.distortions import Distortion, DistortionContext, make_distortion
from trainers.export import compression_report, export
from trainers.loop import Trainer, task_loss
from trainers.targets import compression_targets

LR = 1e-3


def make_cfg(
    method: str, params: dict, include: list[str], pnr: int, steps: int, seed: int
) -> TrainConfig:
    return parse_train_config(
        {
            "data": {"name": "fashion_mnist", "batch_size": 50},
            "model": {"name": "lenet5"},
            "optim": {"optimizer": "adam", "lr": LR, "schedule": "cosine"},
            "compression": {
                "method": method,
                "pnr": pnr,
                "params": params,
                "targets": {"include": include},
            },
            "run": {"steps": steps, "seed": seed, "device": "cpu", "eval_every": 1e9},
        }
    )


@torch.no_grad()
def evaluate(model: nn.Module, data: DataSplits, seed: int) -> float:
    """Test accuracy in eval mode (as ``Trainer.evaluate``)."""
    was_training = model.training
    model.eval()
    correct = count = 0
    for x, y in data.test.epoch(0, seed):
        correct += int((model(x).argmax(dim=1) == y).sum())
        count += y.numel()
    model.train(was_training)
    return correct / max(count, 1)


def target_ratio(distortion: Distortion, weights: dict[str, torch.Tensor]) -> float:
    """Storage ratio of the target layers alone (dense / compressed)."""
    dense = sum(w.numel() for w in weights.values())
    return dense / sum(distortion.stored_params(n, w) for n, w in weights.items())


def row(method: str, route: str, pnr: str, steps: int, acc: float, **extra: Any) -> dict:
    return {"method": method, "route": route, "pnr": pnr, "steps": steps, "acc": acc, **extra}


def report_cols(original: nn.Module, exported: nn.Module, input_shape) -> dict:
    rep = compression_report(original, exported, input_shape)
    return {"ratio": rep["compression_ratio"], "macs_ratio": rep["macs_ratio"]}


def train_pnr(
    data: DataSplits, method: str, params: dict, include: list[str], pnr: int, steps: int, seed: int
) -> dict:
    t0 = time.perf_counter()
    tr = Trainer(make_cfg(method, params, include, pnr, steps, seed), data=data)
    tr.fit()
    seconds = time.perf_counter() - t0
    assert tr.distortion is not None
    exported = export(tr.model, tr.distortion, list(tr.targets))
    return row(
        method,
        "pNR",
        str(pnr),
        tr.step,
        tr.last_eval["test_accuracy"],
        export_acc=evaluate(exported, data, seed),
        pre_acc=tr.last_eval.get("val_acc_pre", math.nan),  # on the test set: see above
        target_ratio=target_ratio(tr.distortion, tr._target_weights()),
        seconds=seconds,
        **report_cols(tr.model, exported, data.info.input_shape),
    )


def fine_tune(model: nn.Module, data: DataSplits, start: int, steps: int, seed: int) -> None:
    """Adam 1e-3 with cosine over ``steps`` steps, on the batches of training steps
    ``start .. start + steps − 1`` (the same data order the single-run routes see there)."""
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / steps))
    )
    spe = len(data.train)
    model.train()
    step = start
    while step < start + steps:
        epoch, first = divmod(step, spe)
        for x, y in data.train.epoch(epoch, seed, first):
            loss = task_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step >= start + steps:
                break


def plain_route(
    data: DataSplits,
    dense: Trainer,
    dense_seconds: float,
    method: str,
    params: dict,
    include: list[str],
    ft_steps: int,
    seed: int,
) -> list[dict]:
    """Decompose the trained dense model once, export it, fine-tune the exported model."""
    t0 = time.perf_counter()
    distortion = make_distortion(method, **params)
    model = copy.deepcopy(dense.model)
    targets, problems = compression_targets(model, TargetConfig(include=include), distortion)
    assert not problems, problems
    weights = {n: p.detach() for n, p in targets.items()}
    ctx = DistortionContext(dense.step, dense.step, 0, 1, seed)
    with torch.no_grad():
        for name, w in distortion.apply(weights, ctx).items():
            targets[name].copy_(w)
    exported = export(model, distortion, list(targets))
    cols = report_cols(model, exported, data.info.input_shape)
    t_ratio = target_ratio(distortion, {n: p.detach() for n, p in targets.items()})
    acc_decomposed = evaluate(model, data, seed)
    acc_exported = evaluate(exported, data, seed)
    t_decomp = time.perf_counter() - t0
    rows = [
        row(
            method,
            "plain, no FT",
            "-",
            dense.step,
            acc_decomposed,
            export_acc=acc_exported,
            pre_acc=dense.last_eval["test_accuracy"],
            target_ratio=t_ratio,
            seconds=dense_seconds + t_decomp,
            **cols,
        )
    ]
    t1 = time.perf_counter()
    fine_tune(exported, data, dense.step, ft_steps, seed)
    acc = evaluate(exported, data, seed)
    rows.append(
        row(
            method,
            "plain + FT",
            "-",
            dense.step + ft_steps,
            acc,
            export_acc=acc,
            pre_acc=dense.last_eval["test_accuracy"],
            target_ratio=t_ratio,
            seconds=dense_seconds + t_decomp + time.perf_counter() - t1,
            **cols,
        )
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=0.5, help="E, total epochs of every route")
    ap.add_argument(
        "--finetune-epochs",
        type=float,
        default=None,
        help="F, plain-route fine-tuning epochs (default E/3)",
    )
    ap.add_argument("--pnr", type=int, nargs="+", default=[1, 50, 200])
    ap.add_argument("--rc", type=float, default=0.5, help="Tucker-2 rank fraction R_c")
    ap.add_argument("--tile", type=int, default=10, help="tiled SVD tile size k")
    ap.add_argument("--rank", type=int, default=2, help="tiled SVD rank per tile")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 avoids oversubscription when other work runs)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_dataset("fashion_mnist", batch_size=50, test_batch_size=1000, val_fraction=0)
    data = DataSplits(loaded.train, loaded.test, loaded.test, loaded.info)  # see the docstring
    spe = len(data.train)
    steps = round(args.epochs * spe)
    ft_epochs = args.epochs / 3 if args.finetune_epochs is None else args.finetune_epochs
    ft_steps = round(ft_epochs * spe)
    if not 0 < ft_steps < steps:
        ap.error(f"need 0 < F < E; got {ft_steps} fine-tuning steps of {steps}")
    methods = [
        ("tucker2", {"rc": args.rc}, ["conv2.weight"]),
        ("tiled_svd", {"tile": args.tile, "rank": args.rank}, ["conv2.weight", "fc1.weight"]),
    ]
    print(
        f"LeNet-5, Fashion-MNIST 60k/10k, Adam {LR:g} cosine, batch 50, E = {args.epochs:g} "
        f"epochs ({steps} steps), plain route F = {ft_epochs:g} epochs ({ft_steps} steps), "
        f"seed {args.seed}, {args.threads} thread(s)"
    )
    print(
        f"tucker2 rc={args.rc:g} on conv2; tiled_svd tile={args.tile} rank={args.rank} on "
        "conv2 and fc1",
        flush=True,
    )

    rows: list[dict] = []
    t0 = time.perf_counter()
    dense = Trainer(make_cfg("none", {}, [], 1, steps, args.seed), data=data)
    dense.fit()
    rows.append(
        row(
            "dense",
            "baseline",
            "-",
            dense.step,
            dense.last_eval["test_accuracy"],
            ratio=1.0,
            macs_ratio=1.0,
            target_ratio=1.0,
            seconds=time.perf_counter() - t0,
        )
    )
    # The plain route's dense phase (cosine over E − F epochs), shared by both methods.
    t0 = time.perf_counter()
    dense_phase = Trainer(make_cfg("none", {}, [], 1, steps - ft_steps, args.seed), data=data)
    dense_phase.fit()
    dense_seconds = time.perf_counter() - t0
    for method, params, include in methods:
        for pnr in args.pnr:
            rows.append(train_pnr(data, method, params, include, pnr, steps, args.seed))
            print(f"  done {method} pNR={pnr} ({rows[-1]['seconds']:.0f}s)", flush=True)
        rows += plain_route(
            data, dense_phase, dense_seconds, method, params, include, ft_steps, args.seed
        )
        print(f"  done {method} plain route", flush=True)

    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    print()
    print(
        f"{'method':<10} {'route':<13} {'pNR':>4} {'steps':>6} {'test acc':>9} {'export acc':>11} "
        f"{'acc pre-h':>10} {'params ratio':>13} {'target ratio':>13} {'MACs ratio':>11} "
        f"{'time':>6}"
    )
    for r in rows:
        print(
            f"{r['method']:<10} {r['route']:<13} {r['pnr']:>4} {r['steps']:>6} "
            f"{r['acc']:>9.4f} {fmt(r.get('export_acc'), '.4f'):>11} "
            f"{fmt(r.get('pre_acc'), '.4f'):>10} {r['ratio']:>13.3f} {r['target_ratio']:>13.3f} "
            f"{r['macs_ratio']:>11.3f} {r['seconds']:>5.0f}s"
        )
    print(
        "\ntest acc: pNR rows, right after the last distortion (compressed weights); plain rows, "
        "the exported (decomposed) model.\nexport acc: the exported model evaluated on its own "
        "(must match test acc). acc pre-h: pNR rows, right before the last distortion; plain "
        "rows, the dense model before decomposition.\nparams / MACs ratio: whole model, dense / "
        "exported (compression_report); target ratio: the compressed layers alone.\nplain-route "
        "times include the shared dense phase."
    )


if __name__ == "__main__":
    main()
