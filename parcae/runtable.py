"""The run table: one row per trial, the contract between sweeps and fits.

This module is the single home of the schema. ``reports/README.md`` documents the same
columns for people; `tests/test_runtable.py` keeps the two in step.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

#: Column name -> one-line meaning. Order is the order written to ``runs.csv``.
COLUMNS: dict[str, str] = {
    "run_id": "MLflow run id of the trial (or a stable local id when untracked)",
    "sweep": "name of the sweep the trial belongs to",
    "trial": "stable trial key derived from the grid point (used to resume)",
    "status": "ok | diverged | failed",
    "seed": "random seed",
    "preset": "model shape preset name",
    "injection": "diagonal | linear | add | none | baseline",
    "params": "unique non-embedding parameters N",
    "params_unrolled": "non-core parameters plus core parameters times loops (effective N)",
    "loops": "mean training recurrence mu_rec",
    "backprop_depth": "loop steps with gradient mu_bwd",
    "tokens": "training tokens D",
    "flops": "training FLOPs C from parcae.compute",
    "val_loss": "validation loss (nats/token) at T = loops",
    "lr": "peak learning rate",
    "max_state_norm": "largest mean state norm ||h_t|| seen in training",
    "final_rel_residual": "||h_T - h_{T-1}|| / ||h_T|| at the last monitored step",
    "rho_A": "spectral radius of the injection's linear part at the end",
    "lipschitz": "local Lipschitz estimate of the recurrent map at the end",
    "diverged_step": "optimizer step at which divergence was detected (empty if none)",
    "diverged_reason": "why the run was stopped as diverged, or the error of a failed run",
    "train_seconds": "wall time spent training",
}

STATUSES = ("ok", "diverged", "failed")

#: Long-form test-time curves: one row per (run, test-time loop count).
TEST_TIME_COLUMNS = ("run_id", "T", "val_loss")


def _cell(value: object) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def append_row(path: Path, row: Mapping[str, object]) -> None:
    """Append one row to a run table, writing the header for a new file.

    Each row is flushed and fsynced on its own so that a sweep killed later loses
    nothing that had finished.
    """
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise KeyError(f"run-table row has unknown columns {sorted(unknown)}")
    _append(path, list(COLUMNS), [row])


def append_test_time(path: Path, run_id: str, curve: Mapping[int, float]) -> None:
    rows = [{"run_id": run_id, "T": t, "val_loss": loss} for t, loss in sorted(curve.items())]
    _append(path, list(TEST_TIME_COLUMNS), rows)


def _append(path: Path, header: list[str], rows: Iterable[Mapping[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in header})
        fh.flush()
        os.fsync(fh.fileno())


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a run table as strings; callers convert the columns they use."""
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))
