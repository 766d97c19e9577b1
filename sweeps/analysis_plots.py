"""The e_opt analysis as figures (matplotlib, Agg backend), one colour per strength group.
``M`` is the analysis metric without its ``val_`` prefix (``accuracy`` for val_accuracy,
``loss`` for val_loss):

* ``M_vs_e_w_per_pnr.png`` — the validation metric against e_w/pNR on a log axis with
  e_opt as a line and its range as a band: the papers' central figure. Groups that do not
  count for e_opt (optimum at an edge, too few pNR) are drawn hollow.
* ``M_vs_regularization_error.png`` — the metric against (e_w/pNR) / e_opt on a log axis
  centred on 1, so both sides of the optimum show (only with an e_opt).
* ``M_over_pnr.png`` — the metric over pNR per strength, each strength's suggested pNR in the
  legend and marked on its curve.
* ``pareto_front.png`` — validation accuracy against compression ratio, only when some trial
  compresses (ratio > 1).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from sweeps.analysis import USED, Analysis, GroupResult, pareto_front

ACC_LABEL = "validation accuracy after the last distortion"
# Axis labels and title words per analysis metric.
Y_LABELS = {
    "val_accuracy": ACC_LABEL,
    "val_loss": "validation loss after the last distortion",
    "val_acc_pre": "validation accuracy before the last distortion",
}
TITLES = {
    "val_accuracy": "Validation accuracy",
    "val_loss": "Validation loss",
    "val_acc_pre": "Validation accuracy (before distortion)",
}


def _y_label(a: Analysis) -> str:
    return Y_LABELS.get(a.metric, a.metric)


def _title(a: Analysis) -> str:
    return TITLES.get(a.metric, a.metric)


def _stem(a: Analysis) -> str:
    return a.metric.removeprefix("val_")


def _pyplot() -> Any:
    # matplotlib takes a second to import: only when plotting, with the file backend set first.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(plt: Any, n: int) -> list[Any]:
    if n <= 10:
        return [plt.cm.tab10(i) for i in range(n)]
    return [plt.cm.viridis(i / (n - 1)) for i in range(n)]


def _label(g: GroupResult, methods: int) -> str:
    """The strength without ``method=`` when the sweep has one method (shorter legends)."""
    parts = g.group.strength if methods > 1 else g.group.strength[1:]
    text = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in parts)
    return text or g.label


def _style(g: GroupResult, colour: Any) -> dict[str, Any]:
    filled = g.status == USED
    return {"color": colour, "markerfacecolor": colour if filled else "none",
            "markeredgecolor": colour, "markersize": 6}  # fmt: skip


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _status_note(g: GroupResult) -> str:
    return "" if g.status == USED else f" ({g.status})"


def plot_all(a: Analysis, out: Path) -> list[Path]:
    """Write every figure that applies to ``a`` into ``out``; returns their paths."""
    plt = _pyplot()
    colours = _colours(plt, len(a.groups))
    methods = len({g.group.strength[0][1] for g in a.groups})
    stem = _stem(a)
    paths = [_metric_vs_e(plt, a, colours, methods, out / f"{stem}_vs_e_w_per_pnr.png")]
    if a.centre is not None:
        paths.append(
            _regularization_error(
                plt, a, colours, methods, out / f"{stem}_vs_regularization_error.png"
            )
        )
    paths.append(_metric_over_pnr(plt, a, colours, methods, out / f"{stem}_over_pnr.png"))
    if any((t.compression_ratio or 1.0) > 1.0 for t in a.used):
        paths.append(_pareto(plt, a, out / "pareto_front.png"))
    return paths


def _metric_vs_e(plt: Any, a: Analysis, colours: list, methods: int, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5.2))
    for g, c in zip(a.groups, colours, strict=True):
        pts = sorted((10**p.x, p.value) for p in g.points)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", linewidth=1, alpha=0.9,
                label=_label(g, methods) + _status_note(g), **_style(g, c))  # fmt: skip
    if a.centre is not None:
        ax.axvspan(a.e_opt_low, a.e_opt_high, color="0.6", alpha=0.25,
                   label=f"range {a.e_opt_low:.2g} – {a.e_opt_high:.2g}")  # fmt: skip
        ax.axvline(a.e_opt, color="black", linestyle="--", linewidth=1.2,
                   label=f"e_opt = {a.e_opt:.3g}")  # fmt: skip
        sub = f"e_opt from {a.centre.groups} group(s) with an interior optimum; hollow: not used"
    else:
        sub = "no e_opt: no group has an interior optimum (see the report)"
    ax.set_xscale("log")
    ax.set_xlabel("e_w / pNR: mean |Δw| per mini-batch (log scale)")
    ax.set_ylabel(_y_label(a))
    ax.set_title(f"{_title(a)} vs weight change per step\n{sub}", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    if a.groups:
        ax.legend(fontsize=8, loc="best")
    return _save(plt, fig, path)


def _regularization_error(plt: Any, a: Analysis, colours: list, methods: int, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5.2))
    reach = 0.5
    for g, c in zip(a.groups, colours, strict=True):
        pts = sorted((10 ** (p.x - a.centre.x), p.value) for p in g.points)
        reach = max(reach, *(abs(math.log10(r)) for r, _ in pts))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", linewidth=1, alpha=0.9,
                label=_label(g, methods) + _status_note(g), **_style(g, c))  # fmt: skip
    ax.axvspan(10 ** (a.centre.low - a.centre.x), 10 ** (a.centre.high - a.centre.x),
               color="0.6", alpha=0.25, label="e_opt's range")  # fmt: skip
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1.2, label="e_w/pNR = e_opt")
    ax.set_xscale("log")
    ax.set_xlim(10 ** (-1.1 * reach), 10 ** (1.1 * reach))  # centred: both sides show
    ax.set_xlabel("(e_w/pNR) / e_opt  (log scale; < 1: too little change per step, > 1: too much)")
    ax.set_ylabel(_y_label(a))
    ax.set_title(f"{_title(a)} vs regularization error (e_opt = {a.e_opt:.3g})",
                 fontsize=11)  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    return _save(plt, fig, path)


def _metric_over_pnr(plt: Any, a: Analysis, colours: list, methods: int, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5.2))
    for g, c in zip(a.groups, colours, strict=True):
        by_pnr: dict[float, list[float]] = {}
        for p in g.points:
            by_pnr.setdefault(p.pnr, []).append(p.value)
        xs = sorted(by_pnr)
        ys = [float(np.mean(by_pnr[x])) for x in xs]
        s = g.suggestion
        label = f"{_label(g, methods)}: suggested pNR {s.text() if s else '-'}"
        ax.plot(xs, ys, "o-", linewidth=1, label=label, **_style(g, c))
        if s is not None and s.pnr is not None:
            # On the curve (interpolated in log pNR; at its end when extrapolated).
            y = float(np.interp(math.log10(s.pnr), np.log10(xs), ys))
            ax.axvline(s.pnr, color=c, linestyle=":", linewidth=1)
            ax.plot([s.pnr], [y], marker="*", markersize=14, color=c,
                    markerfacecolor="none" if s.extrapolated else c,
                    markeredgecolor=c if s.extrapolated else "black",
                    markeredgewidth=0.6, linestyle="none")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("pNR: optimizer steps between distortions (log scale)")
    ax.set_ylabel(_y_label(a))
    sub = ("★ suggested pNR (e_w(pNR)/pNR = e_opt; hollow: extrapolated)" if a.centre is not None
           else "no e_opt, so no suggested pNR")  # fmt: skip
    ax.set_title(f"{_title(a)} over pNR per strength\n{sub}", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    if a.groups:
        ax.legend(fontsize=8, loc="best")
    return _save(plt, fig, path)


def _pareto(plt: Any, a: Analysis, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5.2))
    pts = [t for t in a.used if t.compression_ratio is not None]
    ax.scatter([t.compression_ratio for t in pts], [t.val_accuracy for t in pts],
               color="lightgray", edgecolor="gray", label="trials")  # fmt: skip
    front = sorted(pareto_front(pts), key=lambda t: t.compression_ratio)
    ax.plot([t.compression_ratio for t in front], [t.val_accuracy for t in front], "o-",
            color="crimson", label="Pareto front")  # fmt: skip
    ax.set_xlabel("compression ratio (dense params / compressed params, ×)")
    ax.set_ylabel(ACC_LABEL)
    ax.set_title("Validation accuracy vs compression: the Pareto front", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)
