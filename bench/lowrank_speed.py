"""Speed of the low-rank distortions, as ratios measured side by side in one run.

1. Batched tiled SVD (one decomposition over all tiles of all layers) vs a Python loop over
   tiles, on the 64×576 lowered matrices of ResNet-32's 64-channel 3×3 convs (target ≥ 5×).
   The loop is timed with ``torch.linalg.svd`` per tile (the obvious implementation), once at
   the process's thread setting and once with one intra-op thread (its best on a small CPU:
   a multi-threaded LAPACK is slower on 16×16–64×64 matrices), and with the distortion's own
   per-tile algorithm (batching alone); a batched ``torch.linalg.svd`` shows what the Gram +
   ``eigh`` route adds.
2. One distortion step on all of ResNet-32's target convs (tiled SVD; Tucker-2; plain SVD) vs
   one training step (forward + backward + SGD step) at batch 128 on CIFAR-shaped random data,
   printed as distortion_time / step_time (target ≤ 1).

Timings are medians of repeated runs after warm-up; the two sides of each ratio are timed
alternately so load from other processes hits both alike. No asserts on time.

    .venv/bin/python bench/lowrank_speed.py [--threads N] [--repeats R] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainers.config import TargetConfig
from trainers.data import DataInfo
from trainers.distortions import Distortion, DistortionContext, make_distortion
from trainers.distortions.lowrank import lowrank_approx
from trainers.distortions.tiled_svd import tiled_svd_approx_loop, to_tiles
from trainers.models import build_model
from trainers.targets import select_targets

CTX = DistortionContext(step=200, total_steps=10_000, event=0, num_events=50, seed=0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_pair(
    a: Callable[[], object], b: Callable[[], object], repeats: int, device: torch.device
) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, timed alternately after one warm-up call each."""
    ta, tb = [], []
    a(), b()
    sync(device)
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            sync(device)
            out.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def loop_same_algorithm(w: torch.Tensor, tile: int, rank: int) -> torch.Tensor:
    """The distortion's own per-tile algorithm (Gram + eigh), one tile at a time."""
    m, n = w.shape[0], w[0].numel()
    mat = w.reshape(m, n)
    out = torch.empty_like(mat)
    for i in range(0, m, tile):
        for j in range(0, n, tile):
            out[i : i + tile, j : j + tile] = lowrank_approx(mat[i : i + tile, j : j + tile], rank)
    return out.reshape(w.shape)


def one_thread(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with one intra-op thread (the setting is restored afterwards)."""

    def run() -> object:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    return run


def batched_svd(weights: list[torch.Tensor], tile: int, rank: int) -> torch.Tensor:
    """All tiles through ONE batched ``torch.linalg.svd`` (instead of the Gram + eigh)."""
    tiles = torch.cat([to_tiles(w.reshape(w.shape[0], -1), tile) for w in weights])
    u, s, vh = torch.linalg.svd(tiles, full_matrices=False)
    return (u[..., :rank] * s[..., None, :rank]) @ vh[..., :rank, :]


def bench_batched_vs_loop(model: nn.Module, repeats: int, device: torch.device) -> None:
    """(1) all 64×576 layers: one batched decomposition of all tiles vs per-tile Python loops."""
    weights = [
        p.detach()
        for n, p in model.named_parameters()
        if p.dim() == 4 and p.shape[0] == 64 and p[0].numel() == 576
    ]
    print(
        f"(1) tiled SVD of the {len(weights)} ResNet-32 layers of 64×576 (lowered), 2× compression"
    )
    print(
        "    loop svd: torch.linalg.svd per tile (1 thr: with one intra-op thread); loop same: the"
    )
    print("    distortion's Gram+eigh per tile; batched svd: one torch.linalg.svd of all tiles;")
    print("    TiledSVD.apply: one batched eigh of all tiles")
    print(
        f"    {'tile':>4} {'rank':>4} {'tiles':>5} {'loop svd':>9} {'1 thr':>8} {'loop same':>9} "
        f"{'batched svd':>11} {'TiledSVD':>9}   speed-up vs loop svd / 1 thr / same / batched svd"
    )
    for tile in (8, 16, 32, 64):
        rank = tile // 4  # k²/(2kr) = 2×
        dist = make_distortion("tiled_svd", tile=tile, rank=rank)
        named = {str(i): w for i, w in enumerate(weights)}
        # The four agree (up to float32 rounding) before they are timed.
        ref = tiled_svd_approx_loop(weights[0], tile, rank)
        got = dist.apply({"w": weights[0]}, CTX)["w"]
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(loop_same_algorithm(weights[0], tile, rank), got)
        ours = lambda d=dist, nw=named: d.apply(nw, CTX)  # noqa: E731
        loop = lambda t=tile, r=rank: [tiled_svd_approx_loop(w, t, r) for w in weights]  # noqa: E731
        times: dict[str, float] = {}
        mine: list[float] = []
        for key, other in (
            ("loop", loop),
            ("loop1", one_thread(loop)),
            ("same", lambda t=tile, r=rank: [loop_same_algorithm(w, t, r) for w in weights]),
            ("bsvd", lambda t=tile, r=rank: batched_svd(weights, t, r)),
        ):
            times[key], t_ours = time_pair(other, ours, repeats, device)
            mine.append(t_ours)
        t_ours = statistics.median(mine)
        tiles = len(weights) * (64 // tile) * (576 // tile)
        ms = " ".join(
            f"{1e3 * times[k]:>{w}.1f}ms" for k, w in (("loop", 7), ("loop1", 6), ("same", 7))
        )
        print(
            f"    {tile:>4} {rank:>4} {tiles:>5} {ms} {1e3 * times['bsvd']:>9.1f}ms "
            f"{1e3 * t_ours:>7.1f}ms   {times['loop'] / t_ours:>6.1f}× / "
            f"{times['loop1'] / t_ours:>4.1f}× / {times['same'] / t_ours:>4.1f}× / "
            f"{times['bsvd'] / t_ours:>4.1f}×"
        )


def distortion_step(model: nn.Module, targets: dict[str, nn.Parameter], dist: Distortion) -> None:
    """What the trainer does at an event: h(w) of every target, copied into the parameters."""
    with torch.no_grad():
        after = dist.apply({n: p.detach() for n, p in targets.items()}, CTX)
        for n, p in targets.items():
            p.copy_(after[n])


def bench_distortion_vs_step(model: nn.Module, repeats: int, device: torch.device) -> None:
    """(2) one distortion step on all target convs vs one training step at batch 128."""
    # The trainer's default targets (first conv skipped), convs only: the 10×64 classifier is
    # not divisible into 16×16 tiles, and the paper compresses the convolutions.
    targets = {
        n: p
        for n, p in select_targets(model, TargetConfig()).items()
        if p.dim() == 4
    }  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (128,), generator=gen).to(device)

    def train_step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    n_weights = sum(p.numel() for p in targets.values())
    print(
        f"(2) distortion step on {len(targets)} ResNet-32 target convs ({n_weights} weights) vs "
        f"one training step (batch 128, 3×32×32)"
    )
    print(f"    {'distortion':<28} {'distort ms':>11} {'step ms':>9} {'distort/step':>13}")
    for label, name, knobs in (
        ("tiled_svd k=16 r=4 (2×)", "tiled_svd", {"tile": 16, "rank": 4}),
        ("tiled_svd k=8 r=1 (4×)", "tiled_svd", {"tile": 8, "rank": 1}),
        ("tucker2 rc=0.5", "tucker2", {"rc": 0.5}),
        ("svd ratio=0.25", "svd", {"ratio": 0.25}),
    ):
        dist = make_distortion(name, **knobs)
        assert dist.validate({n: p.detach() for n, p in targets.items()}) == []
        t_dist, t_step = time_pair(
            lambda d=dist: distortion_step(model, targets, d), train_step, repeats, device
        )
        print(
            f"    {label:<28} {1e3 * t_dist:>11.1f} {1e3 * t_step:>9.1f} {t_dist / t_step:>13.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model("resnet32", DataInfo((3, 32, 32), 10)).to(device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"CPUs {os.cpu_count()}, load average {load:.2f}, median of {args.repeats}"
    )
    bench_batched_vs_loop(model, args.repeats, device)
    bench_distortion_vs_step(model, args.repeats, device)


if __name__ == "__main__":
    main()
