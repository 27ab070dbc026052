"""Findings as people read them: the report's Findings section and the terminal's lines."""

from __future__ import annotations

import math

from parcae.fit.findings import KINDS, Finding
from parcae.fit.study import fmt

RULE = ("A difference is called only when the intervals mean ± std over seeds do not overlap; "
        "otherwise it is said to be within the seed spread.")


def _stability_table(finding: Finding) -> list[list[str]]:
    """Header and rows of the stability table (strings)."""
    columns = finding.numbers["columns"]
    header = [*columns, "outcome", f"final loss ({finding.numbers['unit']})", "max ‖h_T‖",
              "final ρ"]
    rows = [header]
    for cell in finding.numbers["rows"]:
        loss = cell["final_loss"]
        spread = f" ± {fmt(loss['sd'], 2)}" if math.isfinite(loss["sd"]) else ""
        train = " (train)" if cell["loss_column"] == "final_train_loss" else ""
        rows.append([*(f"{cell[c]:g}" if isinstance(cell[c], float) else str(cell[c])
                       for c in columns), cell["outcome"], fmt(loss["mean"], 4) + spread + train,
                     fmt(cell["max_state_norm"]), fmt(cell["rho_A"])])
    return rows


def _grouped(findings: list[Finding]) -> dict[str, list[Finding]]:
    return {kind: [f for f in findings if f.kind == kind] for kind in KINDS
            if any(f.kind == kind for f in findings)}


def markdown(findings: list[Finding]) -> list[str]:
    """The report's Findings section."""
    lines = ["## Findings", "", RULE, ""]
    for kind, mine in _grouped(findings).items():
        lines += [f"**{KINDS[kind]}.**", ""]
        for f in mine:
            lines.append(f"- {f.sentence}")
            if kind == "stability" and f.numbers.get("rows"):
                table = _stability_table(f)
                lines += ["", "| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
                lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
        lines.append("")
    return lines


def terminal(name: str, findings: list[Finding]) -> str:
    """The findings of table ``name`` as plain text, the stability table aligned."""
    lines = [f"Findings: {name}", f"  ({RULE})"]
    for kind, mine in _grouped(findings).items():
        lines.append(f"{KINDS[kind]}:")
        for f in mine:
            lines.append(f"  - {f.sentence}")
            if kind == "stability" and f.numbers.get("rows"):
                table = _stability_table(f)
                widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
                lines += ["    " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                          for r in table]
    return "\n".join(lines)
