"""PNG figures of one table (matplotlib, Agg backend: no display needed).

The paper's views of the runs (stability, test-time depth, depth comparison) are drawn by
:mod:`parcae.fit.views`; the fits' own views (loss against compute with its bands, residuals,
isoFLOP parabolas and optima) here. A figure that cannot be drawn is listed with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from parcae.fit import files, isoflop, views  # noqa: E402
from parcae.fit.findings import law_state  # noqa: E402
from parcae.fit.laws import LAWS  # noqa: E402
from parcae.fit.pipeline import TableFit  # noqa: E402
from parcae.fit.study import Study, load, number, unit
from parcae.fit.table import Table  # noqa: E402

Figure = matplotlib.figure.Figure
View = Callable[[TableFit, Study], "Figure | str"]
_STYLE = {"ok": "-", "flagged": "--"}  # identified fits solid, flagged ones dashed


class Figures(list):
    """(title, file name) of each figure drawn, in report order.

    ``missing`` holds (title, why) of each promised figure that could not be drawn.
    """

    def __init__(self) -> None:
        super().__init__()
        self.missing: list[tuple[str, str]] = []


def views_of() -> list[tuple[str, str, View]]:
    """(title, file name, view) of every figure, in report order."""
    return [
        ("Stability over training", "stability.png", lambda r, s: views.stability(s)),
        ("Depth, not parameters", "depth.png", lambda r, s: views.depth(s)),
        ("Test-time depth", "test_time.png", lambda r, s: views.test_time(s, r.laws)),
        ("Loss against compute", "compute.png", compute),
        ("Residuals of the laws", "residuals.png", residuals),
        ("IsoFLOP parabolas", "isoflop.png", isoflop_parabolas),
        ("Optimal loops and tokens against compute", "isoflop_optima.png", optima),
    ]


def draw_all(result: TableFit, out: Path) -> Figures:
    """Write every figure the table allows; the others are listed in ``missing``."""
    study = load(result.table.source)
    written = Figures()
    for title, name, draw in views_of():
        fig = draw(result, study)
        if isinstance(fig, str):
            written.missing.append((title, fig))
            continue
        files.write_with(out / name, lambda tmp, fig=fig: fig.savefig(  # never a partial PNG
            tmp, format="png", dpi=110, bbox_inches="tight"))
        plt.close(fig)
        written.append((title, name))
    return written


def _fitted(result: TableFit, law: str) -> dict[str, tuple[dict, str]]:
    """Subset -> (record, ok | flagged) of the law's fits that have parameters."""
    out = {}
    for subset, record in result.laws.get(law, {}).items():
        status = law_state(record)[0]
        if status in _STYLE and record.get("params"):
            out[subset] = (record, status)
    return out


def _band(result: TableFit, subset: str, grid: np.ndarray) -> np.ndarray | None:
    """2.5 and 97.5 percentiles of the compute law over its bootstrap replicates, if kept."""
    entry = getattr(result, "samples", {}).get(("compute", subset))
    if entry is None:
        return None
    names, reps = entry if isinstance(entry, tuple) else (LAWS["compute"].param_names, entry)
    reps = np.asarray(reps, dtype=float)
    if not reps.size:
        return None
    e, a, alpha = (reps[:, list(names).index(n), None] for n in ("E", "A", "alpha"))
    return np.nanpercentile(e + a * grid[None] ** -alpha, [2.5, 97.5], axis=0)


def _in_group(table: Table, group: dict[str, str]) -> np.ndarray:
    """Rows of the table in a law record's like-with-like group (cells as the fit read them)."""
    cells = getattr(table, "cells", {})
    rows = np.ones(len(table.run_id), dtype=bool)
    for c, v in group.items():
        if c in cells:
            rows &= np.array([(x or "-") == str(v) for x in cells[c]])
    return rows


def compute(result: TableFit, study: Study) -> Figure | str:
    """Loss against FLOPs per loop count, the fitted compute laws and their bootstrap bands;
    a panel per like-with-like group the laws were fitted to."""
    t = result.table  # FLOPs as the fits used them (derived as 6ND where absent)
    flops, loss, loops = t.columns["flops"], t.columns["val_loss"], t.columns["loops"]
    usable = t.usable & (flops > 0)
    if not usable.any():
        return "no usable run has a FLOP count (flops, or params and tokens to derive it)"
    panels: dict[str, tuple[dict, list]] = {}
    for subset, (record, status) in _fitted(result, "compute").items():
        group = record.get("group") or {}
        panels.setdefault(str(sorted(group.items())), (group, []))[1].append(
            (subset, record, status))
    grid = np.geomspace(flops[usable].min(), flops[usable].max(), 200)
    values = sorted(set(loops[usable]))
    colors = dict(zip(values, plt.cm.viridis(np.linspace(0, 0.9, len(values))), strict=True))
    fig, axes = plt.subplots(1, max(1, len(panels)), squeeze=False, sharey=True,
                             figsize=(6.5 if len(panels) < 2 else 4.6 * len(panels), 4.5))
    bands = []
    for ax, (group, fits) in zip(axes[0], panels.values() or [({}, [])], strict=True):
        mine = usable & _in_group(t, group)
        for v in values:
            ax.scatter(flops[mine & (loops == v)], loss[mine & (loops == v)], color=colors[v],
                       s=14, label=f"runs, loops = {v:g}")
        for subset, record, status in fits:
            v = record.get("loops", next((x for x in values if subset == f"loops={x:g}"), None))
            color = colors.get(v, "k")
            p = record["params"]
            ax.plot(grid, p["E"] + p["A"] * grid ** -p["alpha"], _STYLE[status], color=color,
                    lw=1 if v in colors else 1.6,
                    label=f"{subset}: alpha {p['alpha']:.3g} ({status})")
            band = _band(result, subset, grid)
            bands.append(band is not None)
            if band is not None:
                ax.fill_between(grid, band[0], band[1], color=color, alpha=0.15)
        ax.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)",
               title=", ".join(f"{c}={v}" for c, v in group.items()) or "all runs")
        ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    axes[0, 0].set_ylabel(f"val loss ({unit(study.runs)})")
    if not bands:
        note = "no compute law fitted (identified or flagged)"
    elif all(bands):
        note = "shaded: 95% bootstrap band; dashed: flagged fit"
    else:
        note = "no bootstrap band where replicates were not kept; dashed: flagged fit"
    fig.suptitle(f"Loss against compute ({note})", fontsize=10)
    fig.tight_layout()
    return fig


def residuals(result: TableFit, study: Study) -> Figure | str:
    """Relative residuals of each group's parametric and compute fits against FLOPs."""
    fits = {law: {k: r for k, (r, _) in _fitted(result, law).items()
                  if r.get("residuals") and "loops" not in r and not r.get("frontier")}
            for law in ("parametric", "compute")}
    fits = {law: f for law, f in fits.items() if f}
    if not fits:
        return "no parametric or compute law was fitted to a whole group of runs"
    fig, axes = plt.subplots(1, len(fits), figsize=(5.5 * len(fits), 3.8), squeeze=False)
    flops = dict(zip(result.table.run_id, result.table.columns["flops"], strict=True))
    for ax, (law, records) in zip(axes[0], fits.items(), strict=True):
        for subset, record in records.items():
            res = record["residuals"]
            ax.scatter([flops.get(r["id"], np.nan) for r in res],
                       [r["predicted"] / r["observed"] - 1 for r in res], s=12, label=subset)
        ax.axhline(0, color="k", lw=0.8, label="perfect fit")
        ax.set(xscale="log", xlabel="training compute C (FLOPs)",
               ylabel="predicted / observed loss − 1", title=f"{law} law residuals")
        ax.legend(fontsize=7)
    return fig


def _isoflop_records(result: TableFit) -> dict[str, tuple[dict, list[str]]]:
    """Subset -> (record, axes with a parabola in at least one budget)."""
    out = {}
    for subset, record in result.laws.get("isoflop", {}).items():
        budgets = record.get("budgets") or []
        axes = sorted({k.removesuffix("_parabola") for b in budgets for k in b
                       if k.endswith("_parabola")})
        if axes:
            out[subset] = (record, axes)
    return out


_AXIS_WORDS = {"loops": "loops μ", "tokens": "training tokens D", "params": "parameters N"}


def isoflop_parabolas(result: TableFit, study: Study) -> Figure | str:
    """Per group (row) and axis (column): loss against the axis at each budget, its parabola
    and minimum."""
    records = _isoflop_records(result)
    if not records:
        return "no FLOP budget has an isoFLOP parabola (see the isoFLOP law's reasons)"
    rows = {r.get("run_id"): r for r in study.runs}
    width = max(len(axes) for _, axes in records.values())
    fig, grid = plt.subplots(len(records), width, squeeze=False,
                             figsize=(5.5 * width, 4.2 * len(records)))
    for (subset, (record, axes)), panel in zip(records.items(), grid, strict=True):
        budgets = [b for b in record["budgets"] if any(f"{a}_parabola" in b for a in axes)]
        colors = plt.cm.plasma(np.linspace(0, 0.85, len(budgets)))
        for ax, axis in zip(panel, axes, strict=False):
            for color, b in zip(colors, budgets, strict=True):
                if f"{axis}_parabola" not in b:
                    continue
                runs = [rows[i] for i in b["run_ids"] if i in rows]
                if not runs:  # a table without run_id: its rows are named row<i> only here
                    continue
                x = np.array([number(r, axis) for r in runs])
                ax.scatter(x, [number(r, "val_loss") for r in runs], color=color, s=14)
                xs = np.linspace(np.log(np.nanmin(x)), np.log(np.nanmax(x)), 100)
                ax.plot(np.exp(xs), np.polyval(b[f"{axis}_parabola"], xs), color=color,
                        label=f"C = {b['flops']:.2g} FLOPs")
                best = b[f"{axis}_opt"]
                ax.plot(best, np.polyval(b[f"{axis}_parabola"], np.log(best)), "*",
                        color=color, ms=12, mec="k")
            ax.set(xscale="log", xlabel=_AXIS_WORDS.get(axis, axis),
                   ylabel=f"val loss ({unit(study.runs)})",
                   title=f"{subset}: loss against {axis} (star: minimum)")
            ax.legend(fontsize=7)
        for ax in panel[len(axes):]:
            ax.set_visible(False)
    fig.tight_layout()
    return fig


def optima(result: TableFit, study: Study) -> Figure | str:
    """The budgets' optima against C with the fitted power law and its 95% (WLS) band."""
    fitted = {k: (r, r.get("axes") or ["loops", "tokens"])
              for k, (r, _) in _fitted(result, "isoflop").items()}
    if not fitted:
        return "the isoFLOP law was not fitted (see its reasons)"
    panels = [(subset, record, axis) for subset, (record, axes) in fitted.items()
              for axis in axes if f"{axis}_exponent" in record["params"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (subset, record, axis) in zip(axes[0], panels, strict=True):
        good = isoflop.usable(record["budgets"], axis)
        c = np.array([b["flops"] for b in good])
        grid = np.geomspace(c.min(), c.max(), 100)
        fit = isoflop.regress(record["budgets"], axis)
        frame = fit.get_prediction(np.column_stack([np.ones_like(grid), np.log(grid)])
                                   ).summary_frame(alpha=0.05)
        status = law_state(record)[0]
        ax.scatter(c, [b[f"{axis}_opt"] for b in good], color="k", zorder=3,
                   label="budget optima")
        ax.plot(grid, np.exp(frame["mean"]), _STYLE[status],
                label=f"exponent {record['params'][f'{axis}_exponent']:.3f} ({status})")
        ax.fill_between(grid, np.exp(frame["mean_ci_lower"]), np.exp(frame["mean_ci_upper"]),
                        alpha=0.25, label="95% CI (WLS)")
        ax.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)",
               ylabel=f"optimal {_AXIS_WORDS.get(axis, axis)}", title=subset)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
