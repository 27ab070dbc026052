"""The fitted laws, each a log-sum-exp of terms linear in its coordinates.

    L = exp(c0) + sum_j exp(c_j - r_j * x_j)

where ``c0`` is the log floor (log E, log L_inf), ``c_j`` a log coefficient (log A), ``r_j``
an exponent or rate (alpha, z) and ``x_j`` a feature of the data point (log C, log N, T,
T / mu). Power laws and exponential decays both take this form, so one prediction and one
analytic gradient serve every law.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Term:
    coef: str
    """Coordinate of the log coefficient, e.g. ``log_A``."""
    rate: str
    """Coordinate of the exponent or decay rate, e.g. ``alpha``."""
    feature: str
    """Feature it multiplies, e.g. ``log_flops``."""


@dataclass(frozen=True)
class Law:
    name: str
    floor: str
    terms: tuple[Term, ...]

    @property
    def coords(self) -> tuple[str, ...]:
        """Optimizer coordinates in order: the floor, then (coef, rate) per term."""
        return (self.floor, *[c for t in self.terms for c in (t.coef, t.rate)])

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(t.feature for t in self.terms)

    @property
    def param_names(self) -> tuple[str, ...]:
        """Published names: ``log_X`` coordinates become ``X`` (exponentiated)."""
        return tuple(natural_name(c) for c in self.coords)

    def terms_of(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        """(G, 1 + terms, n) exponents for coordinates (G, k) and features (terms, n)."""
        coef = theta[:, 1::2, None]
        rate = theta[:, 2::2, None]
        floor = np.broadcast_to(theta[:, :1, None], (theta.shape[0], 1, x.shape[1]))
        return np.concatenate([floor, coef - rate * x[None]], axis=1)

    def log_predict(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        """log L for one (k,) or many (G, k) coordinate vectors; features ``x`` are (terms, n)."""
        theta = np.atleast_2d(theta)
        out = _logsumexp(self.terms_of(theta, x), axis=1)
        return out[0] if out.shape[0] == 1 else out

    def log_predict_grad(self, theta: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log L (n,) and its Jacobian (n, k) at one coordinate vector.

        Written out rather than via :meth:`terms_of`: the optimizer calls it thousands of times.
        """
        t = theta[1::2, None] - theta[2::2, None] * x
        top = np.maximum(t.max(axis=0), theta[0])
        e = np.exp(t - top)
        e0 = np.exp(theta[0] - top)
        total = e0 + e.sum(axis=0)
        w = e / total  # each term's share of the loss
        jac = np.empty((x.shape[1], len(self.coords)))
        jac[:, 0] = e0 / total
        jac[:, 1::2] = w.T
        jac[:, 2::2] = -(w * x).T
        return top + np.log(total), jac

    def predict(self, values: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Loss at features ``x`` (terms, n) for natural parameter vectors (k,) or (G, k) in
        :attr:`param_names` order (e.g. rows of ``TableFit.samples``: a band is a percentile of
        the (G, n) result over G)."""
        return np.exp(self.log_predict(self.coordinates(values), x))

    def coordinates(self, values: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`natural`: optimizer coordinates of natural parameter vectors."""
        values = np.asarray(values, dtype=float)
        logs = np.array([c.startswith("log_") for c in self.coords])
        with np.errstate(divide="ignore"):
            return np.where(logs, np.log(np.where(logs, values, 1.0)), values)

    def natural(self, theta: np.ndarray) -> np.ndarray:
        """Published parameter values (exp of the log coordinates)."""
        theta = np.asarray(theta, dtype=float)
        logs = np.array([c.startswith("log_") for c in self.coords])
        return np.where(logs, np.exp(np.where(logs, theta, 0.0)), theta)


def _logsumexp(t: np.ndarray, axis: int) -> np.ndarray:
    # scipy.special.logsumexp costs ~100 us a call in its array-API layer; fits call this a lot.
    top = t.max(axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.exp(t - top).sum(axis=axis))


def natural_name(coord: str) -> str:
    return coord.removeprefix("log_")


LAWS: dict[str, Law] = {
    "compute": Law("compute", "log_E", (Term("log_A", "alpha", "log_flops"),)),
    "parametric": Law(
        "parametric", "log_E",
        (Term("log_A", "alpha", "log_params"), Term("log_B", "beta", "log_tokens")),
    ),
    "test_time": Law("test_time", "log_L_inf", (Term("log_Z", "z", "T"),)),
    "unified": Law(
        "unified", "log_E",
        (Term("log_A", "alpha", "log_params"), Term("log_B", "beta", "log_tokens"),
         Term("log_Z", "z", "T_over_loops")),
    ),
}
