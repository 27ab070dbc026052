"""IsoFLOP analysis: per budget, parabolas of loss in log loops and log tokens; the minima
give mu* = k_mu C^loops_exponent and D* = k_D C^tokens_exponent, regressed by OLS on logs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import statsmodels.api as sm

from parcae.fit.spec import IsoflopSpec

#: Published parameter names, in the order of replicate vectors.
PARAMS = ("loops_exponent", "tokens_exponent", "loops_coefficient", "tokens_coefficient")


def budgets(flops: np.ndarray, rel_tol: float) -> np.ndarray:
    """Budget label per row: sorted FLOPs within ``rel_tol`` of a budget's smallest share it."""
    order = np.argsort(flops)
    labels = np.empty(len(flops), dtype=int)
    label, first = -1, -np.inf
    for i in order:
        if flops[i] > first * (1 + rel_tol):
            label, first = label + 1, flops[i]
        labels[i] = label
    return labels


@dataclass(frozen=True)
class Data:
    flops: np.ndarray
    loops: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    budget: np.ndarray
    """Budget label per row (from :func:`budgets`)."""


def parabola_minimum(x: np.ndarray, loss: np.ndarray, interior: bool
                     ) -> tuple[float, np.ndarray] | str:
    """(x at the minimum, quadratic coefficients high first), or why there is none."""
    if len(np.unique(x)) < 3:
        return f"{len(np.unique(x))} distinct values, a parabola needs 3"
    coef = np.polyfit(x, loss, 2)
    if coef[0] <= 0:
        return "parabola opens downward (no minimum)"
    x_min = -coef[1] / (2 * coef[0])
    if interior and not x.min() <= x_min <= x.max():
        return "minimum outside the sampled range"
    return float(x_min), coef


def minima(data: Data, spec: IsoflopSpec) -> list[dict]:
    """One entry per budget: its FLOPs, the optimal loops and tokens, or why it is unusable."""
    out = []
    for b in np.unique(data.budget):
        rows = data.budget == b
        entry: dict = {"flops": float(np.exp(np.log(data.flops[rows]).mean())),
                       "n_points": int(rows.sum())}
        if rows.sum() < spec.min_points_per_budget:
            entry["reason"] = f"{int(rows.sum())} runs, needs {spec.min_points_per_budget}"
            out.append(entry)
            continue
        for name, col in (("loops", data.loops), ("tokens", data.tokens)):
            found = parabola_minimum(np.log(col[rows]), data.loss[rows],
                                     spec.require_interior_minimum)
            if isinstance(found, str):
                entry["reason"] = f"{name}: {found}"
                break
            entry[f"{name}_opt"] = float(np.exp(found[0]))
            entry[f"{name}_parabola"] = [float(c) for c in found[1]]
        out.append(entry)
    return out


def regress(points: list[dict]) -> dict[str, sm.regression.linear_model.RegressionResults]:
    """OLS of log optimum on log FLOPs for loops and tokens over the usable budgets."""
    good = [p for p in points if "reason" not in p]
    log_c = sm.add_constant(np.log([p["flops"] for p in good]))
    return {name: sm.OLS(np.log([p[f"{name}_opt"] for p in good]), log_c).fit()
            for name in ("loops", "tokens")}


def usable(points: list[dict]) -> int:
    return sum("reason" not in p for p in points)


def params_of(fits: dict) -> np.ndarray:
    """Replicate vector in :data:`PARAMS` order."""
    return np.array([fits["loops"].params[1], fits["tokens"].params[1],
                     np.exp(fits["loops"].params[0]), np.exp(fits["tokens"].params[0])])


def replicate(payload: tuple[Data, IsoflopSpec], rng: np.random.Generator) -> np.ndarray | None:
    """Bootstrap replicate: resample runs within each budget, redo parabolas and regressions."""
    data, spec = payload
    idx = np.concatenate([rng.choice(np.flatnonzero(data.budget == b), (data.budget == b).sum())
                          for b in np.unique(data.budget)])
    sample = Data(data.flops[idx], data.loops[idx], data.tokens[idx], data.loss[idx],
                  data.budget[idx])
    points = minima(sample, spec)
    if usable(points) < 2:
        return None
    return params_of(regress(points))
