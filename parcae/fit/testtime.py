"""The test-time law L(T) = L_inf + Z exp(-z T), one fit per trained model's curve.

Besides the checks of every law a curve is flagged ``not_saturated`` when its last step
still improves by more than ``test_time.saturation_tol`` (L_inf is then an extrapolation)
and ``non_monotone`` when a fitted point is worse than an earlier one beyond
``test_time.monotone_tol``. Overthinking points are always listed; a curve left with too few
points after dropping them is skipped with that reason.
"""

from __future__ import annotations

import numpy as np

from parcae.fit import groups
from parcae.fit.curves import last_step_gain, rises
from parcae.fit.flags import flag
from parcae.fit.records import Points, fit_record
from parcae.fit.results import Context
from parcae.fit.runlaws import add, seed_of
from parcae.fit.spec import TestTimeSpec


def fit(ctx: Context, curves: dict[str, dict]) -> None:
    table, spec = ctx.table, ctx.spec
    if not curves:
        ctx.no_curves("test_time")
        return
    tt = spec.test_time
    tasks, points = {}, {}
    for run, curve in curves.items():
        keep = curve["keep"]
        if keep.sum() < tt.min_points:
            dropped = int(curve["flag"].sum()) if tt.exclude_overthinking else 0
            why = f" after dropping {dropped} overthinking point(s)" if dropped else ""
            record = ctx.too_few("test_time", run, tt.min_points, int(keep.sum()),
                                 f"curve points{why}", groups.of_run(table, run, spec.group_by))
            record["overthinking"] = curve["overthinking"]
            continue
        t = curve["T"][keep]
        pts = Points(t[None], curve["loss"][keep], np.array([f"T={v:g}" for v in t]),
                     np.arange(len(t)), t, per_point=True)
        points[run] = pts
        tasks[run] = ("test_time", spec, pts, tt.bootstrap,
                      seed_of(spec, table.name, "test_time", run), False)
    # One small fit per model: worth spreading over the workers like the bootstrap.
    chunk = max(1, len(tasks) // (4 * ctx.workers.n))
    outcomes = ctx.workers.map(_fit_task, list(tasks.values()), chunksize=chunk)
    for run, outcome in zip(tasks, outcomes, strict=True):
        curve = curves[run]
        excluded = curve["overthinking"] if tt.exclude_overthinking else []
        record = add(ctx, "test_time", run, points[run], tt.bootstrap, excluded,
                     groups.of_run(table, run, spec.group_by),
                     {"overthinking": curve["overthinking"], "metric": table.test_time.metric},
                     outcome)
        if record["status"] != "failed":
            fitted = np.array([r["predicted"] for r in record["residuals"]])
            res = np.log(fitted / points[run].loss)
            noise = 1.4826 * float(np.median(np.abs(res - np.median(res))))  # robust to bumps
            record["flags"] += curve_flags(points[run].loss, fitted, points[run].x[0], noise, tt)


def _fit_task(task: tuple) -> tuple:
    return fit_record(*task)


def curve_flags(loss: np.ndarray, fitted: np.ndarray, t: np.ndarray, noise: float,
                spec: TestTimeSpec) -> list[dict[str, str]]:
    """``not_saturated`` from the fitted curve's last step (noise-free), ``non_monotone``
    from the observed points; ``noise`` (a robust SD of the fit's log residuals) widens the
    monotonicity tolerance by three of it, so that noise alone is not a bump."""
    out = []
    gain = last_step_gain(fitted)
    if gain > spec.saturation_tol:
        out.append(flag("not_saturated", (
            f"the fitted last step (T = {t[-2]:g} -> {t[-1]:g}) still improves the loss by "
            f"{gain:.2%}: the curve has not flattened, so L_inf is an extrapolation; "
            f"evaluate at larger T")))
    tol = spec.monotone_tol + 3 * noise
    bumps = rises(loss, tol)
    if bumps:
        i, j = bumps[0]
        out.append(flag("non_monotone", (
            f"{len(bumps)} point(s) are worse than an earlier one by more than {tol:.1%} "
            f"(beyond noise), e.g. T = {t[j]:g} ({loss[j]:.4g}) after T = {t[i]:g} "
            f"({loss[i]:.4g}): the curve is not a single decay")))
    return out
