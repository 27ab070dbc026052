"""The fits of one table: rows -> every law's record (params, CIs, flags, held-out check).

Work is in two passes so that the bootstrap of every fit of a table runs in one parallel
batch: each law first makes its point fit, flags and held-out check and hands back a
bootstrap :class:`~parcae.fit.bootstrap.Job`; when the batch returns, each record gets its
intervals, the interval checks (``wide_ci``), its derived quantities and its final status,
and the replicates are kept on :attr:`TableFit.samples`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from parcae.fit import derived, flags, optima, runlaws, testtime
from parcae.fit.bootstrap import Workers, percentile_ci, run_jobs
from parcae.fit.laws import LAWS
from parcae.fit.results import Context, Pending, TableFit
from parcae.fit.spec import FitSpec
from parcae.fit.table import Table

__all__ = ["TableFit", "fit_table"]


def fit_table(table: Table, spec: FitSpec, workers: Workers | None = None) -> TableFit:
    """Fit every enabled law to ``table``.

    ``workers`` is a pool to share across tables; by default one of
    ``spec.bootstrap.workers`` processes is started and closed here.
    """
    if workers is None:
        with Workers(spec.bootstrap.workers) as own:
            return fit_table(table, spec, own)
    out = TableFit(table)
    if not table.usable.any():
        out.messages.append(f"{table.source}: no usable runs ({len(table.excluded)} excluded: "
                            f"{_reasons(table.excluded)}); nothing to fit.")
        return out
    ctx = Context(table, spec, out, workers)
    curves = runlaws.curves_of(table, spec)
    steps: dict[str, Callable[[], None]] = {
        "compute": lambda: runlaws.compute(ctx),
        "parametric": lambda: runlaws.parametric(ctx),
        "isoflop": lambda: optima.fit(ctx),
        "test_time": lambda: testtime.fit(ctx, curves),
        "unified": lambda: runlaws.unified(ctx, curves),
    }
    for name, step in steps.items():
        if getattr(spec, name).enabled:
            out.laws[name] = {}
            step()
    samples = run_jobs([p.job for p in ctx.pending], workers)
    for pending, s in zip(ctx.pending, samples, strict=True):
        _finish(ctx, pending, s)
    return out


def _finish(ctx: Context, p: Pending, samples: np.ndarray) -> None:
    record, spec = p.record, ctx.spec
    record["ci95"] = percentile_ci(samples, p.names)
    record["n_bootstrap"] = int(len(samples))
    ctx.out.samples[(p.law, p.subset)] = (p.names, samples)
    draws = samples if samples.size else None
    at = derived.budgets_for(spec.budgets, ctx.table.columns["flops"][ctx.table.usable])
    if p.law == "isoflop":
        checked: tuple[str, ...] = tuple(n for n in p.names if n.endswith("_exponent"))
        record["derived"] = derived.isoflop(record["params"], draws, record["axes"], at)
        law = None
    else:
        law = LAWS[p.law]
        checked = flags.identified(law)
        if p.law == "parametric":
            record["derived"] = derived.parametric(record["params"], draws, at)
    record["flags"] += flags.ci_flags(law, record, record["bounds"], checked, p.job.n,
                                      spec.flags)
    flags.finish(record)


def _reasons(excluded: list[dict]) -> str:
    counts: dict[str, int] = {}
    for e in excluded:
        kind = e["reason"].split(":")[0].split(" (")[0]
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in counts.items())
