"""report.md's per-law sections: identified results first, flagged fits apart with reasons.

A flagged fit's numbers are shown only beside the reasons they are not results; skipped and
failed fits are listed with their reason. Each fit is named by its like-with-like group.
"""

from __future__ import annotations

from collections import Counter

_TITLES = {
    "compute": "Compute law  L(C) = E + A C^-alpha",
    "parametric": "Parametric law  L(N, D) = E + A N^-alpha + B D^-beta",
    "isoflop": "IsoFLOP analysis  <axis>* = k C^<axis>_exponent",
    "test_time": "Test-time law  L(T) = L_inf + Z exp(-z T)",
    "unified": "Unified law  L(mu, D, T) = E + A N^-alpha + B D^-beta + Z exp(-z T / mu)",
}
_MAX_LISTED = 20  # per-model lists (one test-time fit per run) are cut here


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def param_cell(record: dict, name: str) -> str:
    value = record["params"][name]
    ci = record.get("ci95", {}).get(name)
    return f"{fmt(value)} [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else fmt(value)


def law_section(law: str, subsets: dict[str, dict], labels: dict[str, str]) -> list[str]:
    def name(subset: str) -> str:  # per-model fits are keyed by run id; show the trial too
        return f"{labels[subset]} ({subset[:8]})" if subset in labels else subset

    lines = [f"## {_TITLES[law]}", ""]
    ok = {k: r for k, r in subsets.items() if r["status"] == "ok"}
    flagged = {k: r for k, r in subsets.items() if r["status"] == "flagged"}
    other = {k: r for k, r in subsets.items() if r["status"] in ("skipped", "failed")}
    if ok:
        lines += _table(ok, name)
        lines += _heldout(ok, name)
        lines += _derived(law, ok, name)
    else:
        lines += ["No identified fit.", ""]
    if flagged:
        lines += _flagged(flagged, name)
    for subset, record in list(other.items())[:_MAX_LISTED]:
        lines.append(f"- {name(subset)}: {record['status']} ({record['reason']})")
    if len(other) > _MAX_LISTED:
        lines.append(f"- ... and {len(other) - _MAX_LISTED} more (see fits.json)")
    if other:
        lines.append("")
    fitted = {**ok, **flagged}
    lines += _outliers(fitted, name)
    if law == "isoflop":
        for subset, record in fitted.items():
            lines += _budgets(name(subset), record)
    over = [f for r in subsets.values() for f in r.get("overthinking", [])]
    if over:
        lines += [f"Overthinking: {len(over)} curve points rise above their curve's minimum "
                  "(listed in fits.json under `overthinking`; excluded from the fits when "
                  "`test_time.exclude_overthinking` is true):"]
        lines += [f"- {name(f['run_id'])} T={f['T']:g}: {f['val_loss']:.4g}"
                  for f in over[:_MAX_LISTED]]
        if len(over) > _MAX_LISTED:
            lines.append(f"- ... and {len(over) - _MAX_LISTED} more")
        lines.append("")
    return lines


def _table(ok: dict[str, dict], name) -> list[str]:
    names = list(next(iter(ok.values()))["params"])
    header = ["fit", "n", *names, "R²", "held-out rel. error"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for subset, r in list(ok.items())[:_MAX_LISTED * 5]:
        gof = r.get("gof", {})
        r2 = gof.get("r2", next(iter(gof.values()), None))
        cells = [param_cell(r, n) if n in r["params"] else "–" for n in names]
        lines.append("| " + " | ".join([name(subset), str(r["n_points"]), *cells, fmt(r2),
                                        fmt(r.get("heldout_rel_error"))]) + " |")
    least = min(r["n_bootstrap"] for r in ok.values())
    return [*lines, "", f"Identified fits. 95% bootstrap intervals in brackets ({least}+ "
            f"replicates).", ""]


def _heldout(ok: dict[str, dict], name) -> list[str]:
    lines = []
    for subset, r in list(ok.items())[:_MAX_LISTED]:
        h = r.get("heldout")
        if not h:
            continue
        if "reason" in h:
            lines.append(f"- {name(subset)}: held-out check skipped: {h['reason']}.")
        else:
            where = h.get("where", f"C = {h['budget']:.3g}")
            lines.append(f"- {name(subset)}: held out {h['n_heldout']} {h.get('unit', 'runs')} "
                         f"({where}); mean relative error {fmt(r['heldout_rel_error'])}.")
    return [*lines, ""] if lines else []


def _derived(law: str, ok: dict[str, dict], name) -> list[str]:
    lines = []
    for subset, r in ok.items():
        d = r.get("derived")
        if not d:
            continue
        if "a" in d:
            lines.append(f"- {name(subset)} ({d['assumes']}): N_opt ∝ C^a with a = "
                         f"{_stat(d['a'])}, D_opt ∝ C^b with b = {_stat(d['b'])}.")
        for row in d["at_budgets"]:
            parts = [f"{k} {_stat(v)}" for k, v in row.items() if k != "flops"]
            lines.append(f"  - C = {row['flops']:.3g}: {', '.join(parts)}")
    return ["Derived quantities (95% intervals from the same replicates):", "", *lines, ""] \
        if lines else []


def _stat(s: dict) -> str:
    ci = s.get("ci95")
    return f"{fmt(s['value'])} [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else fmt(s["value"])


def _flagged(flagged: dict[str, dict], name) -> list[str]:
    codes = Counter(f["code"] for r in flagged.values() for f in r["flags"])
    lines = [f"**Flagged, not identified ({len(flagged)}): do not quote these as results.** "
             f"Flags: {', '.join(f'{c} ×{n}' for c, n in codes.items())}.", ""]
    for subset, r in list(flagged.items())[:_MAX_LISTED]:
        values = ", ".join(f"{k} {fmt(v)}" for k, v in r["params"].items())
        lines.append(f"- {name(subset)} ({values}):")
        lines += [f"  - {f['code']}: {f['message']}" for f in r["flags"]]
    if len(flagged) > _MAX_LISTED:
        lines.append(f"- ... and {len(flagged) - _MAX_LISTED} more (see fits.json)")
    return [*lines, ""]


def _outliers(fitted: dict[str, dict], name) -> list[str]:
    lines = [f"- {name(subset)}: {o['id']} (loss {fmt(o['loss'])}): {o['reason']}"
             for subset, r in fitted.items() for o in r.get("outliers", [])]
    return ["Outliers dropped by the spec's rule:", "", *lines, ""] if lines else []


def _budgets(title: str, record: dict) -> list[str]:
    axes = record.get("axes", [])
    wls = ", ".join(f"{k} {fmt(v[0])}–{fmt(v[1])}" for k, v in record["wls_ci95"].items())
    lines = [f"{title}: weighted-regression 95% intervals: {wls}.", "",
             "| budget C | runs | " + " | ".join(f"{a}*" for a in axes) + " | note |",
             "|---|---|" + "---|" * len(axes) + "---|"]
    for b in record["budgets"]:
        notes = "; ".join(f"{a}: {b[f'{a}_reason']}" for a in axes if f"{a}_reason" in b)
        lines.append(f"| {b['flops']:.3g} | {b['n_points']} | "
                     + " | ".join(fmt(b.get(f"{a}_opt")) for a in axes) + f" | {notes} |")
    return [*lines, ""]
