"""Like-with-like groups: which runs a law may be fitted to together.

A table may mix injections, learning rates, data sources, batch sizes, depth-sampling
schemes, ... . With ``group_by: auto`` a law is fitted once per combination of the setting
columns that vary among its rows and are not its own variables. Seeds are replicates, never
groups. Model-shape columns (preset, widths, layer counts) are how N varies, so they are
the size variables of every run-level law rather than groups. The untied ``baseline``
(injection ``baseline``) is always its own group, even when the spec names other columns.
"""

from __future__ import annotations

import numpy as np

from parcae.fit.table import Table

#: Setting columns that make runs unlike (auto grouping looks only at these).
SETTINGS = ("source", "injection", "lr", "batch_size", "seq_len", "backprop_depth",
            "depth_sampling", "warmup", "grad_clip")

#: Each law's own variables: never grouped by (the law describes how loss varies with them).
VARIABLES = {
    "compute": ("flops", "tokens", "params", "params_unrolled", "loops"),
    "parametric": ("params", "params_unrolled", "tokens", "flops", "loops"),
    "isoflop": ("params", "params_unrolled", "tokens", "flops", "loops"),
    "unified": ("params", "params_unrolled", "tokens", "flops", "loops"),
    "test_time": (),
}

#: Settings a run derives from its loop count by default (loops = 1 is one fixed step;
#: mu_bwd = ceil(loops / 2)): when they only follow ``loops`` they are not a separate setting.
FOLLOW_LOOPS = ("depth_sampling", "backprop_depth")

BASELINE = "baseline"


def _follows_loops(table: Table, column: str, mask: np.ndarray) -> bool:
    """True when every loop count among the rows has one value of ``column``."""
    loops = table.cells.get("loops")
    if column not in FOLLOW_LOOPS or loops is None:
        return False
    pairs = set(zip(loops[mask], table.cells[column][mask], strict=True))
    return len(pairs) == len({lp for lp, _ in pairs})


def columns(table: Table, law: str, mask: np.ndarray, group_by: str | tuple[str, ...]
            ) -> tuple[str, ...]:
    """The columns ``law`` is grouped by among the rows in ``mask``."""
    if group_by == "none":
        chosen: tuple[str, ...] = ()
    elif group_by == "auto":
        chosen = tuple(c for c in SETTINGS if c in table.cells and c not in VARIABLES[law]
                       and len(set(table.cells[c][mask])) > 1
                       and not ("loops" in VARIABLES[law] and _follows_loops(table, c, mask)))
    else:
        chosen = tuple(group_by)
    injection = table.cells.get("injection")
    if ("injection" not in chosen and injection is not None
            and BASELINE in set(injection[mask]) and len(set(injection[mask])) > 1):
        chosen = (*chosen, "injection")  # baseline never pooled with looped runs
    return chosen


def split(table: Table, law: str, mask: np.ndarray, group_by: str | tuple[str, ...]
          ) -> list[tuple[dict[str, str], np.ndarray]]:
    """(group, rows) per like-with-like group of the rows in ``mask``; group is ``{}`` when
    the rows form one group. Raises KeyError naming a spec column the table lacks."""
    cols = columns(table, law, mask, group_by)
    missing = [c for c in cols if c not in table.cells]
    if missing:
        raise KeyError(f"group_by names column(s) {', '.join(missing)} that "
                       f"{table.source.name} does not have")
    if not cols:
        return [({}, mask)]
    keys = [tuple(table.cells[c][i] or "-" for c in cols) for i in range(len(mask))]
    out = []
    for key in dict.fromkeys(k for k, m in zip(keys, mask, strict=True) if m):
        rows = mask & np.array([k == key for k in keys])
        out.append((dict(zip(cols, key, strict=True)), rows))
    return out


def name(group: dict[str, str], *extra: str) -> str:
    """Subset key: ``all`` for the single group, else ``col=value, ...`` (plus ``extra``)."""
    parts = [f"{c}={v}" for c, v in group.items()] + list(extra)
    return ", ".join(parts) if parts else "all"


def of_run(table: Table, run: str, group_by: str | tuple[str, ...]) -> dict[str, str]:
    """The group of one run under the run-level laws' grouping (for per-run records)."""
    i = int(np.flatnonzero(table.run_id == run)[0])
    cols = columns(table, "unified", table.usable, group_by)
    return {c: table.cells[c][i] for c in cols if c in table.cells}
