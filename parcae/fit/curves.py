"""Test-time curves: reading test_time.csv and the checks a curve needs before a fit.

The fitted metric is any column (``test_time.metric``); accuracy-like metrics become an
error by ``test_time.transform`` so that every curve falls towards a floor L_inf.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TRANSFORMS: dict[str, tuple[str, Callable[[float], float]]] = {
    "none": ("{m}", lambda v: v),
    "one_minus": ("1 - {m}", lambda v: 1.0 - v),
    "hundred_minus": ("100 - {m}", lambda v: 100.0 - v),
}


@dataclass
class TestTime:
    """Long-form test-time curves of the usable runs."""

    __test__ = False  # not a pytest class despite the name

    run_id: np.ndarray
    T: np.ndarray
    val_loss: np.ndarray
    """The fitted value: ``metric`` after ``transform`` (the name is kept for the plots)."""
    excluded: list[dict] = field(default_factory=list)
    metric: str = "val_loss"
    """What ``val_loss`` holds, in words (e.g. ``1 - val_accuracy``)."""


def read(rows: list[dict[str, str]], path: Path, usable: dict[str, bool] | None, metric: str,
         transform: str, notes: list[str]) -> TestTime | None:
    """Curves from test_time.csv ``rows``; ``usable`` maps run ids of runs.csv (None: alone).

    Rows of runs missing from runs.csv, of excluded runs and with bad T or values are kept
    out, each with a reason; a note counts the rows of unknown runs.
    """
    missing = [c for c in ("run_id", "T", metric) if rows and c not in rows[0]]
    if not rows or missing:
        notes.append(f"{path}: expected columns run_id, T, {metric} with data rows"
                     f" (missing: {', '.join(missing) or 'rows'}). Test-time laws skipped.")
        return None
    label, fn = TRANSFORMS[transform]
    keep, excluded, unknown = [], [], set()
    for r in rows:
        run, t, value = r["run_id"], _number(r["T"]), _number(r[metric])
        value = fn(value) if math.isfinite(value) else value
        if usable is not None and run not in usable:
            unknown.add(run)
            excluded.append({"run_id": run, "T": r["T"], "reason": "run not in runs.csv"})
        elif usable is not None and not usable[run]:
            excluded.append({"run_id": run, "T": r["T"], "reason": "run excluded"})
        elif not (math.isfinite(t) and t > 0):
            excluded.append({"run_id": run, "T": r["T"], "reason": "T not positive"})
        elif not (math.isfinite(value) and value > 0):
            excluded.append({"run_id": run, "T": r["T"], "reason": f"{label.format(m=metric)} "
                             f"missing, NaN or not positive at {run} T={r['T']}"})
        else:
            keep.append((run, t, value))
    if unknown:
        notes.append(f"{path}: {len(unknown)} run(s) not in runs.csv, their rows ignored: "
                     f"{', '.join(sorted(unknown)[:10])}{' ...' if len(unknown) > 10 else ''}.")
    ids, ts, values = zip(*keep, strict=True) if keep else ((), (), ())
    return TestTime(np.array(ids, dtype=object), np.array(ts, dtype=float),
                    np.array(values, dtype=float), excluded, label.format(m=metric))


def _number(cell: str | None) -> float:
    try:
        return float(cell) if cell not in (None, "") else math.nan
    except ValueError:
        return math.nan


def overthinking(t: np.ndarray, loss: np.ndarray, tol: float) -> np.ndarray:
    """Points past a curve's minimum whose loss rose more than ``tol`` (relative) above it."""
    t_min = t[np.argmin(loss)]
    return (t > t_min) & (loss > loss.min() * (1 + tol))


def rises(loss: np.ndarray, tol: float) -> list[tuple[int, int]]:
    """(i, j), i < j, where point j is worse than the best point before it by more than tol;
    one pair per j (against the best earlier point)."""
    best = np.minimum.accumulate(loss)
    return [(int(np.argmin(loss[:j])), j) for j in range(1, len(loss))
            if loss[j] > best[j - 1] * (1 + tol)]


def last_step_gain(loss: np.ndarray) -> float:
    """Relative improvement of the last point over the one before it."""
    return float((loss[-2] - loss[-1]) / loss[-1]) if len(loss) > 1 else 0.0
