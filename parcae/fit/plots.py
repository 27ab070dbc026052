"""PNG figures of one table's fits (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from parcae.fit import isoflop  # noqa: E402
from parcae.fit.pipeline import TableFit  # noqa: E402

_MAX_CURVES = 24  # test-time curves drawn; more make the figure unreadable


def draw_all(result: TableFit, out: Path) -> list[tuple[str, str]]:
    """Write every figure the fits allow; (title, file name) of each, in report order."""
    figures = [
        ("Loss vs compute per loop count", "compute.png", _compute),
        ("Parametric law residuals", "residuals.png", _residuals),
        ("IsoFLOP parabolas", "isoflop.png", _isoflop),
        ("Optimal loops and tokens vs compute", "isoflop_optima.png", _optima),
        ("Test-time curves", "test_time.png", _test_time),
        ("Stability per trial", "stability.png", _stability),
    ]
    written = []
    for title, name, draw in figures:
        fig = draw(result)
        if fig is None:
            continue
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append((title, name))
    return written


def _ok(result: TableFit, law: str) -> dict[str, dict]:
    return {k: r for k, r in result.laws.get(law, {}).items() if r["status"] == "ok"}


def _compute(result: TableFit) -> plt.Figure | None:
    fits = _ok(result, "compute")
    if not fits:
        return None
    t = result.table
    flops, loss, loops = t.columns["flops"], t.columns["val_loss"], t.columns["loops"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    grid = np.geomspace(np.nanmin(flops[t.usable]), np.nanmax(flops[t.usable]), 200)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(1, len(np.unique(loops[t.usable])))))
    for color, v in zip(colors, np.unique(loops[t.usable]), strict=True):
        rows = t.usable & (loops == v)
        ax.scatter(flops[rows], loss[rows], color=color, s=14, label=f"loops={v:g}")
        p = fits.get(f"loops={v:g}", {}).get("params")
        if p:
            ax.plot(grid, p["E"] + p["A"] * grid ** -p["alpha"], color=color)
    if "all" in fits:
        p = fits["all"]["params"]
        ax.plot(grid, p["E"] + p["A"] * grid ** -p["alpha"], "k--",
                label=f"all: alpha={p['alpha']:.3f}")
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="validation loss")
    ax.legend(fontsize=7)
    return fig


def _residuals(result: TableFit) -> plt.Figure | None:
    fits = {law: r for law in ("parametric", "compute") for k, r in _ok(result, law).items()
            if k == "all"}
    if not fits:
        return None
    fig, axes = plt.subplots(1, len(fits), figsize=(5.5 * len(fits), 3.8), squeeze=False)
    flops = dict(zip(result.table.run_id, result.table.columns["flops"], strict=True))
    for ax, (law, record) in zip(axes[0], fits.items(), strict=True):
        res = record["residuals"]
        c = [flops.get(r["id"], np.nan) for r in res]
        rel = [r["predicted"] / r["observed"] - 1 for r in res]
        ax.scatter(c, rel, s=12)
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xscale="log", xlabel="training FLOPs C", ylabel="predicted / observed - 1",
               title=f"{law} law")
    return fig


def _isoflop(result: TableFit) -> plt.Figure | None:
    record = result.laws.get("isoflop", {}).get("all")
    if not record or not any("reason" not in b for b in record.get("budgets", [])):
        return None
    t = result.table
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    good = [b for b in record["budgets"] if "reason" not in b]
    colors = plt.cm.plasma(np.linspace(0, 0.85, len(good)))
    for color, b in zip(colors, good, strict=True):
        rows = np.isin(t.run_id, b["run_ids"])
        for ax, name in zip(axes, ("loops", "tokens"), strict=True):
            x = t.columns[name][rows]
            ax.scatter(x, t.columns["val_loss"][rows], color=color, s=14)
            xs = np.linspace(np.log(x.min()), np.log(x.max()), 100)
            ax.plot(np.exp(xs), np.polyval(b[f"{name}_parabola"], xs), color=color,
                    label=f"C={b['flops']:.2g}")
            best = np.log(b[f"{name}_opt"])
            ax.plot(b[f"{name}_opt"], np.polyval(b[f"{name}_parabola"], best), "*",
                    color=color, ms=12, mec="k")
    for ax, name in zip(axes, ("loops mu", "tokens D"), strict=True):
        ax.set(xscale="log", xlabel=name, ylabel="validation loss")
    axes[0].legend(fontsize=7)
    return fig


def _optima(result: TableFit) -> plt.Figure | None:
    record = result.laws.get("isoflop", {}).get("all")
    if not record or record["status"] != "ok":
        return None
    good = [b for b in record["budgets"] if "reason" not in b]
    fits = isoflop.regress(good)
    c = np.array([b["flops"] for b in good])
    grid = np.geomspace(c.min(), c.max(), 100)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, name in zip(axes, ("loops", "tokens"), strict=True):
        band = fits[name].get_prediction(np.column_stack([np.ones_like(grid), np.log(grid)]))
        frame = band.summary_frame(alpha=0.05)
        ax.scatter(c, [b[f"{name}_opt"] for b in good], color="k", zorder=3)
        ax.plot(grid, np.exp(frame["mean"]), label=f"exponent "
                f"{record['params'][f'{name}_exponent']:.3f}")
        ax.fill_between(grid, np.exp(frame["mean_ci_lower"]), np.exp(frame["mean_ci_upper"]),
                        alpha=0.25, label="95% CI (OLS)")
        ax.set(xscale="log", yscale="log", xlabel="training FLOPs C",
               ylabel=f"optimal {name}")
        ax.legend(fontsize=8)
    return fig


def _test_time(result: TableFit) -> plt.Figure | None:
    fits = _ok(result, "test_time")
    tt = result.table.test_time
    if not fits or tt is None:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = plt.cm.tab10(np.arange(min(len(fits), _MAX_CURVES)) % 10)
    for color, (run, record) in zip(colors, list(fits.items())[:_MAX_CURVES], strict=True):
        rows = tt.run_id == run
        ax.scatter(tt.T[rows], tt.val_loss[rows], color=color, s=12)
        p = record["params"]
        grid = np.linspace(tt.T[rows].min(), tt.T[rows].max(), 100)
        ax.plot(grid, p["L_inf"] + p["Z"] * np.exp(-p["z"] * grid), color=color, lw=1)
        flagged = record.get("overthinking", [])
        ax.scatter([f["T"] for f in flagged], [f["val_loss"] for f in flagged], marker="x",
                   color="red", s=40, zorder=3)
    ax.set(xlabel="test-time loops T", ylabel="validation loss",
           title="test-time curves (red x: overthinking)")
    return fig


def _stability(result: TableFit) -> plt.Figure | None:
    t = result.table
    panels = [c for c in ("max_state_norm", "rho_A") if np.isfinite(t.columns[c]).any()]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    idx = np.arange(len(t.run_id))
    for ax, col in zip(axes[0], panels, strict=True):
        values = t.columns[col]
        for status, style in (("ok", dict(marker="o", color="C0")),
                              ("diverged", dict(marker="x", color="red")),
                              ("failed", dict(marker="s", color="grey"))):
            rows = t.status == status
            if rows.any():
                ax.scatter(idx[rows], values[rows], s=18, label=status, **style)
        ax.set(xlabel="trial (row of runs.csv)", ylabel=col)
        if col == "max_state_norm":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    return fig
