"""Funnel-regularized Tucker-2 and nuclear-norm proximal training on real data: LeNet-5 on
Fashion-MNIST (Debian's ``dataset-fashion-mnist``).

**Funnel vs L1 vs L2** (the funnel paper's Table 7 shape). A dense LeNet-5 is pretrained
(Adam 1e-3, ``--pretrain-epochs``) and saved; each penalty then runs the ``funnel`` method from
that checkpoint on conv2 (the conv that dominates the MACs; conv1 is the skipped first conv):
decompose at full rank (Tucker-2, gated), train with ``L + λ·Σ f(g)`` for ``--epochs`` (SGD),
prune the factors whose gate is below ``--threshold`` at the same threshold for all three
penalties, keep-or-revert, fine-tune ``--finetune-epochs``. Printed per penalty: the pruning
ratio (fraction of gates below the threshold), conv2's kept ranks (R_s, R_t) and whether it stays
decomposed, params and MACs of the whole model after compression, and the accuracy right after
pruning (no fine-tuning, as Table 7) and after fine-tuning. The funnel uses a linear C-schedule
C_0 → C_T over the regularized phase.

**Nuclear norm** at τ ∈ {0, small, large} (``--taus``): LeNet-5 from scratch with SGD; every
``--nuclear-pnr`` steps the singular values of the lowered conv2 / fc1 / fc2 matrices are
soft-thresholded by lr·τ; the last event keeps ``--energy`` % of each layer's singular-value
energy and the model is exported as two-layer factorizations. Printed per τ: the rank of each
layer (and its full rank), the accuracy (after the last proximal event, i.e. of the compressed
model), the exported model's own accuracy as a check, and params / MACs after export.

    .venv/bin/python bench/fmnist_funnel_nuclear.py [--epochs 0.25] [--finetune-epochs 0.1]
        [--pretrain-epochs 0.5] [--nuclear-epochs 0.4] [--threshold 0.02] [--lam 0.03]
        [--taus 0 2 5] [--threads 1]

Epochs may be fractional (one epoch is 1200 steps of batch 50); the defaults keep the script
near 10 minutes on 2 busy CPU cores. Accuracies are on the test set; nothing is selected here,
so all 60k training images train (no validation hold-out).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from trainers.callbacks import Callback
from trainers.config import parse_train_config
from trainers.data import DataSplits, load_dataset
from trainers.distortions.lowrank import lowered_shape
from trainers.distortions.nuclear import numerical_rank
from trainers.export import compression_report, export
from trainers.loop import Trainer


def config(compression: dict, optim: dict, epochs: float, seed: int) -> dict:
    return {
        "data": {"name": "fashion_mnist", "batch_size": 50},
        "model": {"name": "lenet5"},
        "optim": optim,
        "compression": compression,
        "run": {"epochs": epochs, "seed": seed, "device": "cpu", "eval_every": 1e9},
    }


class Phases(Callback):
    """Keeps every phase report of a funnel run."""

    def __init__(self) -> None:
        self.phases: dict[str, tuple[dict, dict]] = {}

    def on_phase(self, trainer, phase, metrics, details) -> None:
        self.phases[phase] = (metrics, details)


def pretrain(data: DataSplits, epochs: float, seed: int, path: Path) -> dict:
    cfg = parse_train_config(
        config({"method": "none"}, {"optimizer": "adam", "lr": 1e-3}, epochs, seed)
    )
    tr = Trainer(cfg, data=data)
    final = tr.fit()
    torch.save(tr.state_dict(), path)
    return {**tr.last_eval, **final}


def run_funnel(data: DataSplits, args: argparse.Namespace, penalty: str, ckpt: Path) -> dict:
    params = {
        "penalty": penalty,
        "lam": args.lam,
        "c_schedule": "linear",
        "c0": args.c0,
        "c_final": args.c_final,
        "threshold": args.threshold,
        "finetune_epochs": args.finetune_epochs,
        "pretrained": str(ckpt),
    }
    compression = {"method": "funnel", "params": params, "targets": {"include": ["conv2.weight"]}}
    optim = {"optimizer": "sgd", "lr": args.lr, "momentum": 0.9}
    cfg = parse_train_config(config(compression, optim, args.epochs, args.seed))
    rec = Phases()
    t0 = time.perf_counter()
    tr = Trainer(cfg, [rec], data=data)
    final = tr.fit()
    layer = rec.phases["compress"][1]["layers"]["conv2"]
    hist = rec.phases["train"][1]["histograms"]["conv2"]
    return {
        "penalty": penalty,
        "pruning_ratio": final["compress_pruning_ratio"],
        "ranks": layer["ranks_kept"],
        "ranks_full": layer["ranks_full"],
        "decomposed": layer["decomposed"],
        "params": final["params"],
        "macs": final["macs"],
        "acc_decomposed": final["decompose_test_accuracy"],
        "acc_trained": final["train_test_accuracy"],
        "acc_pruned": final["compress_test_accuracy"],
        "acc_finetuned": tr.last_eval["test_accuracy"],
        "hist": hist,
        "edges": rec.phases["train"][1]["edges"],
        "seconds": time.perf_counter() - t0,
    }


def run_nuclear(data: DataSplits, args: argparse.Namespace, tau: float) -> dict:
    compression = {
        "method": "nuclear",
        "pnr": args.nuclear_pnr,
        "params": {"tau": tau, "energy": args.energy},
    }
    optim = {"optimizer": "sgd", "lr": args.nuclear_lr, "momentum": 0.9}
    cfg = parse_train_config(config(compression, optim, args.nuclear_epochs, args.seed))
    t0 = time.perf_counter()
    tr = Trainer(cfg, data=data)
    final = tr.fit()
    seconds = time.perf_counter() - t0
    assert tr.distortion is not None
    exported = export(tr.model, tr.distortion, list(tr.targets))
    was = tr.model
    tr.model = exported
    export_acc = tr.evaluate()[0]
    tr.model = was
    ranks = {}
    for name, p in tr.targets.items():
        m, n = lowered_shape(p)
        ranks[name.removesuffix(".weight")] = (numerical_rank(p), min(m, n))
    rep = compression_report(tr.model, exported, data.info.input_shape)
    return {
        "tau": tau,
        "ranks": ranks,
        "acc": tr.last_eval["test_accuracy"],
        "export_acc": export_acc,
        "params": rep["params_after"],
        "macs": rep["macs_after"],
        "mean_e_w": final["mean_e_w"],
        "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=float, default=0.25, help="funnel: regularized epochs")
    ap.add_argument("--finetune-epochs", type=float, default=0.1)
    ap.add_argument("--pretrain-epochs", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=0.01, help="funnel: SGD learning rate")
    ap.add_argument("--lam", type=float, default=0.03, help="funnel: λ (all three penalties)")
    ap.add_argument("--c0", type=float, default=10.0)
    ap.add_argument("--c-final", type=float, default=0.2)
    ap.add_argument("--threshold", type=float, default=0.02)
    ap.add_argument("--nuclear-epochs", type=float, default=0.4)
    ap.add_argument("--nuclear-pnr", type=int, default=40)
    ap.add_argument("--nuclear-lr", type=float, default=0.02)
    ap.add_argument("--taus", type=float, nargs="+", default=[0.0, 2.0, 5.0])
    ap.add_argument("--energy", type=float, default=100.0)
    ap.add_argument("--penalties", nargs="+", default=["funnel", "l1", "l2"])
    ap.add_argument("--skip-nuclear", action="store_true")
    ap.add_argument("--skip-funnel", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    data = load_dataset(
        "fashion_mnist", batch_size=50, test_batch_size=1000, device="cpu", val_fraction=0
    )
    print(
        f"Fashion-MNIST: {len(data.train)} steps/epoch of batch 50, "
        f"{data.test.num_samples} test images"  # type: ignore[attr-defined]
    )

    if not args.skip_funnel:
        with tempfile.TemporaryDirectory() as d:
            ckpt = Path(d) / "lenet5.pt"
            t0 = time.perf_counter()
            base = pretrain(data, args.pretrain_epochs, args.seed, ckpt)
            print(
                f"\ndense LeNet-5 pretrained {args.pretrain_epochs} epochs: accuracy "
                f"{base['test_accuracy']:.4f}, params {base['params']:.0f}, MACs {base['macs']:.0f} "
                f"[{time.perf_counter() - t0:.0f}s]"
            )
            print(
                f"funnel method on conv2 (S=20, T=50, 5×5), {args.epochs} epochs SGD lr {args.lr} "
                f"λ={args.lam}, threshold {args.threshold}, funnel C: linear {args.c0} → "
                f"{args.c_final}; fine-tune {args.finetune_epochs} epochs"
            )
            rows = [run_funnel(data, args, p, ckpt) for p in args.penalties]
        head = (
            f"{'penalty':<8} {'prune%':>7} {'ranks':>9} {'form':>10} {'params':>8} {'MACs':>9} "
            f"{'acc dec':>8} {'acc trn':>8} {'acc prune':>9} {'acc FT':>7} {'sec':>5}"
        )
        print(head)
        print(
            f"{'dense':<8} {'-':>7} {'-':>9} {'dense':>10} {base['params']:>8.0f} "
            f"{base['macs']:>9.0f} {'-':>8} {'-':>8} {base['test_accuracy']:>9.4f} {'-':>7} {'-':>5}"
        )
        for r in rows:
            ranks = f"{r['ranks'][0]}/{r['ranks_full'][0]},{r['ranks'][1]}/{r['ranks_full'][1]}"
            form = "tucker2" if r["decomposed"] else "reverted"
            print(
                f"{r['penalty']:<8} {100 * r['pruning_ratio']:>6.1f}% {ranks:>9} {form:>10} "
                f"{r['params']:>8.0f} {r['macs']:>9.0f} {r['acc_decomposed']:>8.4f} "
                f"{r['acc_trained']:>8.4f} {r['acc_pruned']:>9.4f} {r['acc_finetuned']:>7.4f} "
                f"{r['seconds']:>5.0f}"
            )
        edges = rows[0]["edges"]
        bins = [f"<{e:g}" for e in edges[1:-1]] + [f">={edges[-2]:g}"]
        print(
            "\nconv2 gate histograms after the regularized phase (|g| bins; first / core / last):"
        )
        print(f"{'':<16}" + " ".join(f"{b:>6}" for b in bins))
        for r in rows:
            for part in ("g_s", "g_core", "g_t"):
                print(
                    f"{r['penalty'] + ' ' + part:<16}"
                    + " ".join(f"{c:>6}" for c in r["hist"][part])
                )

    if not args.skip_nuclear:
        print(
            f"\nnuclear norm: LeNet-5 from scratch, {args.nuclear_epochs} epochs SGD lr "
            f"{args.nuclear_lr}, proximal event every {args.nuclear_pnr} steps (σ -= lr·τ), "
            f"energy {args.energy}% at export; targets conv2, fc1, fc2"
        )
        rows = [run_nuclear(data, args, tau) for tau in args.taus]
        names = list(rows[0]["ranks"])
        print(
            f"{'tau':>6} "
            + " ".join(f"{'rank ' + n:>11}" for n in names)
            + f" {'test acc':>9} {'export acc':>10} {'params':>8} {'MACs':>9} {'mean e_w':>9} {'sec':>5}"
        )
        for r in rows:
            ranks = " ".join(f"{f'{k}/{full}':>11}" for k, full in r["ranks"].values())
            print(
                f"{r['tau']:>6g} {ranks} {r['acc']:>9.4f} {r['export_acc']:>10.4f} "
                f"{r['params']:>8.0f} {r['macs']:>9.0f} {r['mean_e_w']:>9.2e} {r['seconds']:>5.0f}"
            )
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s")


if __name__ == "__main__":
    main()
