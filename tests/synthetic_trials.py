"""A synthetic occasional-weight-decay sweep whose e_opt and best pNR are known by construction.

e_w(θ, pNR) = C·θ·pNR^K (e_w grows with pNR, as for weight decay) and validation accuracy is a
downward parabola in log10(e_w/pNR) around E_OPT, plus a little noise. Each θ's optimum pNR is
then (C·θ / E_OPT)^(1/(1-K)).
"""

from __future__ import annotations

import math
import random

from sweeps.analysis import Trial

E_OPT = 5e-7
C, K = 0.01, 0.2
GRID = [1, 3, 10, 30, 100, 300, 1000, 3000]


def accuracy(e_per_pnr: float) -> float:
    return 0.90 - 0.02 * (math.log10(e_per_pnr) - math.log10(E_OPT)) ** 2


def wd_trials(thetas, pnrs=GRID, noise: float = 0.0005, seed: int = 0, k: float = K) -> list[Trial]:
    rng = random.Random(seed)
    out = []
    for theta in thetas:
        for pnr in pnrs:
            e_w = C * theta * pnr**k
            acc = accuracy(e_w / pnr) + rng.gauss(0, noise)
            out.append(Trial(f"t{theta:g}-p{pnr}", "weight_decay", {"pnr": pnr, "lr": 0.001, "theta": theta},
                             acc, e_w, e_w / pnr, test_accuracy=acc - 0.01, seed=0))  # fmt: skip
    return out


def optimum_pnr(theta: float, k: float = K) -> float:
    return (C * theta / E_OPT) ** (1 / (1 - k))
