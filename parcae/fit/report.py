"""Writing one table's results: fits.json (for scripts) and report.md (for people).

The fits.json format is documented in ``fits/README.md``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from parcae.config import to_dict
from parcae.fit.pipeline import TableFit
from parcae.fit.spec import FitSpec

FORMAT_VERSION = 1

_TITLES = {
    "compute": "Compute law  L(C) = E + A C^-alpha",
    "parametric": "Parametric law  L(N, D) = E + A N^-alpha + B D^-beta",
    "isoflop": "IsoFLOP analysis  mu* = k C^loops_exponent,  D* = k C^tokens_exponent",
    "test_time": "Test-time law  L(T) = L_inf + Z exp(-z T)",
    "unified": "Unified law  L(mu, D, T) = E + A N^-alpha + B D^-beta + Z exp(-z T / mu)",
}


def fits_document(results: list[TableFit], spec: FitSpec) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "spec": to_dict(spec),
        "tables": {r.table.name: _table_entry(r) for r in results},
    }


def _table_entry(result: TableFit) -> dict[str, Any]:
    t = result.table
    return {
        "source": str(t.source),
        "n_runs": len(t.run_id),
        "n_usable": int(t.usable.sum()),
        "excluded": t.excluded,
        "test_time_excluded": t.test_time.excluded if t.test_time else [],
        "notes": t.notes,
        "messages": result.messages,
        "laws": result.laws,
    }


def _clean(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to null."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(_clean(document), indent=1, allow_nan=False) + "\n")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _param_cell(record: dict, name: str) -> str:
    value = record["params"][name]
    ci = record.get("ci95", {}).get(name)
    return f"{_fmt(value)} [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else _fmt(value)


def _law_section(law: str, subsets: dict[str, dict], labels: dict[str, str]) -> list[str]:
    def name(subset: str) -> str:  # per-model fits are keyed by run id; show the trial too
        return f"{labels[subset]} ({subset[:8]})" if subset in labels else subset

    lines = [f"## {_TITLES[law]}", ""]
    ok = {k: r for k, r in subsets.items() if r["status"] == "ok"}
    for subset, record in subsets.items():
        if record["status"] != "ok":
            lines.append(f"- {name(subset)}: {record['status']} ({record['reason']})")
    if not ok:
        return [*lines, ""]
    names = list(next(iter(ok.values()))["params"])
    header = ["fit", "n", *names, "R² / fit", "held-out rel. error", "converged"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for subset, r in ok.items():
        gof = r.get("gof", {})
        r2 = gof.get("r2", gof.get("loops_r2"))
        lines.append("| " + " | ".join([
            name(subset), str(r["n_points"]), *[_param_cell(r, n) for n in names], _fmt(r2),
            _fmt(r.get("heldout_rel_error")), str(r.get("converged", "–")),
        ]) + " |")
    lines += ["", "Values with 95% bootstrap intervals in brackets "
              f"({min(r['n_bootstrap'] for r in ok.values())}+ replicates)."]
    if law == "isoflop":
        record = ok["all"]
        ols = ", ".join(f"{k} {_fmt(v[0])}–{_fmt(v[1])}" for k, v in record["ols_ci95"].items())
        lines += [f"OLS 95% intervals: {ols}.", "", "| budget C | runs | mu* | D* | note |",
                  "|---|---|---|---|---|"]
        for b in record["budgets"]:
            lines.append(f"| {b['flops']:.3g} | {b['n_points']} | {_fmt(b.get('loops_opt'))} | "
                         f"{_fmt(b.get('tokens_opt'))} | {b.get('reason', '')} |")
    flagged = [f for r in ok.values() for f in r.get("overthinking", [])]
    if flagged:
        lines += ["", f"Overthinking: {len(flagged)} curve points rise above their curve's "
                  "minimum (listed in fits.json under `overthinking`):"]
        lines += [f"- {name(f['run_id'])} T={f['T']:g}: {f['val_loss']:.4g}" for f in flagged[:20]]
    return [*lines, ""]


def write_markdown(path: Path, result: TableFit, figures: list[tuple[str, str]],
                   fitted_with: str) -> None:
    t = result.table
    lines = [f"# Fits: {t.name}", "",
             f"Table `{t.source}`: {len(t.run_id)} runs, {int(t.usable.sum())} usable. "
             f"Spec: {fitted_with}. Machine-readable results: `fits.json`.", ""]
    if result.messages or t.notes:
        lines += ["## Notices", "", *[f"- {m}" for m in [*result.messages, *t.notes]], ""]
    if t.excluded:
        lines += ["## Excluded runs", "", "| run | reason |", "|---|---|",
                  *[f"| {e['run_id']} | {e['reason']} |" for e in t.excluded], ""]
    for law, subsets in result.laws.items():
        lines += _law_section(law, subsets, t.labels)
    if figures:
        lines += ["## Figures", ""]
        lines += [f"### {title}\n\n![{title}]({name})\n" for title, name in figures]
    path.write_text("\n".join(lines) + "\n")
