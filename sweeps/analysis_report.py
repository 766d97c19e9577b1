"""The e_opt analysis as text and tables: the report ``compsweep analyze`` prints (and logs as
``report.txt``), ``trials.csv`` (every trial, used or skipped, with its regularization error)
and ``groups.csv`` (every strength group: status, optimum, suggested and observed best pNR)."""

from __future__ import annotations

import csv
from pathlib import Path

from sweeps.analysis import USED, Analysis, Trial
from trainers.metrics import get_metric

ACC = get_metric("val_accuracy")
TEST_ACC = get_metric("test_accuracy")
E_PER_PNR = get_metric("mean_e_w_per_pnr")


def _e(v: float | None) -> str:
    return E_PER_PNR.format(v)


def _pnrs(values: list[float]) -> str:
    return " ".join(f"{p:g}" for p in values)


def _direction(metric: str) -> str:
    return "higher is better" if get_metric(metric).direction == "max" else "lower is better"


def report_lines(a: Analysis, sweep_id: str) -> list[str]:
    """What ``compsweep analyze`` prints: counts, skipped trials with reasons, e_opt with its
    range (or why there is none and what to run next), and the table of strength groups."""
    head = (
        f"sweep {sweep_id}: {len(a.trials)} trial run(s) in MLflow; {len(a.used) + a.folded} "
        f"analyzed, {len(a.skipped)} skipped"
    )
    if a.folded:
        head += (
            f"; {a.folded} identical run(s) (same knobs and seed) folded, so {len(a.used)} "
            "configurations"
        )
    lines = [head, f"optima located on {a.metric} ({_direction(a.metric)})"]
    if a.skipped:
        lines.append("skipped (left out of every estimate):")
        lines += [f"  trial {t.trial_id} (run {t.run_id}): {why}" for t, why in a.skipped]
    if a.centre is not None:
        c = a.centre
        lines += [
            f"e_opt = {_e(a.e_opt)}  range {_e(a.e_opt_low)} – {_e(a.e_opt_high)}  from "
            f"{c.groups} strength group(s) with an interior optimum",
            f"  (95% bootstrap over trials {_e(10**c.boot_low)} – {_e(10**c.boot_high)}; "
            f"groups' optima and best trials {_e(10**c.spread_low)} – {_e(10**c.spread_high)}; the range is the "
            "wider of the two)",
        ]
    else:
        lines += a.cannot_support()
    if not a.groups:
        return lines
    width = max(len("strength"), *(len(g.label) for g in a.groups))
    folded = bool(a.folded)
    by = get_metric(a.metric)
    # Accuracy columns stay beside another metric: what a reader compares first.
    accuracy = (f"  {'val acc':>8}" if a.metric != ACC.name else "") + f"  {'(test)':>8}"
    best = f"best {a.metric}"
    head = (f"{'strength':<{width}}  {'trials':>6}{'  folded' if folded else ''}  {'pNRs':>4}  "
            f"{best:>{max(8, len(best))}}{accuracy}  {'best pNR':>8}  {'optimum e_w/pNR':>15}  "
            f"{'status':<11}  suggested pNR")  # fmt: skip
    lines += ["", head]
    notes = []
    for g in a.groups:
        n_folded = sum(len(t.folded) for t in g.group.trials)
        s = g.suggestion
        lines.append(
            f"{g.label:<{width}}  {len(g.group.trials):>6}"
            + (f"  {n_folded:>6}" if folded else "")
            + f"  {len(g.pnrs):>4}  {by.format(g.best.value):>{max(8, len(best))}}"
            + (f"  {ACC.format(g.best.val_accuracy):>8}" if a.metric != ACC.name else "")
            + f"  {'(' + TEST_ACC.format(g.best.test_accuracy) + ')':>8}  {g.best_pnr_text:>8}  "
            f"{_e(g.optimum.e_w_per_pnr):>15}  {g.status:<11}  {s.text() if s else '-'}"
        )
        if g.reason:
            notes.append(f"  {g.label}: {g.reason}")
        if s and s.note:
            notes.append(f"  {g.label}: suggested pNR: {s.note}")
    if notes:
        lines += ["", "notes:", *notes]
    if a.centre is not None:
        lines.append(
            "regularization error of each trial, log10(e_w/pNR) − log10(e_opt): in trials.csv"
        )
    return lines


def write_tables(a: Analysis, out: Path) -> list[Path]:
    """``trials.csv`` and ``groups.csv`` in ``out``."""
    group_of = {t.trial_id: g.label for g in a.groups for t in g.group.trials}
    trials_csv = out / "trials.csv"
    with trials_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial_id", "run_id", "method", "strength", "pnr", "knobs", "seed",
                    "metric", "value", "val_accuracy", "test_accuracy", "mean_e_w",
                    "mean_e_w_per_pnr",
                    "regularization_error_log10", "compression_ratio", "status", "reason",
                    "folded", "folded_trial_ids"])  # fmt: skip
        rows: list[tuple[Trial, str, str]] = [(t, "used", "") for t in a.used]
        rows += [(t, "skipped", why) for t, why in a.skipped]
        for t, status, why in rows:
            knobs = " ".join(f"{k}={v}" for k, v in sorted(t.knobs.items()))
            w.writerow([t.trial_id, t.run_id, t.method, group_of.get(t.trial_id, ""), t.pnr,
                        knobs, t.seed, a.metric, t.value, t.val_accuracy, t.test_accuracy,
                        t.mean_e_w,
                        t.mean_e_w_per_pnr, a.reg_error.get(t.trial_id, ""), t.compression_ratio,
                        status, why, len(t.folded), " ".join(t.folded)])  # fmt: skip
    groups_csv = out / "groups.csv"
    with groups_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["strength", "status", "reason", "trials", "folded", "distinct_pnr", "pnrs",
                    "best_pnr", "metric", "best_value", "best_val_accuracy", "best_test_accuracy",
                    "optimum_e_w_per_pnr", "optimum_how", "suggested_pnr", "extrapolated",
                    "e_w_pnr_exponent", "suggestion_note", "next_pnr", "used_for_e_opt"])  # fmt: skip
        for g in a.groups:
            s = g.suggestion
            w.writerow([g.label, g.status, g.reason, len(g.group.trials),
                        sum(len(t.folded) for t in g.group.trials), len(g.pnrs), _pnrs(g.pnrs),
                        g.best_pnr_text, a.metric, g.best.value, g.best.val_accuracy,
                        g.best.test_accuracy,
                        g.optimum.e_w_per_pnr, g.optimum.how, s.pnr if s else "",
                        s.extrapolated if s else "", s.k if s and s.k is not None else "",
                        s.note if s else "", _pnrs(g.next_pnr), g.status == USED])  # fmt: skip
    return [trials_csv, groups_csv]
