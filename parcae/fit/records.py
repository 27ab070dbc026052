"""One log-sum-exp law fitted to one set of points: its record and its bootstrap job.

The point fit is multi-start L-BFGS-B (:mod:`parcae.fit.solver`) under bounds derived from
the data; the outlier rule of the spec, when any, drops named points and refits; the
held-out check refits without the largest budget. The bootstrap replicates are refitted in
batches (:mod:`parcae.fit.batch`) when the table's jobs run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from parcae.fit import batch, flags
from parcae.fit.bootstrap import Job, resample_groups
from parcae.fit.isoflop import budgets
from parcae.fit.laws import LAWS, Law
from parcae.fit.solver import fit as solve
from parcae.fit.solver import start_grid
from parcae.fit.spec import FitSpec

_FINISH_FTOL = 1e-10  # L-BFGS-B finishing a replicate near its optimum needs less than a fit
_FINISH_ITER = 500
_HELDOUT_STARTS = 1  # best full-data optima the held-out refit restarts from
NUMERIC_ERRORS = (np.linalg.LinAlgError, ValueError, FloatingPointError)


@dataclass(frozen=True)
class Points:
    x: np.ndarray
    """Features (terms, n)."""
    loss: np.ndarray
    ids: np.ndarray
    """Label of each point for residuals (run id, or run id and T)."""
    groups: np.ndarray
    """Resampling unit of each point (runs, or curve points)."""
    budget: np.ndarray
    """Held-out ordering: the points with the largest value are held out."""
    per_point: bool = False
    """Points are one curve's (held out: the largest ``heldout.min_runs`` T values); else
    runs (held out: the largest FLOP budget)."""

    def without(self, drop: np.ndarray) -> Points:
        keep = ~drop
        return dataclasses.replace(self, x=self.x[:, keep], loss=self.loss[keep],
                                   ids=self.ids[keep], groups=self.groups[keep],
                                   budget=self.budget[keep])


def fit_record(law_name: str, spec: FitSpec, pts: Points, n_boot: int, seed: int,
               outliers: bool) -> tuple[dict, Job | None]:
    """(record, bootstrap job) of one fit, or a ``failed`` record; runs in a worker too."""
    law = LAWS[law_name]
    try:
        return _record(law, spec, pts, n_boot, seed, outliers)
    except NUMERIC_ERRORS as exc:
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "flags": []}, None


def _record(law: Law, spec: FitSpec, pts: Points, n_boot: int, seed: int, outliers: bool
            ) -> tuple[dict, Job]:
    law_spec = getattr(spec, law.name)
    solver = spec.solver
    if hasattr(law_spec, "refine"):
        solver = dataclasses.replace(solver, refine=law_spec.refine)
    dropped: list[dict] = []
    if outliers and spec.outliers.rule != "none":
        pts, dropped = _drop_outliers(law, law_spec, spec, solver, pts)
    grid, lo, hi = start_grid(law, law_spec, pts.loss)
    log_y = np.log(pts.loss)
    sol = solve(law, pts.x, log_y, grid, (lo, hi), solver)
    pred = np.exp(law.log_predict(sol.theta, pts.x))
    gof = _gof(pts.loss, pred)
    record = {
        "status": "ok",
        "flags": flags.point_flags(law, sol.theta, (lo, hi), pts.x, pts.loss, gof["r2"],
                                   sol.converged, sol.message, spec.flags),
        "params": dict(zip(law.param_names, map(float, law.natural(sol.theta)), strict=True)),
        "bounds": flags.natural_bounds(law, lo, hi),
        "ci95": {},
        "n_points": int(len(log_y)),
        "n_bootstrap": 0,
        "outliers": dropped,
        "loss": {"function": f"{spec.solver.loss} on log residuals",
                 "delta": spec.solver.delta, "value": sol.value},
        "converged": sol.converged,
        "optimizer_message": sol.message,
        "gof": gof,
        **_heldout(law, sol.optima[:_HELDOUT_STARTS], (lo, hi), spec, pts),
        "residuals": [{"id": str(i), "observed": float(o), "predicted": float(p)}
                      for i, o, p in zip(pts.ids, pts.loss, pred, strict=True)],
    }
    codes = np.unique(pts.groups, return_inverse=True)[1]
    payload = (law.name, pts.x, log_y, codes, sol.theta, (lo, hi), spec.solver)
    return record, Job(replicates, payload, n_boot, seed, batched=True)


def _drop_outliers(law: Law, law_spec: object, spec: FitSpec, solver: object, pts: Points
                   ) -> tuple[Points, list[dict]]:
    rule = spec.outliers
    if rule.rule == "highest_loss":
        drop = np.zeros(len(pts.loss), dtype=bool)
        drop[np.argsort(pts.loss)[::-1][:rule.k]] = True
        why = f"one of the {rule.k} highest losses (outliers.rule = highest_loss)"
    else:
        grid, lo, hi = start_grid(law, law_spec, pts.loss)
        sol = solve(law, pts.x, np.log(pts.loss), grid, (lo, hi), solver)  # type: ignore[arg-type]
        res = law.log_predict(sol.theta, pts.x) - np.log(pts.loss)
        mad = 1.4826 * np.median(np.abs(res - np.median(res)))
        score = np.abs(res - np.median(res)) / max(mad, 1e-12)
        drop = score > rule.threshold
        why = f"log residual beyond {rule.threshold:g} robust deviations (outliers.rule = residual)"
    listed = [{"id": str(i), "loss": float(v), "reason": why}
              for i, v in zip(pts.ids[drop], pts.loss[drop], strict=True)]
    return pts.without(drop), listed


def _gof(obs: np.ndarray, pred: np.ndarray) -> dict:
    ss_res = float(((obs - pred) ** 2).sum())
    ss_tot = float(((obs - obs.mean()) ** 2).sum())
    log_res = np.log(pred) - np.log(obs)
    return {"r2": 1 - ss_res / ss_tot if ss_tot > 0 else None,
            "rmse_log": float(np.sqrt((log_res ** 2).mean())),
            "max_abs_rel_residual": float(np.abs(pred / obs - 1).max())}


def _heldout(law: Law, starts: np.ndarray, bounds: tuple[np.ndarray, np.ndarray], spec: FitSpec,
             pts: Points) -> dict:
    if spec.heldout.rule == "none":
        return {"heldout": None, "heldout_rel_error": None}
    need = spec.heldout.min_runs
    if pts.per_point:
        held = np.zeros(len(pts.loss), dtype=bool)
        held[np.argsort(pts.budget)[::-1][:need]] = True
        unit, size = "largest T values", f"T >= {pts.budget[held].min():g}"
    else:
        labels = budgets(pts.budget, spec.heldout.budget_rel_tol)
        held = labels == labels.max()
        unit, size = "runs of the largest budget", f"C = {pts.budget[held].mean():.3g}"
    n_held = len(np.unique(pts.groups[held]))
    train = ~held
    least = len(law.coords) + 1
    if n_held < need:
        return {"heldout": {"reason": f"the held-out set ({size}) has {n_held} {unit}, "
                            f"needs {need}"}, "heldout_rel_error": None}
    if train.sum() < least or len(np.unique(pts.groups[train])) < 2:
        return {"heldout": {"reason": f"{int(train.sum())} points left without {size}, "
                            f"needs {least}"}, "heldout_rel_error": None}
    # Restarting from the full-data optima (all distinct ones) is much cheaper than the grid.
    sol = solve(law, pts.x[:, train], np.log(pts.loss[train]), starts, bounds, spec.solver)
    pred = np.exp(law.log_predict(sol.theta, pts.x[:, held]))
    rel = np.abs(pred / pts.loss[held] - 1)
    return {"heldout": {"rule": spec.heldout.rule, "n_heldout": n_held, "unit": unit,
                        "budget": float(pts.budget[held].max()), "where": size,
                        "n_train": int(train.sum()), "predicted": pred.tolist(),
                        "observed": pts.loss[held].tolist()},
            "heldout_rel_error": float(rel.mean())}


def replicates(payload: tuple, rngs: list[np.random.Generator]) -> list[np.ndarray | None]:
    """A chunk of bootstrap replicates, refitted together from the full-data optimum.

    The few that the batched refit leaves unconverged (slow crawls along a bound) are
    finished one by one by L-BFGS-B from where it stopped, at most a twentieth of a chunk
    (the rest would cost more than the whole batch); a replicate neither finishes is dropped
    and ``n_bootstrap`` says so.
    """
    name, x, log_y, groups, start, bounds, solver = payload
    law: Law = LAWS[name]
    finish = dataclasses.replace(solver, ftol=_FINISH_FTOL, maxiter=_FINISH_ITER)
    budget = max(1, len(rngs) // 20)
    picks = [resample_groups(groups, rng) for rng in rngs]
    usable = [not np.all(groups[idx] == groups[idx[0]]) for idx in picks]
    weights = np.array([np.bincount(idx, minlength=len(log_y)) for idx in picks], dtype=float)
    theta, done = batch.refit(law, x, log_y, weights, start, bounds, solver.delta)
    out: list[np.ndarray | None] = []
    for t, ok, use, idx in zip(theta, done, usable, picks, strict=True):
        if use and not ok and budget > 0:
            budget -= 1
            sol = solve(law, x[:, idx], log_y[idx], t[None], bounds, finish)
            t, ok = sol.theta, sol.converged
        out.append(law.natural(t) if ok and use else None)
    return out
