"""The isoFLOP law's record: optima per budget on each axis and their power laws in C."""

from __future__ import annotations

import numpy as np

from parcae.fit import groups, isoflop
from parcae.fit.bootstrap import Job
from parcae.fit.flags import flag
from parcae.fit.results import Context, Pending
from parcae.fit.runlaws import seed_of


def fit(ctx: Context) -> None:
    table, spec = ctx.table, ctx.spec
    axes = list(spec.isoflop.axes)
    unknown = [a for a in axes if a not in table.columns]
    if unknown:
        ctx.skip("isoflop", "all", f"isoflop law: isoflop.axes names {', '.join(unknown)}, "
                 f"not a numeric run-table column ({', '.join(sorted(table.columns))})")
        return
    if ctx.lacks("isoflop", ("flops", *axes)):
        return
    mask, dropped = table.rows_for(("flops", *axes))
    try:
        split = groups.split(table, "isoflop", mask, spec.group_by)
    except KeyError as exc:
        ctx.skip("isoflop", "all", str(exc.args[0]))
        return
    for group, rows in split:
        _fit_group(ctx, axes, group, rows, table.excluded + dropped)


def _fit_group(ctx: Context, axes: list[str], group: dict, rows: np.ndarray,
               excluded: list[dict]) -> None:
    table, spec, iso = ctx.table, ctx.spec, ctx.spec.isoflop
    subset = groups.name(group)
    c = table.columns
    data = isoflop.Data(c["flops"][rows], {a: c[a][rows] for a in axes}, c["val_loss"][rows],
                        isoflop.budgets(c["flops"][rows], spec.heldout.budget_rel_tol))
    points = isoflop.minima(data, iso)
    ids = table.run_id[rows]
    for b, p in zip(np.unique(data.budget), points, strict=True):
        p["run_ids"] = [str(r) for r in ids[data.budget == b]]
    counts = {a: len(isoflop.usable(points, a)) for a in axes}
    fitted = [a for a in axes if counts[a] >= iso.min_budgets]
    if not fitted:
        record = ctx.too_few("isoflop", subset, iso.min_budgets, max(counts.values()),
                             f"FLOP budgets with >= {iso.min_points_per_budget} runs at distinct "
                             f"{'/'.join(axes)} values and an interior loss minimum", group)
        record["budgets"] = points
        return
    fits = {a: isoflop.regress(points, a) for a in fitted}
    names = isoflop.names(fitted)
    values = isoflop.params_of(fits)
    record = {
        "status": "ok", "flags": [], "group": group, "axes": fitted,
        "params": dict(zip(names, map(float, values), strict=True)),
        "bounds": {n: [None, None] for n in names},
        "ci95": {},
        "wls_ci95": {f"{a}_exponent": [float(v) for v in fits[a].conf_int(0.05)[1]]
                     for a in fitted},
        "n_points": int(rows.sum()),
        "n_budgets": {a: counts[a] for a in fitted},
        "n_bootstrap": 0,
        "excluded": excluded,
        "dropped_budgets": [{"flops": p["flops"], "axis": a, "run_ids": p["run_ids"],
                             "reason": p[f"{a}_reason"]}
                            for p in points for a in axes if f"{a}_reason" in p],
        "loss": {"function": "weighted least squares of log optimum on log flops",
                 "value": float(sum(f.ssr for f in fits.values()))},
        "gof": {f"{a}_r2": float(fits[a].rsquared) for a in fitted},
        **_heldout(points, fitted, ctx),
        "budgets": points,
    }
    for a in axes:
        if a not in fitted:
            record["flags"].append(flag("few_points", (
                f"{a}: only {counts[a]} budgets have an interior optimum (needs "
                f"{iso.min_budgets}); its exponent is not reported")))
    for a in fitted:
        if counts[a] == iso.min_budgets:
            record["flags"].append(flag("few_points", (
                f"{a}: the exponent rests on {counts[a]} budgets, one degree of freedom")))
        if fits[a].rsquared <= spec.flags.min_r2:
            record["flags"].append(flag("poor_fit", (
                f"{a}: R² = {fits[a].rsquared:.3g}, the optima do not follow a power law in C")))
    ctx.out.laws["isoflop"][subset] = record
    job = Job(isoflop.replicate, (isoflop.Data(data.flops, {a: data.axes[a] for a in fitted},
                                               data.loss, data.budget), iso),
              spec.bootstrap.n, seed_of(spec, table.name, "isoflop", subset))
    ctx.pending.append(Pending("isoflop", subset, record, job, names))


def _heldout(points: list[dict], axes: list[str], ctx: Context) -> dict:
    spec = ctx.spec
    if spec.heldout.rule == "none":
        return {"heldout": None, "heldout_rel_error": None}
    good = [p for p in points if all(f"{a}_opt" in p for a in axes)]
    if not good:
        return {"heldout": {"reason": "no budget has an optimum on every axis"},
                "heldout_rel_error": None}
    last = max(good, key=lambda p: p["flops"])
    rest = [p for p in points if p is not last]
    if last["n_points"] < spec.heldout.min_runs:
        return {"heldout": {"reason": f"the largest budget (C = {last['flops']:.3g}) has "
                            f"{last['n_points']} runs, needs {spec.heldout.min_runs}"},
                "heldout_rel_error": None}
    if any(len(isoflop.usable(rest, a)) < 2 for a in axes):
        return {"heldout": {"reason": "needs 2 budgets besides the largest on every axis"},
                "heldout_rel_error": None}
    detail: dict = {"rule": spec.heldout.rule, "budget": last["flops"],
                    "n_heldout": last["n_points"], "unit": "runs of the largest budget"}
    errors = []
    for a in axes:
        fit = isoflop.regress(rest, a)
        pred = float(np.exp(fit.params @ [1.0, np.log(last["flops"])]))
        detail[f"{a}_opt"] = {"predicted": pred, "observed": last[f"{a}_opt"]}
        errors.append(abs(pred / last[f"{a}_opt"] - 1))
    return {"heldout": detail, "heldout_rel_error": float(np.mean(errors))}
