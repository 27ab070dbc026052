"""IsoFLOP analysis on any axis: per FLOP budget, a parabola of loss in log <axis> around
the budget's lowest loss gives the optimum <axis>*; a weighted regression of log <axis>* on
log C gives <axis>* = k C^x (Chinchilla's approach 2 with the axis ``params``).

Budgets are runs whose FLOPs agree within a relative tolerance. A budget's optimum is
dropped (with its reason) when the lowest loss is at the edge of the sampled range, the
parabola opens downward or its vertex leaves the window. Each optimum is weighted by the
inverse of its variance (delta method on the parabola's coefficients, residual variance
pooled over the budgets).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import statsmodels.api as sm

from parcae.fit.spec import IsoflopSpec


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
    axes: dict[str, np.ndarray]
    """Axis name -> value per row (loops, tokens, params, ...)."""
    loss: np.ndarray
    budget: np.ndarray
    """Budget label per row (from :func:`budgets`)."""

    def take(self, idx: np.ndarray) -> Data:
        return Data(self.flops[idx], {a: v[idx] for a, v in self.axes.items()}, self.loss[idx],
                    self.budget[idx])


def parabola_minimum(x: np.ndarray, loss: np.ndarray, spec: IsoflopSpec) -> dict | str:
    """The optimum in the window around the lowest loss, or why there is none.

    Returns ``opt`` (log x*), ``parabola`` (coefficients in log x, highest first), ``window``
    ([lo, hi] of x), ``ssr``, ``dof`` and ``var_factor`` (variance of log x* per unit
    residual variance).
    """
    distinct = np.unique(x)
    if len(distinct) < 3:
        return f"{len(distinct)} distinct values, a parabola needs 3"
    best = x[np.argmin(loss)]
    if spec.require_interior_minimum and best in (distinct[0], distinct[-1]):
        return (f"lowest loss at the {'low' if best == distinct[0] else 'high'} edge of the "
                f"sampled range ({np.exp(best):.4g}): extend the range past the optimum")
    near = distinct[np.abs(distinct - best) <= spec.window]
    if len(near) < 3:
        near = distinct[np.argsort(np.abs(distinct - best))[:3]]
    rows = np.isin(x, near)
    xs, ys = x[rows], loss[rows]
    centre = xs.mean()
    design = np.column_stack([(xs - centre) ** 2, xs - centre, np.ones_like(xs)])
    coef, *_ = np.linalg.lstsq(design, ys, rcond=None)
    a, b = coef[0], coef[1]
    if a <= 0:
        return "parabola opens downward (no minimum)"
    opt = centre - b / (2 * a)
    if spec.require_interior_minimum and not near.min() <= opt <= near.max():
        return "parabola minimum outside the window it was fitted in"
    grad = np.array([b / (2 * a * a), -1 / (2 * a), 0.0])
    var_factor = float(grad @ np.linalg.pinv(design.T @ design) @ grad)
    a, b, c = coef  # back to coefficients of the uncentred log x, for plots
    parabola = [a, b - 2 * a * centre, a * centre ** 2 - b * centre + c]
    return {"opt": float(opt), "parabola": [float(v) for v in parabola],
            "window": [float(np.exp(near.min())), float(np.exp(near.max()))],
            "ssr": float(((design @ coef - ys) ** 2).sum()), "dof": int(len(xs) - 3),
            "var_factor": var_factor, "n_window": int(len(xs))}


def minima(data: Data, spec: IsoflopSpec) -> list[dict]:
    """One entry per budget: FLOPs, runs, and per axis the optimum or ``<axis>_reason``."""
    out = []
    for b in np.unique(data.budget):
        rows = data.budget == b
        entry: dict = {"flops": float(np.exp(np.log(data.flops[rows]).mean())),
                       "n_points": int(rows.sum())}
        for axis, values in data.axes.items():
            if rows.sum() < spec.min_points_per_budget:
                entry[f"{axis}_reason"] = f"{int(rows.sum())} runs, needs " \
                                          f"{spec.min_points_per_budget}"
                continue
            found = parabola_minimum(np.log(values[rows]), data.loss[rows], spec)
            if isinstance(found, str):
                entry[f"{axis}_reason"] = found
                continue
            entry[f"{axis}_opt"] = float(np.exp(found.pop("opt")))
            entry |= {f"{axis}_{k}": v for k, v in found.items()}
        out.append(entry)
    _weights(out, list(data.axes))
    return out


def _weights(points: list[dict], axes: list[str]) -> None:
    """Set ``<axis>_sd_log`` per optimum from the residual variance pooled over budgets."""
    for axis in axes:
        good = [p for p in points if f"{axis}_opt" in p]
        dof = sum(p[f"{axis}_dof"] for p in good)
        if dof == 0:
            continue  # parabolas through 3 points: no variance to pool, equal weights
        sigma2 = sum(p[f"{axis}_ssr"] for p in good) / dof
        for p in good:
            p[f"{axis}_sd_log"] = float(np.sqrt(max(sigma2 * p[f"{axis}_var_factor"], 1e-30)))


def usable(points: list[dict], axis: str) -> list[dict]:
    return [p for p in points if f"{axis}_opt" in p]


def regress(points: list[dict], axis: str):  # -> statsmodels RegressionResults
    """Weighted least squares of log <axis>* on log C over the budgets usable for ``axis``."""
    good = usable(points, axis)
    log_c = sm.add_constant(np.log([p["flops"] for p in good]))
    y = np.log([p[f"{axis}_opt"] for p in good])
    sd = np.array([p.get(f"{axis}_sd_log", 1.0) for p in good])
    return sm.WLS(y, log_c, weights=1.0 / sd ** 2).fit()


def names(axes: list[str]) -> tuple[str, ...]:
    """Published parameter names, in the order of replicate vectors."""
    return (*[f"{a}_exponent" for a in axes], *[f"{a}_coefficient" for a in axes])


def params_of(fits: dict) -> np.ndarray:
    """Replicate vector in :func:`names` order for ``fits`` (axis -> regression)."""
    return np.array([*[f.params[1] for f in fits.values()],
                     *[np.exp(f.params[0]) for f in fits.values()]])


def replicate(payload: tuple[Data, IsoflopSpec], rng: np.random.Generator) -> np.ndarray | None:
    """Bootstrap replicate: resample runs within each budget, redo parabolas and regressions."""
    data, spec = payload
    idx = np.concatenate([rng.choice(np.flatnonzero(data.budget == b), (data.budget == b).sum())
                          for b in np.unique(data.budget)])
    points = minima(data.take(idx), spec)
    if any(len(usable(points, a)) < 2 for a in data.axes):
        return None
    return params_of({a: regress(points, a) for a in data.axes})
