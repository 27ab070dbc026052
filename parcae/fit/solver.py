"""Huber loss on log-space residuals, minimised by multi-start L-BFGS-B.

The start grid is screened in one vectorised pass and L-BFGS-B (analytic gradient) runs
from the best ``refine`` grid points; the best optimum wins. The objective is divided by
delta^2 so that it is O(1) per point: L-BFGS-B's stopping rule is relative to max(|f|, 1),
and the unscaled Huber sum (~1e-6) would stop it at the starting point.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize

from parcae.config import ConfigError
from parcae.fit.laws import Law, natural_name
from parcae.fit.spec import Coord, SolverSpec

_FLOOR_MIN = 1e-6  # floor bound (fraction of the smallest loss) when the spec leaves it empty
_SCREEN_CHUNK = 512  # grid points evaluated at once; bounds memory at chunk * n floats


@dataclass(frozen=True)
class Solution:
    theta: np.ndarray
    """Best coordinates found."""
    value: float
    """Huber loss summed over points (unscaled) at ``theta``."""
    converged: bool
    """Whether L-BFGS-B reported convergence from the winning start."""
    message: str
    """L-BFGS-B's message for the winning start."""
    optima: np.ndarray
    """Distinct optima from all starts, best first (bootstrap replicates restart from these)."""


def huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of each residual and its derivative."""
    a = np.abs(r)
    value = np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))
    return value, np.clip(r, -delta, delta)


def start_grid(law: Law, law_spec: Any, loss: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start grid (G, k) and bounds (+-inf where none) from the law's spec section.

    The floor's starts and bounds are fractions of the smallest of ``loss`` (the fitted
    points), its upper bound capped at the largest: the floor stays inside the data's range
    whatever the unit of loss.
    """
    floor = getattr(law_spec, natural_name(law.floor))
    coords: list[Coord] = [getattr(law_spec, c) for c in law.coords[1:]]
    for name in (t.coef for t in law.terms):
        coord = getattr(law_spec, name)
        if coord.lo is not None or coord.hi is not None:
            raise ConfigError(f"{law.name}.{name}", "log coefficients take no bounds (they are "
                              "optimised in centred form; bound the exponents and the floor)")
    low, high = float(np.min(loss)), float(np.max(loss))
    floor_lo = np.log(low * (floor.lo if floor.lo is not None else _FLOOR_MIN))
    floor_hi = np.log(min(low * (floor.hi if floor.hi is not None else 1.0), high))
    floor_init = np.clip(np.log(low * np.asarray(floor.init)), floor_lo, floor_hi)
    inits = [np.unique(floor_init), *[c.init for c in coords]]
    grid = np.array(list(itertools.product(*inits)), dtype=float)
    lo = np.array([floor_lo, *[-np.inf if c.lo is None else c.lo for c in coords]])
    hi = np.array([floor_hi, *[np.inf if c.hi is None else c.hi for c in coords]])
    return grid, lo, hi


def fit(
    law: Law,
    x: np.ndarray,
    log_y: np.ndarray,
    starts: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
    solver: SolverSpec,
) -> Solution:
    """Minimise the Huber loss of ``law`` on features ``x`` (terms, n) and ``log_y`` (n,).

    Each term c - r x is optimised as (c - r m) - r (x - m), m the feature's mean: without
    centring, c and r are nearly collinear (x ~ log C ~ 40) and L-BFGS-B crawls along the
    valley for thousands of iterations. Results are mapped back to the uncentred c.
    """
    delta = solver.delta
    scale = 1.0 / (delta * delta)
    if len(starts) > solver.refine:
        starts = starts[np.argsort(_screen(law, x, log_y, starts, delta))[:solver.refine]]
    mean = x.mean(axis=1)
    xc = x - mean[:, None]
    shift = np.zeros(len(law.coords))  # theta_centred = theta - shift * rates
    shift[1::2] = mean

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        pred, jac = law.log_predict_grad(theta, xc)
        value, psi = huber(pred - log_y, delta)
        # einsum, not @: a BLAS call wakes OpenBLAS threads that spin against the workers.
        return scale * float(value.sum()), scale * np.einsum("i,ij->j", psi, jac)

    lo, hi = bounds
    box = [(None if np.isinf(a) else a, None if np.isinf(b) else b) for a, b in zip(lo, hi,
                                                                                    strict=True)]
    results = []
    for start in np.clip(starts, lo, hi):
        rates = np.zeros_like(start)
        rates[1::2] = start[2::2]
        res = minimize(
            objective, start - shift * rates, jac=True, method="L-BFGS-B", bounds=box,
            options={"ftol": solver.ftol, "gtol": solver.gtol, "maxiter": solver.maxiter,
                     "maxfun": 5 * solver.maxiter, "maxcor": 20},
        )
        rates[1::2] = res.x[2::2]
        res.x = res.x + shift * rates
        results.append(res)
    results.sort(key=lambda r: r.fun)
    best = results[0]
    return Solution(
        theta=best.x, value=float(best.fun) / scale, converged=_converged(results, (lo, hi)),
        message=str(best.message), optima=_distinct([r.x for r in results]),
    )


def _converged(results: list, bounds: tuple[np.ndarray, np.ndarray]) -> bool:
    """Success, or a line search that could not improve on an optimum another start confirms.

    L-BFGS-B ends ABNORMAL when no step lowers f at machine precision, which at the Huber
    kinks happens at the optimum itself; agreement of two starts, or a projected gradient
    that is zero to working precision, tells that from a stall.
    """
    best = results[0]
    if best.success:
        return True
    if not str(best.message).startswith("ABNORMAL"):
        return False
    agree = [r for r in results[1:] if abs(r.fun - best.fun) <= 1e-9 * max(abs(best.fun), 1.0)]
    return bool(agree) or _stationary(best, bounds)


def _stationary(res: Any, bounds: tuple[np.ndarray, np.ndarray]) -> bool:
    """Projected gradient below 1e-5 of max(f, 1) (the objective is O(1) per point)."""
    lo, hi = bounds
    g = np.asarray(res.jac, dtype=float)
    free = ~(((res.x <= lo) & (g > 0)) | ((res.x >= hi) & (g < 0)))
    return bool(np.max(np.abs(g[free]), initial=0.0) <= 1e-5 * max(abs(res.fun), 1.0))


def _screen(law: Law, x: np.ndarray, log_y: np.ndarray, grid: np.ndarray, delta: float
            ) -> np.ndarray:
    out = np.empty(len(grid))
    for i in range(0, len(grid), _SCREEN_CHUNK):
        pred = law.log_predict(np.atleast_2d(grid[i:i + _SCREEN_CHUNK]), x)
        out[i:i + _SCREEN_CHUNK] = huber(np.atleast_2d(pred) - log_y, delta)[0].sum(axis=1)
    return out


def _distinct(thetas: list[np.ndarray], tol: float = 1e-3) -> np.ndarray:
    kept: list[np.ndarray] = []
    for t in thetas:
        if all(np.max(np.abs(t - k)) > tol for k in kept):
            kept.append(t)
    return np.array(kept)
