"""The fits of one table as they are built: records, bootstrap samples, messages.

A record is a plain dict (the fits.json format, documented in ``fits/README.md``). Every
record has ``status`` (ok | flagged | skipped | failed), ``flags`` and ``group``; fitted
ones also ``bounds``. A law with too few points gets ``status: skipped`` and a message
naming the law, the points it needs and the points it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parcae.fit.bootstrap import Job, Workers
from parcae.fit.spec import FitSpec
from parcae.fit.table import TEST_TIME_FILE, Table


@dataclass
class TableFit:
    table: Table
    laws: dict[str, dict[str, dict]] = field(default_factory=dict)
    """law -> subset ("all", "loops=4", "injection=add", a run id, ...) -> record."""
    messages: list[str] = field(default_factory=list)
    """User-facing notices (skipped laws, failures)."""
    samples: dict[tuple[str, str], tuple[tuple[str, ...], np.ndarray]] = field(
        default_factory=dict)
    """(law, subset) -> (parameter names, bootstrap replicates (n_ok, n_params))."""
    findings: list[Any] | None = None
    """The study's findings (``parcae.fit.findings.Finding``), computed once on first use."""

    @property
    def fitted(self) -> int:
        """Records with parameters (identified or flagged)."""
        return sum(r["status"] in ("ok", "flagged") for subsets in self.laws.values()
                   for r in subsets.values())


@dataclass(frozen=True)
class Pending:
    """A record waiting for its bootstrap; ``finish`` completes it when the batch returns."""

    law: str
    subset: str
    record: dict
    job: Job
    names: tuple[str, ...]


@dataclass
class Context:
    """What every law's step reads and adds to."""

    table: Table
    spec: FitSpec
    out: TableFit
    workers: Workers
    pending: list[Pending] = field(default_factory=list)

    def skip(self, law: str, subset: str, reason: str, group: dict | None = None) -> dict:
        record = {"status": "skipped", "reason": reason, "flags": [], "group": group or {}}
        self.out.laws[law][subset] = record
        where = "" if subset == "all" else f" ({subset})"
        self.out.messages.append(f"{self.table.source}: {reason}{where}; skipped.")
        return record

    def too_few(self, law: str, subset: str, needed: int, had: int, unit: str,
                group: dict | None = None) -> dict:
        return self.skip(law, subset, f"{law} law needs at least {needed} {unit}, has {had}",
                         group)

    def no_curves(self, law: str) -> None:
        self.skip(law, "all", f"{law} law needs test-time curves; {TEST_TIME_FILE} is absent "
                  f"or has no usable rows")

    def lacks(self, law: str, needed: tuple[str, ...]) -> bool:
        """Skip ``law`` with a message when a needed column has no values at all."""
        missing = [c for c in ("val_loss", *needed)
                   if not np.isfinite(self.table.columns[c]).any()]
        if not missing:
            return False
        hint = " (flops can be derived from params and tokens)" if "flops" in missing else ""
        self.skip(law, "all", f"{law} law needs the column(s) {', '.join(missing)}{hint}; "
                  f"{self.table.source.name} has no values in them")
        return True

    def failed(self, law: str, subset: str, reason: str, group: dict) -> None:
        self.out.laws[law][subset] = {"status": "failed", "reason": reason, "flags": [],
                                      "group": group}
        self.out.messages.append(f"{self.table.source}: {law} law ({subset}) failed: {reason}")
