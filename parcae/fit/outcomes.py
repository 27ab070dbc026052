"""How runs ended: the stability table (injection × learning rate) and the flagged runs.

Pure functions over run rows (see :mod:`parcae.fit.study`): a run is ok, diverged at a step
by a named rule, collapsed, failed, or trained but learned nothing; every outcome is said
with its reason, and a table that cannot support the stability table says why.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from parcae.fit.study import (
    FAILED,
    Finding,
    Row,
    Stat,
    fmt,
    has,
    label,
    number,
    unavailable,
    unit,
    varying,
)


def outcome(row: Row) -> str:
    """How one run ended, in words: ok, diverged at step s by rule r, collapsed, ..."""
    status = row.get("status") or "ok"
    if status == "diverged":
        rule = row.get("diverged_rule") or row.get("diverged_reason") or "an unrecorded rule"
        step = number(row, "diverged_step")
        return f"diverged at step {step:g} by {rule}" if math.isfinite(step) else (
            f"diverged by {rule}")
    if status == "collapsed":
        return f"collapsed (token correlation {fmt(number(row, 'token_correlation'))})"
    if status == "failed":
        return f"failed ({row.get('diverged_reason') or 'no reason recorded'})"
    if row.get("learned", "").strip().lower() == "false":
        return "learned nothing"
    return status


def stability(runs: list[Row]) -> list[Finding]:
    """Injection × learning rate: outcome, final loss, max ‖h_T‖, final ρ per cell."""
    if not has(runs, "lr") or not any(r.get("injection") for r in runs):
        return [unavailable("stability", "the table has no lr or injection values")]
    rates = sorted({number(r, "lr") for r in runs if math.isfinite(number(r, "lr"))})
    if len(rates) < 2:
        return [unavailable("stability", f"the table has one learning rate ({rates[0]:g}); the "
                            "stability table needs a learning-rate sweep")]
    extras = varying(runs, ("warmup", "grad_clip", "depth_sampling"))
    cells: dict[tuple, list[Row]] = defaultdict(list)
    for r in runs:
        cells[(r.get("injection", ""), number(r, "lr"), *(r.get(c, "") for c in extras))].append(r)
    table = []
    for (injection, lr, *rest), rows in sorted(cells.items()):
        outcomes = [outcome(r) for r in rows]
        table.append({
            "injection": injection, "lr": lr, **dict(zip(extras, rest, strict=True)),
            "outcome": _summary(outcomes), "trained": all(o == "ok" for o in outcomes),
            **_final_loss(rows),
            "max_state_norm": max((number(r, "max_state_norm") for r in rows), default=math.nan),
            "rho_A": Stat.of(number(r, "rho_A") for r in rows).mean, "n_runs": len(rows)})
    per_injection = []
    for injection in dict.fromkeys(c["injection"] for c in table):
        mine = [c for c in table if c["injection"] == injection]
        bad = [c for c in mine if not c["trained"]]
        if not bad:
            per_injection.append(f"{injection} trained at all {len(mine)}")
            continue
        what = "; ".join(f"{_cell_name(c, extras)}: {c['outcome']}" for c in bad)
        per_injection.append(f"{injection} trained at {len(mine) - len(bad)} of {len(mine)} "
                             f"({what})")
    span = f"{rates[0]:g} to {rates[-1]:g}"
    sentence = (f"Over learning rates {span} ({len(rates)} rates"
                + (f", crossed with {', '.join(extras)}" if extras else "") + "): "
                + "; ".join(per_injection) + ".")
    return [Finding("stability", sentence, {"columns": ["injection", "lr", *extras],
                                            "unit": unit(runs), "rows": table})]


def _final_loss(rows: list[Row]) -> dict[str, Any]:
    """Validation loss over seeds, or the last training loss where no run was validated."""
    column = "val_loss" if has(rows, "val_loss") else "final_train_loss"
    return {"final_loss": Stat.of(number(r, column) for r in rows).record(),
            "loss_column": column}


def _summary(outcomes: list[str]) -> str:
    counts = dict.fromkeys(outcomes, 0)
    for o in outcomes:
        counts[o] += 1
    return "; ".join(o if n == 1 else f"{o} (×{n})" for o, n in counts.items())


def _cell_name(cell: dict, extras: list[str]) -> str:
    return f"lr {cell['lr']:g}" + "".join(f", {c} {cell[c]}" for c in extras)



def flagged_runs(runs: list[Row]) -> list[Finding]:
    """Runs that learned nothing, collapsed, diverged or failed, each with its reason."""
    u = unit(runs)
    nothing = [r for r in runs if r.get("learned", "").strip().lower() == "false"]
    stuck = [r for r in nothing if r.get("status") != "collapsed"]  # those are listed below
    out: list[Finding] = []
    if stuck:
        names = ", ".join(f"{label(r)} ({fmt(number(r, 'val_loss'), 4)} vs baseline "
                          f"{fmt(number(r, 'baseline_loss'), 4)} {u})" for r in stuck)
        out = [Finding("runs", f"{len(stuck)} of {len(runs)} runs learned nothing (val loss not "
                       f"below the baseline predictor's by the margin): {names}.",
                       {"learned_nothing": [label(r) for r in stuck]})]
    elif any(r.get("learned") for r in runs) and not nothing:
        judged = sum(bool(r.get("learned")) for r in runs)
        out = [Finding("runs", f"All {judged} runs with a val loss learned (below the baseline "
                       "predictor's by the margin).", {"learned_nothing": []})]
    elif not nothing:
        out = [unavailable("runs", "the table has no `learned` column, so runs that learned "
                           "nothing cannot be told")]
    for status, why in (("collapsed", "token correlation → 1, loss at baseline"),
                        ("diverged", "stopped by a divergence rule"), ("failed", "errors")):
        hit = [r for r in runs if r.get("status") == status]
        if hit:
            names = ", ".join(f"{label(r)} ({outcome(r)})" for r in hit)
            out.append(Finding("runs", f"{len(hit)} of {len(runs)} runs {status} ({why}): "
                               f"{names}.", {status: [label(r) for r in hit]}))
    if not any(r.get("status") in ("collapsed", *FAILED) for r in runs):
        out.append(Finding("runs", f"No run collapsed, diverged or failed ({len(runs)} runs).",
                           {}))
    return out
