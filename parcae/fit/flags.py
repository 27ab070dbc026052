"""Identification checks: why a fitted law's numbers may not be results.

Each check that fails adds a flag ``{code, message}`` to the record; the message says in
words what went wrong and what would fix it. A record with no flags is ``ok`` (identified),
one with flags is ``flagged``. Codes: ``at_bound``, ``not_converged``, ``poor_fit``,
``wide_ci``, ``degenerate``, ``few_points`` (all laws), ``not_saturated`` and
``non_monotone`` (test-time curves, see :mod:`parcae.fit.testtime`).
"""

from __future__ import annotations

import math

import numpy as np

from parcae.fit.laws import Law, natural_name
from parcae.fit.spec import FlagSpec

_FEATURE_WORDS = {"log_flops": "compute", "log_params": "N", "log_tokens": "D", "T": "T",
                  "T_over_loops": "T / mu"}

_FLOOR_LOW = {
    "test_time": "the curve is still falling at its largest T; longer curves are needed",
    "compute": "the curve has not started to bend; more compute or more budgets are needed",
}
_FLOOR_LOW_DEFAULT = ("the loss is still falling as a pure power law; larger N and D (or more "
                      "budgets) are needed")


def flag(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def natural_bounds(law: Law, lo: np.ndarray, hi: np.ndarray) -> dict[str, list]:
    """Bounds in published units (``None`` for none): exp of log coordinates, else as is."""
    out = {}
    for c, a, b in zip(law.coords, lo, hi, strict=True):
        if c.startswith("log_"):
            a, b = math.exp(a) if np.isfinite(a) else 0.0, math.exp(b) if np.isfinite(b) else None
        else:
            a, b = (float(a) if np.isfinite(a) else None), (float(b) if np.isfinite(b) else None)
        out[natural_name(c)] = [a, b]
    return out


def point_flags(law: Law, theta: np.ndarray, bounds: tuple[np.ndarray, np.ndarray],
                x: np.ndarray, loss: np.ndarray, r2: float | None, converged: bool,
                message: str, spec: FlagSpec) -> list[dict[str, str]]:
    """Flags of a point fit: bounds, convergence, goodness of fit, flat terms, points."""
    out = _bound_flags(law, theta, bounds, spec)
    if not converged:
        out.append(flag("not_converged", f"the optimizer did not report convergence: {message}"))
    if r2 is None or r2 <= spec.min_r2:
        what = "the loss is constant" if r2 is None else f"R² = {r2:.3g}"
        out.append(flag("poor_fit", f"{what}: the law fits no better than a constant"))
    names = law.param_names
    for j, term in enumerate(law.terms):
        values = np.exp(theta[1 + 2 * j] - theta[2 + 2 * j] * x[j])
        span = float(values.max() - values.min())
        if span < spec.degenerate_tol * float(loss.mean()):
            out.append(flag("degenerate", (
                f"the {natural_name(term.coef)}·exp(-{term.rate}·...) term changes the loss by "
                f"only {span:.3g} over the fitted points ({names[2 + 2 * j]} = "
                f"{theta[2 + 2 * j]:.3g}, {names[1 + 2 * j]} = {math.exp(theta[1 + 2 * j]):.3g})"
                f": the curve is a constant in {_FEATURE_WORDS.get(term.feature, term.feature)}"
            )))
    dof = len(loss) - len(law.coords)
    if dof < spec.min_dof:
        out.append(flag("few_points", f"{len(loss)} points for {len(law.coords)} parameters "
                    f"({dof} degrees of freedom, needs {spec.min_dof}): the fit passes through "
                    f"the points rather than testing the law"))
    return out


def _bound_flags(law: Law, theta: np.ndarray, bounds: tuple[np.ndarray, np.ndarray],
                 spec: FlagSpec) -> list[dict[str, str]]:
    out = []
    lo, hi = bounds
    floor = natural_name(law.floor)
    for i, coord in enumerate(law.coords):
        name = natural_name(coord)
        value = math.exp(theta[i]) if coord.startswith("log_") else float(theta[i])
        for side, bound in (("lower", lo[i]), ("upper", hi[i])):
            if not np.isfinite(bound) or abs(theta[i] - bound) > spec.bound_tol:
                continue
            if i == 0 and side == "lower":
                why = _FLOOR_LOW.get(law.name, _FLOOR_LOW_DEFAULT)
            elif i == 0:
                why = (f"{floor} sits at the smallest fitted loss: the loss does not fall "
                       f"towards a lower floor over the observed range")
            elif side == "lower":
                why = f"the {name} term is a constant over the data"
            else:
                why = f"the {name} term vanishes within the first points (not resolved)"
            out.append(flag("at_bound", f"{name} hit its {side} bound {value:.4g}: {why}"))
    return out


def ci_flags(law: Law | None, record: dict, bounds: dict[str, list], names: tuple[str, ...],
             requested: int, spec: FlagSpec) -> list[dict[str, str]]:
    """``wide_ci`` for the named parameters (exponents, floors) from the bootstrap interval,
    and for the law's coefficients against the looser ``wide_coef_factor``.

    Positive parameters are wide when hi / lo exceeds ``wide_ci_factor`` or lo reaches 0;
    signed ones (isoFLOP exponents) when the width exceeds what that factor allows for a
    value of the same size (and ``wide_ci_abs``). Either is wide when it touches a bound, or
    when under half of the replicates could be fitted.
    """
    out = []
    ci = record.get("ci95", {})
    got = record.get("n_bootstrap", 0)
    if requested and got < requested / 2:
        out.append(flag("wide_ci", f"only {got} of {requested} bootstrap replicates could be "
                        f"fitted: the fit is unstable under resampling"))
    coefficients = [n for n in law.param_names if n not in names] if law is not None else []
    for name in names + tuple(coefficients):
        if name not in ci:
            continue
        a, b = ci[name]
        value = record["params"][name]
        signed = law is None
        f = spec.wide_coef_factor if name in coefficients else spec.wide_ci_factor
        if signed:
            wide = b - a > max(abs(value) * (f - 1) / math.sqrt(f), spec.wide_ci_abs)
            why = f"width {b - a:.3g} for a value of {value:.3g}"
        else:
            wide = a <= 0 or b / a > f
            why = "it reaches 0" if a <= 0 else f"hi/lo = {b / a:.3g} > {f:g}"
        lo, hi = bounds.get(name, [None, None])
        touch = [s for s, bound, end in (("lower", lo, a), ("upper", hi, b))
                 if bound is not None and abs(end - bound) <= spec.bound_tol * max(1, abs(bound))]
        if wide or touch:
            reason = why if wide else f"it touches the {touch[0]} bound"
            out.append(flag("wide_ci", f"{name}'s 95% interval [{a:.4g}, {b:.4g}] is not "
                            f"informative ({reason}); more points or budgets are needed"))
    return out


def identified(law: Law) -> tuple[str, ...]:
    """Parameters whose interval decides identification: the floor and the exponents."""
    return (natural_name(law.floor), *[t.rate for t in law.terms])


def finish(record: dict) -> None:
    """Set ``status`` from the flags (``ok`` only with none)."""
    record["status"] = "flagged" if record["flags"] else "ok"
