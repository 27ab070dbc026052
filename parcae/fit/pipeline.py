"""The fits of one table: rows -> every law's record (params, CIs, goodness, held-out check).

Work is in two passes so that the bootstrap of every fit of a table runs in one parallel
batch: each law first makes its point fit and held-out check and hands back a bootstrap
:class:`~parcae.fit.bootstrap.Job`; the intervals are filled in when the batch returns.

A record is a plain dict (the fits.json format, documented in ``fits/README.md``); a law
with too few points gets ``status: skipped`` and a message naming the law, the points it
needs and the points it has.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from parcae.fit import isoflop
from parcae.fit.bootstrap import Job, Workers, percentile_ci, resample_groups, run_jobs
from parcae.fit.laws import LAWS, Law
from parcae.fit.solver import fit as solve
from parcae.fit.solver import start_grid
from parcae.fit.spec import FitSpec, SolverSpec
from parcae.fit.table import TEST_TIME_FILE, Table

_HELDOUT_STARTS = 2  # best full-data optima the held-out refit restarts from
_NUMERIC_ERRORS = (np.linalg.LinAlgError, ValueError, FloatingPointError)


@dataclass
class TableFit:
    table: Table
    laws: dict[str, dict[str, dict]] = field(default_factory=dict)
    """law -> subset ("all", "loops=4", a run id, ...) -> record."""
    messages: list[str] = field(default_factory=list)
    """User-facing notices (skipped laws, failures)."""

    @property
    def fitted(self) -> int:
        return sum(r["status"] == "ok" for subsets in self.laws.values() for r in subsets.values())


@dataclass(frozen=True)
class _Pending:
    record: dict
    job: Job
    names: tuple[str, ...]


def fit_table(table: Table, spec: FitSpec, workers: Workers | None = None) -> TableFit:
    """Fit every enabled law to ``table``.

    ``workers`` is a pool to share across tables; by default one of
    ``spec.bootstrap.workers`` processes is started and closed here.
    """
    if workers is None:
        with Workers(spec.bootstrap.workers) as own:
            return fit_table(table, spec, own)
    out = TableFit(table)
    pending: list[_Pending] = []
    if not table.usable.any():
        out.messages.append(f"{table.source}: no usable runs ({len(table.excluded)} excluded: "
                            f"{_reasons(table.excluded)}); nothing to fit.")
        return out
    steps: dict[str, Callable[[], None]] = {
        "compute": lambda: _compute(table, spec, out, pending),
        "parametric": lambda: _parametric(table, spec, out, pending),
        "isoflop": lambda: _isoflop(table, spec, out, pending),
        "test_time": lambda: _test_time(table, spec, out, pending, workers),
        "unified": lambda: _unified(table, spec, out, pending),
    }
    for name, step in steps.items():
        if getattr(spec, name).enabled:
            out.laws[name] = {}
            step()
    samples = run_jobs([p.job for p in pending], workers)
    for p, s in zip(pending, samples, strict=True):
        p.record["ci95"] = percentile_ci(s, p.names)
        p.record["n_bootstrap"] = int(len(s))
    return out


def _reasons(excluded: list[dict]) -> str:
    counts: dict[str, int] = {}
    for e in excluded:
        kind = e["reason"].split(":")[0].split(" (")[0]
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in counts.items())


def _skip(out: TableFit, law: str, subset: str, needed: int, had: int, unit: str) -> None:
    reason = f"{law} law needs at least {needed} {unit}, has {had}"
    out.laws[law][subset] = {"status": "skipped", "reason": reason}
    where = "" if subset == "all" else f" ({subset})"
    out.messages.append(f"{out.table.source}: {reason}{where}; skipped.")


def _no_curves(out: TableFit, law: str) -> None:
    reason = f"{law} law needs test-time curves; {TEST_TIME_FILE} is absent or has no usable rows"
    out.laws[law]["all"] = {"status": "skipped", "reason": reason}
    out.messages.append(f"{out.table.folder}: {reason}; skipped.")


def _lacks(out: TableFit, law: str, needed: tuple[str, ...]) -> bool:
    """Skip ``law`` with a message when the table has no values at all in a needed column."""
    missing = [c for c in needed if not np.isfinite(out.table.columns[c]).any()]
    if not missing:
        return False
    hint = " (flops can be derived from params and tokens)" if "flops" in missing else ""
    reason = (f"{law} law needs the column(s) {', '.join(missing)}{hint}; "
              f"{out.table.source.name} has no values in them")
    out.laws[law]["all"] = {"status": "skipped", "reason": reason}
    out.messages.append(f"{out.table.source}: {reason}; skipped.")
    return True


def _seed(spec: FitSpec, *key: str) -> int:
    return spec.bootstrap.seed * 1_000_003 + zlib.crc32("/".join(key).encode())


# ---------------------------------------------------------------- log-sum-exp laws


@dataclass(frozen=True)
class _Points:
    x: np.ndarray
    """Features (terms, n)."""
    loss: np.ndarray
    ids: np.ndarray
    """Label of each point for residuals (run id, or run id and T)."""
    groups: np.ndarray
    """Resampling unit of each point (runs, or curve points)."""
    budget: np.ndarray
    """Held-out ordering: the points with the largest value are held out."""


def _lse_record(law: Law, law_spec: object, spec: FitSpec, pts: _Points, n_boot: int,
                seed: int, excluded: list[dict]) -> tuple[dict, Job]:
    grid, lo, hi = start_grid(law, law_spec)
    log_y = np.log(pts.loss)
    solver = spec.solver
    if hasattr(law_spec, "refine"):
        solver = dataclasses.replace(solver, refine=law_spec.refine)
    sol = solve(law, pts.x, log_y, grid, (lo, hi), solver)
    pred = np.exp(law.log_predict(sol.theta, pts.x))
    names = law.param_names
    record = {
        "status": "ok",
        "params": dict(zip(names, map(float, law.natural(sol.theta)), strict=True)),
        "ci95": {},
        "n_points": int(len(log_y)),
        "n_bootstrap": 0,
        "excluded": excluded,
        "loss": {"function": f"{spec.solver.loss} on log residuals",
                 "delta": spec.solver.delta, "value": sol.value},
        "converged": sol.converged,
        "optimizer_message": sol.message,
        "gof": _gof(pts.loss, pred),
        **_heldout(law, sol.optima[:_HELDOUT_STARTS], (lo, hi), spec, pts),
        "residuals": [{"id": str(i), "observed": float(o), "predicted": float(p)}
                      for i, o, p in zip(pts.ids, pts.loss, pred, strict=True)],
    }
    codes = np.unique(pts.groups, return_inverse=True)[1]
    payload = (law.name, pts.x, log_y, codes, sol.optima[:spec.bootstrap.starts],
               (lo, hi), spec.solver)
    return record, Job(_lse_replicate, payload, n_boot, seed)


def _gof(obs: np.ndarray, pred: np.ndarray) -> dict:
    ss_res = float(((obs - pred) ** 2).sum())
    ss_tot = float(((obs - obs.mean()) ** 2).sum())
    log_res = np.log(pred) - np.log(obs)
    return {"r2": 1 - ss_res / ss_tot if ss_tot > 0 else None,
            "rmse_log": float(np.sqrt((log_res ** 2).mean())),
            "max_abs_rel_residual": float(np.abs(pred / obs - 1).max())}


def _heldout(law: Law, starts: np.ndarray, bounds: tuple[np.ndarray, np.ndarray], spec: FitSpec,
             pts: _Points) -> dict:
    if spec.heldout.rule == "none":
        return {"heldout": None, "heldout_rel_error": None}
    held = pts.budget == pts.budget.max()
    train = ~held
    need = len(law.coords) + 1
    if train.sum() < need or len(np.unique(pts.groups[train])) < 2:
        return {"heldout": {"reason": f"{int(train.sum())} points left without the largest "
                            f"budget, needs {need}"}, "heldout_rel_error": None}
    # Restarting from the full-data optima (all distinct ones) is much cheaper than the grid.
    sol = solve(law, pts.x[:, train], np.log(pts.loss[train]), starts, bounds, spec.solver)
    pred = np.exp(law.log_predict(sol.theta, pts.x[:, held]))
    rel = np.abs(pred / pts.loss[held] - 1)
    return {"heldout": {"rule": spec.heldout.rule, "n_heldout": int(held.sum()),
                        "budget": float(pts.budget.max()), "predicted": pred.tolist(),
                        "observed": pts.loss[held].tolist()},
            "heldout_rel_error": float(rel.mean())}


def _lse_replicate(payload: tuple, rng: np.random.Generator) -> np.ndarray | None:
    name, x, log_y, groups, starts, bounds, solver = payload
    law: Law = LAWS[name]
    solver_spec: SolverSpec = solver
    idx = resample_groups(groups, rng)
    if np.all(groups[idx] == groups[idx[0]]):
        return None
    sol = solve(law, x[:, idx], log_y[idx], starts, bounds, solver_spec)
    return law.natural(sol.theta)


def _lse_task(task: tuple) -> tuple[dict, Job | None]:
    """(record, bootstrap job) of one fit, or a ``failed`` record; runs in a worker too."""
    law_name, spec, subset_key, pts, n_boot, excluded = task
    law = LAWS[law_name]
    try:
        return _lse_record(law, getattr(spec, law_name), spec, pts, n_boot,
                           _seed(spec, *subset_key), excluded)
    except _NUMERIC_ERRORS as exc:
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}, None


def _register(out: TableFit, pending: list[_Pending], law_name: str, subset: str,
              outcome: tuple[dict, Job | None]) -> None:
    record, job = outcome
    out.laws[law_name][subset] = record
    if job is None:
        out.messages.append(f"{out.table.source}: {law_name} law ({subset}) failed: "
                            f"{record['reason']}")
    else:
        pending.append(_Pending(record, job, LAWS[law_name].param_names))


def _add_lse(out: TableFit, pending: list[_Pending], law_name: str, subset: str, spec: FitSpec,
             pts: _Points, n_boot: int, excluded: list[dict]) -> None:
    task = (law_name, spec, (out.table.name, law_name, subset), pts, n_boot, excluded)
    _register(out, pending, law_name, subset, _lse_task(task))


def _run_points(table: Table, mask: np.ndarray, features: list[np.ndarray]) -> _Points:
    ids = table.run_id[mask]
    return _Points(np.stack([f[mask] for f in features]), table.columns["val_loss"][mask],
                   ids, ids, table.columns["flops"][mask])


def _run_excluded(table: Table, dropped: list[dict]) -> list[dict]:
    return table.excluded + dropped


# ---------------------------------------------------------------- the laws


def _compute(table: Table, spec: FitSpec, out: TableFit, pending: list[_Pending]) -> None:
    if _lacks(out, "compute", ("flops",)):
        return
    mask, dropped = table.rows_for(("flops",))
    log_c = np.log(table.columns["flops"])
    subsets = {"all": mask}
    loops = table.columns["loops"]
    values = np.unique(loops[mask])
    if spec.compute.per_loops and len(values) > 1:
        subsets |= {f"loops={v:g}": mask & (loops == v) for v in values}
    need = spec.compute.min_points
    for subset, rows in subsets.items():
        if rows.sum() < need:
            _skip(out, "compute", subset, need, int(rows.sum()), "usable runs")
            continue
        _add_lse(out, pending, "compute", subset, spec, _run_points(table, rows, [log_c]),
                 spec.bootstrap.n, _run_excluded(table, dropped))


def _params_column(table: Table, choice: str, mask: np.ndarray) -> str:
    if choice != "auto":
        return choice
    return "params_unrolled" if len(np.unique(table.columns["loops"][mask])) > 1 else "params"


def _parametric(table: Table, spec: FitSpec, out: TableFit, pending: list[_Pending]) -> None:
    mask, _ = table.rows_for(("tokens",))
    column = _params_column(table, spec.parametric.params_column, mask)
    if _lacks(out, "parametric", (column, "tokens")):
        return
    mask, dropped = table.rows_for((column, "tokens", "flops"))
    need = spec.parametric.min_points
    if mask.sum() < need:
        _skip(out, "parametric", "all", need, int(mask.sum()), "usable runs")
        return
    feats = [np.log(table.columns[column]), np.log(table.columns["tokens"])]
    _add_lse(out, pending, "parametric", "all", spec, _run_points(table, mask, feats),
             spec.bootstrap.n, _run_excluded(table, dropped))
    record = out.laws["parametric"]["all"]
    if record["status"] == "ok":
        record["params_column"] = column


def _isoflop(table: Table, spec: FitSpec, out: TableFit, pending: list[_Pending]) -> None:
    iso = spec.isoflop
    if _lacks(out, "isoflop", ("tokens", "flops")):
        return
    mask, dropped = table.rows_for(("loops", "tokens", "flops"))
    c = table.columns
    data = isoflop.Data(c["flops"][mask], c["loops"][mask], c["tokens"][mask],
                        c["val_loss"][mask], isoflop.budgets(c["flops"][mask],
                                                             spec.heldout.budget_rel_tol))
    points = isoflop.minima(data, iso)
    ids = table.run_id[mask]
    for b, p in zip(np.unique(data.budget), points, strict=True):
        p["run_ids"] = [str(r) for r in ids[data.budget == b]]
    if isoflop.usable(points) < iso.min_budgets:
        _skip(out, "isoflop", "all", iso.min_budgets, isoflop.usable(points),
              f"FLOP budgets with runs at >= {iso.min_points_per_budget} distinct loop counts "
              f"and an interior loss minimum")
        out.laws["isoflop"]["all"]["budgets"] = points
        return
    fits = isoflop.regress(points)
    values = isoflop.params_of(fits)
    record = {
        "status": "ok",
        "params": dict(zip(isoflop.PARAMS, map(float, values), strict=True)),
        "ci95": {},
        "ols_ci95": {f"{n}_exponent": [float(v) for v in fits[n].conf_int(0.05)[1]]
                     for n in ("loops", "tokens")},
        "n_points": int(mask.sum()),
        "n_budgets": isoflop.usable(points),
        "n_bootstrap": 0,
        "excluded": _run_excluded(table, dropped) + [
            {"budget_flops": p["flops"], "reason": p["reason"]} for p in points if "reason" in p],
        "loss": {"function": "ols on log optimum vs log flops",
                 "value": float(sum(f.ssr for f in fits.values()))},
        "gof": {f"{n}_r2": float(fits[n].rsquared) for n in ("loops", "tokens")},
        **_isoflop_heldout(points, spec),
        "budgets": points,
    }
    out.laws["isoflop"]["all"] = record
    job = Job(isoflop.replicate, (data, iso), spec.bootstrap.n,
              _seed(spec, table.name, "isoflop"))
    pending.append(_Pending(record, job, isoflop.PARAMS))


def _isoflop_heldout(points: list[dict], spec: FitSpec) -> dict:
    good = [p for p in points if "reason" not in p]
    if spec.heldout.rule == "none":
        return {"heldout": None, "heldout_rel_error": None}
    last = max(good, key=lambda p: p["flops"])
    rest = [p for p in good if p is not last]
    if len(rest) < 2:
        return {"heldout": {"reason": "needs 2 budgets besides the largest"},
                "heldout_rel_error": None}
    fits = isoflop.regress(rest)
    detail: dict = {"rule": spec.heldout.rule, "budget": last["flops"]}
    errors = []
    for name in ("loops", "tokens"):
        pred = float(np.exp(fits[name].params @ [1.0, np.log(last["flops"])]))
        detail[f"{name}_opt"] = {"predicted": pred, "observed": last[f"{name}_opt"]}
        errors.append(abs(pred / last[f"{name}_opt"] - 1))
    return {"heldout": detail, "heldout_rel_error": float(np.mean(errors))}


def overthinking(t: np.ndarray, loss: np.ndarray, tol: float) -> np.ndarray:
    """Points past a curve's minimum whose loss rose more than ``tol`` (relative) above it."""
    t_min = t[np.argmin(loss)]
    return (t > t_min) & (loss > loss.min() * (1 + tol))


def _curves(table: Table, spec: FitSpec) -> dict[str, dict]:
    """Per run: sorted T and loss, the overthinking flags, and the rows kept for fitting."""
    tt = table.test_time
    assert tt is not None
    out = {}
    for run in dict.fromkeys(tt.run_id):
        rows = tt.run_id == run
        order = np.argsort(tt.T[rows])
        t, loss = tt.T[rows][order], tt.val_loss[rows][order]
        flag = overthinking(t, loss, spec.test_time.overthinking_tol)
        keep = ~flag if spec.test_time.exclude_overthinking else np.ones_like(flag)
        out[str(run)] = {"T": t, "loss": loss, "flag": flag, "keep": keep}
    return out


def _overthinking_entries(run: str, curve: dict) -> list[dict]:
    return [{"run_id": run, "T": float(t), "val_loss": float(v),
             "reason": f"overthinking: loss above the curve minimum {curve['loss'].min():.4g}"}
            for t, v in zip(curve["T"][curve["flag"]], curve["loss"][curve["flag"]], strict=True)]


def _test_time(table: Table, spec: FitSpec, out: TableFit, pending: list[_Pending],
               workers: Workers) -> None:
    if table.test_time is None or len(table.test_time.run_id) == 0:
        _no_curves(out, "test_time")
        return
    need = spec.test_time.min_points
    tasks, flags = {}, {}
    for run, curve in _curves(table, spec).items():
        keep = curve["keep"]
        if keep.sum() < need:
            _skip(out, "test_time", run, need, int(keep.sum()), "curve points")
            continue
        t = curve["T"][keep]
        pts = _Points(t[None], curve["loss"][keep], np.array([f"T={v:g}" for v in t]),
                      np.arange(len(t)), t)
        flags[run] = _overthinking_entries(run, curve)
        excluded = flags[run] if spec.test_time.exclude_overthinking else []
        tasks[run] = ("test_time", spec, (table.name, "test_time", run), pts,
                      spec.test_time.bootstrap, excluded)
    # One small fit per model: worth spreading over the workers like the bootstrap.
    chunk = max(1, len(tasks) // (4 * workers.n))
    for run, outcome in zip(tasks, workers.map(_lse_task, list(tasks.values()), chunksize=chunk),
                            strict=True):
        _register(out, pending, "test_time", run, outcome)
        if outcome[1] is not None:
            outcome[0]["overthinking"] = flags[run]


def _unified(table: Table, spec: FitSpec, out: TableFit, pending: list[_Pending]) -> None:
    if table.test_time is None or len(table.test_time.run_id) == 0:
        _no_curves(out, "unified")
        return
    mask, dropped = table.rows_for(("tokens", "flops", "loops"))
    column = _params_column(table, spec.parametric.params_column, mask)
    if _lacks(out, "unified", (column, "tokens", "flops")):
        return
    mask, dropped = table.rows_for((column, "tokens", "flops", "loops"))
    row_of = {r: i for i, r in enumerate(table.run_id) if mask[i]}
    curves = {r: c for r, c in _curves(table, spec).items() if r in row_of}
    if len(curves) < spec.unified.min_runs:
        _skip(out, "unified", "all", spec.unified.min_runs, len(curves),
              "usable models with test-time curves")
        return
    cols, parts, flagged = table.columns, [], []
    for run, curve in curves.items():
        i, keep = row_of[run], curve["keep"]
        t = curve["T"][keep]
        parts.append((np.log(np.full_like(t, cols[column][i])),
                      np.log(np.full_like(t, cols["tokens"][i])), t / cols["loops"][i],
                      curve["loss"][keep], [f"{run} T={v:g}" for v in t], [run] * len(t),
                      np.full_like(t, cols["flops"][i])))
        flagged += _overthinking_entries(run, curve)
    log_n, log_d, t_mu, loss, ids, groups, flops = (np.concatenate(p) for p in zip(*parts,
                                                                                    strict=True))
    pts = _Points(np.stack([log_n, log_d, t_mu]), loss, ids, groups, flops)
    excluded = _run_excluded(table, dropped)
    if spec.test_time.exclude_overthinking:
        excluded += flagged
    _add_lse(out, pending, "unified", "all", spec, pts, spec.bootstrap.n, excluded)
    if out.laws["unified"]["all"]["status"] == "ok":
        out.laws["unified"]["all"]["params_column"] = column
        out.laws["unified"]["all"]["overthinking"] = flagged
