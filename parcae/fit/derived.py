"""Quantities derived from fitted laws, with intervals from the same bootstrap replicates.

Parametric law (Hoffmann et al., 2022, with C = 6 N D): the exponents of the compute-optimal
allocation a = beta / (alpha + beta) (N_opt ~ C^a) and b = alpha / (alpha + beta)
(D_opt ~ C^b), and N_opt, D_opt and D_opt / N_opt at given budgets. IsoFLOP law: each
axis's optimum k C^x at given budgets.
"""

from __future__ import annotations

import numpy as np


def budgets_for(spec_budgets: tuple[float, ...], flops: np.ndarray) -> list[float]:
    """The spec's budgets, else the table's largest budget and 10x and 100x it."""
    if spec_budgets:
        return [float(c) for c in spec_budgets]
    finite = flops[np.isfinite(flops)]
    top = float(finite.max()) if finite.size else 0.0
    return [top, 10 * top, 100 * top] if top > 0 else []


def _stat(point: float, samples: np.ndarray | None) -> dict:
    out: dict = {"value": float(point)}
    if samples is not None and samples.size:
        good = samples[np.isfinite(samples)]
        if good.size:
            out["ci95"] = [float(v) for v in np.percentile(good, [2.5, 97.5])]
    return out


def _chinchilla(p: np.ndarray, c: float) -> tuple[np.ndarray, ...]:
    """a, b, N_opt, D_opt at budget c for parameter rows (E, A, alpha, B, beta)."""
    _, big_a, alpha, big_b, beta = (p[..., i] for i in range(5))
    with np.errstate(all="ignore"):
        a = beta / (alpha + beta)
        b = alpha / (alpha + beta)
        g = (alpha * big_a / (beta * big_b)) ** (1 / (alpha + beta))
        n_opt = g * (c / 6) ** a
        d_opt = (c / 6) ** b / g
    return a, b, n_opt, d_opt


def parametric(params: dict, samples: np.ndarray | None, at: list[float]) -> dict:
    point = np.array([params[k] for k in ("E", "A", "alpha", "B", "beta")])
    a, b, _, _ = _chinchilla(point, 1.0)
    sa, sb = (None, None) if samples is None else _chinchilla(samples, 1.0)[:2]
    rows = []
    for c in at:
        _, _, n, d = _chinchilla(point, c)
        sn, sd = (None, None) if samples is None else _chinchilla(samples, c)[2:]
        with np.errstate(all="ignore"):  # replicates with N_opt 0 or inf: dropped by _stat
            ratio = d / n, None if samples is None else sd / sn
        rows.append({"flops": c, "N_opt": _stat(n, sn), "D_opt": _stat(d, sd),
                     "tokens_per_param": _stat(*ratio)})
    return {"assumes": "C = 6 N D", "a": _stat(a, sa), "b": _stat(b, sb), "at_budgets": rows}


def isoflop(params: dict, samples: np.ndarray | None, axes: list[str], at: list[float]) -> dict:
    k = len(axes)
    rows = []
    for c in at:
        row: dict = {"flops": c}
        for i, axis in enumerate(axes):
            point = params[f"{axis}_coefficient"] * c ** params[f"{axis}_exponent"]
            draw = None if samples is None else samples[:, k + i] * c ** samples[:, i]
            row[f"{axis}_opt"] = _stat(point, draw)
        rows.append(row)
    return {"at_budgets": rows}
