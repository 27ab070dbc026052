"""The paper's views of a study: stability over training, test-time depth, depth comparison.

Each view takes the study's rows (and the fitted law records) and returns a matplotlib
Figure, or a sentence saying why it cannot be drawn from this table.
"""

from __future__ import annotations

import math
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from parcae.fit import findings  # noqa: E402
from parcae.fit.study import Study, number, role, unit  # noqa: E402

Figure = matplotlib.figure.Figure
_FAILED = ("diverged", "failed")


def _lr_colors(rates: list[float]) -> dict[float, tuple]:
    return dict(zip(rates, plt.cm.viridis(np.linspace(0, 0.9, max(1, len(rates)))),
                    strict=True))


def _legend_once(ax: plt.Axes, rates: bool = True, **kwargs: object) -> None:
    """One entry per label, learning rates first in rising order (left out, unless the panel
    has nothing else to show, where ``rates`` is false)."""
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    lrs = sorted((k for k in unique if k.startswith("lr ")), key=lambda k: number(
        {"lr": k[3:]}, "lr"))
    other = [k for k in unique if not k.startswith("lr ")]
    order = [*lrs, *other] if rates or not other else other
    if order:
        ax.legend([unique[k] for k in order], order, **kwargs)


#: Stability panels: trace column, axis label, log scale, grid limit key, fixed limit.
_PANELS = (("state_norm_last", "‖h_T‖ (mean state norm)", True, "max_state_norm", None),
           ("state_ratio", "‖h_T‖ / ‖e‖", True, "max_state_ratio", None),
           ("rho_A", "ρ(Ā)", False, "max_rho", 1.0))


def stability(study: Study) -> Figure | str:
    """‖h_T‖, ‖h_T‖/‖e‖ and ρ against training step: a column per injection, a line per
    learning rate, the divergence limits drawn (ρ = 1 always; the others where the grid sets
    them)."""
    runs = [r for r in study.runs if r.get("trial") in study.traces]
    if not runs:
        return ("no stability traces: stability/<trial>.csv is absent for every run of "
                "runs.csv")
    panels = [p for p in _PANELS if any(p[0] in study.traces[r["trial"]] for r in runs)]
    if not panels:
        return "the stability traces have no state_norm_last, state_ratio or rho_A column"
    variants = list(dict.fromkeys(r.get("injection") or "?" for r in runs))
    colors = _lr_colors(sorted({number(r, "lr") for r in runs}))
    fig, axes = plt.subplots(len(panels), len(variants), squeeze=False, sharex="col",
                             sharey="row", figsize=(3.8 * len(variants), 2.9 * len(panels)))
    for col, variant in enumerate(variants):
        mine = [r for r in runs if (r.get("injection") or "?") == variant]
        for ax, (column, label, log, key, fixed) in zip(axes[:, col], panels, strict=True):
            for r in mine:
                trace = study.traces[r["trial"]]
                if column not in trace or "step" not in trace:
                    continue
                lr = number(r, "lr")
                ax.plot(trace["step"], trace[column], color=colors[lr], lw=1.2,
                        label=f"lr {lr:g}" if math.isfinite(lr) else "lr unknown")
                if r.get("status") == "diverged":
                    ax.plot(trace["step"][-1:], trace[column][-1:], "x", color="red", ms=9,
                            mew=2, label="diverged (stopped)")
            limit = study.limits.get(key, fixed)
            if limit is not None:
                ax.axhline(limit, color="red", ls="--", lw=1,
                           label=f"divergence limit {limit:g}")
            if column == "rho_A" and variant == "linear":
                label = "ρ(W₁)"
            ax.set(ylabel=label, yscale="log" if log else "linear")
            _legend_once(ax, rates=ax is axes[0, col], fontsize=7)
        axes[0, col].set_title(variant)
        axes[-1, col].set_xlabel("training step")
    unset = [p[1] for p in panels if p[4] is None and p[3] not in study.limits]
    note = f"; no limit drawn for {', '.join(unset)}: the grid leaves it at the monitor's " \
        "default" if unset else ""
    fig.suptitle(f"Stability over training{note}", fontsize=9)
    fig.tight_layout()
    return fig


#: What a test-time record fitted ("1 - {m}": the error of metric m) -> back to the metric.
_UNDO = {"{m}": lambda y: y, "1 - {m}": lambda y: 1.0 - y, "100 - {m}": lambda y: 100.0 - y}


def test_time(study: Study, laws: dict[str, dict[str, dict]]) -> Figure | str:
    """Metric against test-time loops T, coloured by trained μ, with the fitted curves."""
    by_id = {r.get("run_id"): r for r in study.runs
             if role(r) in ("looped", "iso-parameter") and r.get("status") not in _FAILED}
    curves = [c for c in study.curves if c.get("run_id") in by_id]
    if not curves:
        return ("no test-time curves of finished looped runs (test_time.csv absent or "
                "holding only the untied baseline's T = 1)")
    metrics = [m for m in ("val_loss", "val_accuracy")
               if any(math.isfinite(number(c, m)) for c in curves)]
    variants = list(dict.fromkeys(by_id[c["run_id"]].get("injection") or "?" for c in curves))
    mus = sorted({number(by_id[c["run_id"]], "loops") for c in curves})
    colors = dict(zip(mus, plt.cm.plasma(np.linspace(0, 0.85, len(mus))), strict=True))
    fig, axes = plt.subplots(len(metrics), len(variants), figsize=(max(6.5, 4.6 * len(
                                 variants)), 3.6 * len(metrics)),
                             squeeze=False, sharex=True)
    fits = laws.get("test_time", {})
    styles = {"ok": "-", "flagged": "--"}
    for col, variant in enumerate(variants):
        for row, metric in enumerate(metrics):
            ax = axes[row, col]
            drawn = set()
            for run, r in by_id.items():
                if (r.get("injection") or "?") != variant:
                    continue
                pts = sorted((number(c, "T"), number(c, metric)) for c in curves
                             if c["run_id"] == run and math.isfinite(number(c, metric)))
                if not pts:
                    continue
                t, y = map(np.array, zip(*pts, strict=True))
                mu = number(r, "loops")
                record = fits.get(run, {})
                status = findings.law_state(record)[0] if record else ""
                back = _UNDO.get(record.get("metric", "val_loss").replace(metric, "{m}"))
                fitted = status in styles and back is not None
                ax.plot(t, y, "o" if fitted else "o:", color=colors[mu], ms=3.5, lw=0.8,
                        label=f"trained μ = {mu:g}")
                if fitted:
                    p = record["params"]
                    grid = np.linspace(t.min(), t.max(), 100)
                    ax.plot(grid, back(p["L_inf"] + p["Z"] * np.exp(-p["z"] * grid)),
                            styles[status], color=colors[mu], lw=1)
                    drawn.add(status)
                    over = record.get("overthinking") or []
                    if over:
                        ax.plot([o["T"] for o in over], back(np.array(
                            [o["val_loss"] for o in over])), "x", color="red", ms=7,
                            label="overthinking point")
            handles, labels = ax.get_legend_handles_labels()
            unique = dict(zip(labels, handles, strict=True))
            for status in sorted(drawn):
                unique[f"fit ({status})"] = Line2D([], [], color="k", ls=styles[status])
            ax.legend(unique.values(), unique.keys(), fontsize=7)
            ax.set(ylabel=(f"val loss ({unit(by_id.values())})" if metric == "val_loss"
                           else "answer accuracy"), xscale="log" if max(
                               number(c, "T") for c in curves) > 16 else "linear")
            if row == 0:
                ax.set_title(variant)
            if row == len(metrics) - 1:
                ax.set_xlabel("test-time loops T")
    fig.suptitle("Test-time depth by trained mean depth μ (fits: solid identified, dashed "
                 "flagged)", fontsize=10)
    fig.tight_layout()
    return fig


#: Role -> marker, line style, colour, label offset (points), legend name.
_ROLES = {"looped": ("o", "-", "C0", (4, 6), "looped k⊗L"),
          "iso-parameter": ("s", ":", "C3", (4, 6), "iso-parameter k⊗1"),
          "iso-FLOP": ("^", "--", "C2", (4, -12), "iso-FLOP kL⊗1")}


def depth(study: Study) -> Figure | str:
    """Metric against effective depth for looped, iso-parameter and iso-FLOP, ± seed std."""
    found = findings.depth(study.runs)
    if not found[0].numbers.get("available", True):
        return found[0].numbers["reason"]
    series: dict[tuple, list[tuple[float, dict]]] = defaultdict(list)
    for f in found:
        n = f.numbers
        where = ", ".join(f"{c} {n[c]}" for c in ("source", "tokens") if c in n)
        for name in _ROLES:
            if n.get(name):  # several injections: each arm under its runs' own injection
                injection = n[name]["injection"] if n["injection"] and name != "iso-FLOP" else ""
                series[(name, injection, where)].append((n["effective_depth"], n[name]))
    injections = sorted({injection for _, injection, _ in series if injection})
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (name, injection, where), points in series.items():
        points = sorted({x: p for x, p in points}.items())  # iso-parameter repeats per L
        x = np.array([p[0] for p in points])
        y = np.array([p[1]["mean"] for p in points])
        err = np.nan_to_num([p[1]["sd"] for p in points])
        marker, line, color, offset, legend = _ROLES[name]
        label = " ".join(s for s in (legend, injection, where and f"({where})") if s)
        # one colour per role; past the first injection, hollow markers tell them apart
        hollow = injection and injections.index(injection) > 0
        ax.errorbar(x, y, yerr=err, fmt=marker + line, color=color, capsize=3, label=label,
                    markerfacecolor="white" if hollow else color)
        for xi, yi, (_, p) in zip(x, y, points, strict=True):
            ax.annotate(p["label"], (xi, yi), textcoords="offset points", xytext=offset,
                        fontsize=7, color=color)
    metric = found[0].numbers["metric"]
    ax.set(xscale="log", xlabel="effective depth k·L of the looped model (block applications)",
           ylabel="answer accuracy" if metric == "val_accuracy"
           else f"val loss ({unit(study.runs)})",
           title="Depth, not parameters (error bars: std over seeds)")
    ax.set_xticks(sorted({f.numbers["effective_depth"] for f in found}))
    ax.margins(x=0.12)  # room for the k⊗L labels
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=8)
    return fig
