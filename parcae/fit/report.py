"""Writing one table's results: fits.json (for scripts) and report.md (for people).

The fits.json format is documented in ``fits/README.md``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from parcae.config import to_dict
from parcae.fit import files, findings, sections, summary
from parcae.fit.pipeline import TableFit
from parcae.fit.spec import FitSpec

FORMAT_VERSION = 2  # 2: status/flags/bounds/group per record, bootstrap.npz


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
        "findings": [f.record() for f in findings.of_fit(result)],
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
    files.write_text(path, json.dumps(_clean(document), indent=1, allow_nan=False) + "\n")


def write_markdown(path: Path, result: TableFit, figures: list[tuple[str, str]],
                   fitted_with: str) -> None:
    t = result.table
    lines = [f"# Fits: {t.name}", "",
             f"Table `{t.source}`: {len(t.run_id)} runs, {int(t.usable.sum())} usable. "
             f"Spec: {fitted_with}. Machine-readable results: `fits.json`.", "",
             *summary.markdown(findings.of_fit(result))]
    if result.messages or t.notes:
        lines += ["## Notices", "", *[f"- {m}" for m in [*result.messages, *t.notes]], ""]
    if t.excluded:
        lines += ["## Excluded runs", "", "| run | reason |", "|---|---|",
                  *[f"| {e['run_id']} | {e['reason']} |" for e in t.excluded], ""]
    for law, subsets in result.laws.items():
        lines += sections.law_section(law, subsets, t.labels)
    missing = getattr(figures, "missing", [])
    if figures or missing:
        lines += ["## Figures", ""]
        lines += [f"### {title}\n\n![{title}]({name})\n" for title, name in figures]
        lines += [f"- Not drawn, {title.lower()}: {why}." for title, why in missing]
    files.write_text(path, "\n".join(lines) + "\n")
