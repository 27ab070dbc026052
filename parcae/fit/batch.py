"""Many weighted refits of one law at once: the bootstrap of the log-sum-exp laws.

A bootstrap sample drawn with replacement is the full data with integer weights (how often
each point was drawn), so every replicate of a fit shares the features and differs only in
its weights. All replicates are then refitted together by damped Gauss-Newton on the
Huber loss (iteratively reweighted: a residual beyond delta counts with weight delta/|r|),
starting from the full-data optimum, in the same centred coordinates and box as the point
fit. One vectorised pass replaces hundreds of L-BFGS-B runs, which is what lets every law,
test-time curves included, have 200 replicates within the benchmark's time.
"""

from __future__ import annotations

import numpy as np

from parcae.fit.laws import Law

_MAX_ITER = 100
_RTOL = 1e-8  # relative decrease of the Huber sum below which a replicate has converged
_XTOL = 1e-6  # accepted step (coordinate units) below which a replicate has converged
_GIVE_UP = 1e4  # damping at which no step lowers the sum any more: at the optimum


def refit(law: Law, x: np.ndarray, log_y: np.ndarray, weights: np.ndarray, start: np.ndarray,
          bounds: tuple[np.ndarray, np.ndarray], delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (G, k) minimising each row of ``weights`` (G, n), and which converged."""
    mean = x.mean(axis=1)
    xc = x - mean[:, None]
    shift = np.zeros(len(law.coords))
    shift[1::2] = mean

    def centred(theta: np.ndarray) -> np.ndarray:
        rates = np.zeros_like(theta)
        rates[..., 1::2] = theta[..., 2::2]
        return theta - shift * rates

    lo, hi = bounds  # floor and rates only: centring moves the coefficients alone
    theta = np.tile(centred(start), (len(weights), 1))
    value, grad_parts = _evaluate(law, theta, xc, log_y, weights, delta)
    damping = np.full(len(weights), 1e-3)
    done = np.zeros(len(weights), dtype=bool)
    k = len(law.coords)
    for _ in range(_MAX_ITER):
        active = ~done
        if not active.any():
            break
        jac, w_irls, r = grad_parts
        a = np.einsum("gni,gn,gnj->gij", jac[active], w_irls[active], jac[active])
        g = np.einsum("gni,gn->gi", jac[active], w_irls[active] * r[active])
        # Coordinates held at a bound by the gradient stay there: solving for them too and
        # clipping afterwards bends every step, and convergence at a bound crawls.
        here = theta[active]
        held = ((here <= lo + 1e-12) & (g > 0)) | ((here >= hi - 1e-12) & (g < 0))
        g = np.where(held, 0.0, g)
        free = (~held).astype(float)
        a = a * free[:, :, None] * free[:, None, :] + held[:, :, None] * np.eye(k)
        diag = np.einsum("gii->gi", a)
        lhs = a + (damping[active, None] * (diag + 1e-12))[:, :, None] * np.eye(k)
        try:
            step = np.linalg.solve(lhs, -g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = -g / (np.abs(diag) + 1.0)
        trial = np.clip(theta[active] + step, lo, hi)
        t_value, t_parts = _evaluate(law, trial, xc, log_y, weights[active], delta)
        better = t_value < value[active]
        idx = np.flatnonzero(active)
        gain = (value[active] - t_value) / np.maximum(value[active], 1e-300)
        take = idx[better]
        theta[take] = trial[better]
        value[take] = t_value[better]
        for part, new in zip(grad_parts, t_parts, strict=True):
            part[take] = new[better]
        damping[take] = np.maximum(damping[take] / 3, 1e-9)
        damping[idx[~better]] *= 4
        small = np.abs(step).max(axis=1) < _XTOL
        done[idx[better & ((gain < _RTOL) | small)]] = True
        done[idx[~better & (damping[idx] > _GIVE_UP)]] = True
    rates = np.zeros_like(theta)
    rates[:, 1::2] = theta[:, 2::2]
    return theta + shift * rates, done


def _evaluate(law: Law, theta: np.ndarray, xc: np.ndarray, log_y: np.ndarray,
              weights: np.ndarray, delta: float
              ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Weighted Huber sums (G,) and [Jacobian (G, n, k), IRLS weights (G, n), residuals]."""
    t = law.terms_of(theta, xc)
    top = t.max(axis=1, keepdims=True)
    e = np.exp(t - top)
    total = e.sum(axis=1, keepdims=True)
    share = e / total
    r = top[:, 0] + np.log(total[:, 0]) - log_y
    jac = np.empty((*r.shape, theta.shape[1]))
    jac[..., 0] = share[:, 0]
    jac[..., 1::2] = np.swapaxes(share[:, 1:], 1, 2)
    jac[..., 2::2] = -np.swapaxes(share[:, 1:] * xc[None], 1, 2)
    a = np.abs(r)
    huber = np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))
    irls = weights * np.where(a <= delta, 1.0, delta / np.maximum(a, 1e-300))
    return (weights * huber).sum(axis=1), [jac, irls, r]
