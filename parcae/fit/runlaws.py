"""The run-level laws (compute, parametric, unified), each fitted per like-with-like group."""

from __future__ import annotations

import zlib

import numpy as np

from parcae.fit import groups
from parcae.fit.curves import overthinking
from parcae.fit.isoflop import budgets
from parcae.fit.laws import LAWS
from parcae.fit.records import Points, fit_record
from parcae.fit.results import Context, Pending
from parcae.fit.spec import FitSpec
from parcae.fit.table import Table


def seed_of(spec: FitSpec, *key: str) -> int:
    return spec.bootstrap.seed * 1_000_003 + zlib.crc32("/".join(key).encode())


def add(ctx: Context, law: str, subset: str, pts: Points, n_boot: int, excluded: list[dict],
        group: dict, extra: dict | None = None, outcome: tuple | None = None) -> dict:
    """Fit ``pts`` (unless ``outcome`` was computed elsewhere) and register the record."""
    if outcome is None:
        outcome = fit_record(law, ctx.spec, pts, n_boot,
                             seed_of(ctx.spec, ctx.table.name, law, subset),
                             outliers=not pts.per_point)
    record, job = outcome
    record["group"] = group
    if job is None:
        ctx.failed(law, subset, record["reason"], group)
        return ctx.out.laws[law][subset]
    record["excluded"] = excluded
    record.update(extra or {})
    ctx.out.laws[law][subset] = record
    ctx.pending.append(Pending(law, subset, record, job, LAWS[law].param_names))
    return record


def run_points(table: Table, mask: np.ndarray, features: list[np.ndarray]) -> Points:
    ids = table.run_id[mask]
    return Points(np.stack([f[mask] for f in features]), table.columns["val_loss"][mask],
                  ids, ids, table.columns["flops"][mask])


def _split(ctx: Context, law: str, mask: np.ndarray) -> list[tuple[dict, np.ndarray]]:
    try:
        return groups.split(ctx.table, law, mask, ctx.spec.group_by)
    except KeyError as exc:
        ctx.skip(law, "all", str(exc.args[0]))
        return []


def compute(ctx: Context) -> None:
    table, spec = ctx.table, ctx.spec
    if ctx.lacks("compute", ("flops",)):
        return
    mask, dropped = table.rows_for(("flops",))
    log_c = np.log(table.columns["flops"])
    loops = table.columns["loops"]
    for group, rows in _split(ctx, "compute", mask):
        subsets = {groups.name(group): (rows, {})}
        values = np.unique(loops[rows])
        if spec.compute.per_loops and len(values) > 1:
            subsets |= {groups.name(group, f"loops={v:g}"): (rows & (loops == v),
                                                             {"loops": float(v)})
                        for v in values}
        if spec.compute.frontier:
            subsets[groups.name(group, "frontier")] = (_frontier(table, rows, spec),
                                                       {"frontier": True})
        need = spec.compute.min_points
        for subset, (sub, extra) in subsets.items():
            if sub.sum() < need:
                ctx.too_few("compute", subset, need, int(sub.sum()), "usable runs", group)
                continue
            add(ctx, "compute", subset, run_points(table, sub, [log_c]), spec.bootstrap.n,
                table.excluded + dropped, group, extra)


def _frontier(table: Table, rows: np.ndarray, spec: FitSpec) -> np.ndarray:
    """The run with the lowest loss at each FLOP budget among ``rows``."""
    idx = np.flatnonzero(rows)
    labels = budgets(table.columns["flops"][idx], spec.heldout.budget_rel_tol)
    out = np.zeros_like(rows)
    for b in np.unique(labels):
        members = idx[labels == b]
        out[members[np.argmin(table.columns["val_loss"][members])]] = True
    return out


def params_column(table: Table, choice: str, mask: np.ndarray) -> str:
    if choice != "auto":
        return choice
    return "params_unrolled" if len(np.unique(table.columns["loops"][mask])) > 1 else "params"


def parametric(ctx: Context) -> None:
    table, spec = ctx.table, ctx.spec
    mask, _ = table.rows_for(("tokens",))
    column = params_column(table, spec.parametric.params_column, mask)
    if ctx.lacks("parametric", (column, "tokens")):
        return
    mask, dropped = table.rows_for((column, "tokens", "flops"))
    need = spec.parametric.min_points
    for group, rows in _split(ctx, "parametric", mask):
        subset = groups.name(group)
        if rows.sum() < need:
            ctx.too_few("parametric", subset, need, int(rows.sum()), "usable runs", group)
            continue
        feats = [np.log(table.columns[column]), np.log(table.columns["tokens"])]
        add(ctx, "parametric", subset, run_points(table, rows, feats), spec.bootstrap.n,
            table.excluded + dropped, group, {"params_column": column})


def unified(ctx: Context, curves: dict[str, dict]) -> None:
    table, spec = ctx.table, ctx.spec
    if table.test_time is None or len(table.test_time.run_id) == 0:
        ctx.no_curves("unified")
        return
    mask, _ = table.rows_for(("tokens", "flops", "loops"))
    column = params_column(table, spec.parametric.params_column, mask)
    if ctx.lacks("unified", (column, "tokens", "flops")):
        return
    mask, dropped = table.rows_for((column, "tokens", "flops", "loops"))
    for group, rows in _split(ctx, "unified", mask):
        _unified_group(ctx, curves, column, group, rows, dropped)


def _unified_group(ctx: Context, curves: dict[str, dict], column: str, group: dict,
                   rows: np.ndarray, dropped: list[dict]) -> None:
    table, spec = ctx.table, ctx.spec
    subset = groups.name(group)
    row_of = {str(r): i for i, r in enumerate(table.run_id) if rows[i]}
    mine = {r: c for r, c in curves.items() if r in row_of}
    if len(mine) < spec.unified.min_runs:
        ctx.too_few("unified", subset, spec.unified.min_runs, len(mine),
                    "usable models with test-time curves", group)
        return
    cols, parts, flagged = table.columns, [], []
    for run, curve in mine.items():
        i, keep = row_of[run], curve["keep"]
        t = curve["T"][keep]
        parts.append((np.log(np.full_like(t, cols[column][i])),
                      np.log(np.full_like(t, cols["tokens"][i])), t / cols["loops"][i],
                      curve["loss"][keep], [f"{run} T={v:g}" for v in t], [run] * len(t),
                      np.full_like(t, cols["flops"][i])))
        flagged += curve["overthinking"]
    log_n, log_d, t_mu, loss, ids, runs, flops = (np.concatenate(p)
                                                  for p in zip(*parts, strict=True))
    pts = Points(np.stack([log_n, log_d, t_mu]), loss, ids, runs, flops)
    excluded = table.excluded + dropped
    if spec.test_time.exclude_overthinking:
        excluded = excluded + flagged
    add(ctx, "unified", subset, pts, spec.bootstrap.n, excluded, group,
        {"params_column": column, "overthinking": flagged})


def curves_of(table: Table, spec: FitSpec) -> dict[str, dict]:
    """Per run: sorted T and loss, overthinking points (listed), and the rows kept."""
    tt = table.test_time
    out: dict[str, dict] = {}
    if tt is None:
        return out
    for run in dict.fromkeys(tt.run_id):
        rows = tt.run_id == run
        order = np.argsort(tt.T[rows])
        t, loss = tt.T[rows][order], tt.val_loss[rows][order]
        flag = overthinking(t, loss, spec.test_time.overthinking_tol)
        keep = ~flag if spec.test_time.exclude_overthinking else np.ones_like(flag)
        listed = [{"run_id": str(run), "T": float(a), "val_loss": float(v),
                   "reason": f"overthinking: {v / loss.min() - 1:.2%} above the curve minimum "
                             f"{loss.min():.4g}"}
                  for a, v in zip(t[flag], loss[flag], strict=True)]
        out[str(run)] = {"T": t, "loss": loss, "flag": flag, "keep": keep,
                         "overthinking": listed}
    return out
