"""Loading and validating run tables (runs.csv, test_time.csv) for fitting.

Rows that cannot enter a fit (diverged or failed runs, missing / NaN / non-positive loss)
are kept out with a reason each, never silently. Tables from elsewhere may carry only
``params, tokens, val_loss``: ``loops`` then defaults to 1 and ``flops`` to 6 N D.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from parcae.runtable import STATUSES, TEST_TIME_COLUMNS, read_rows

RUNS_FILE = "runs.csv"
TEST_TIME_FILE = "test_time.csv"
SWEEP_FILE = "sweep.json"

#: Numeric run-table columns the fits and plots read.
NUMERIC = ("params", "params_unrolled", "loops", "tokens", "flops", "val_loss",
           "max_state_norm", "rho_A")


class TableError(Exception):
    """A table that cannot be used at all; the message names the file and the problem."""


@dataclass
class TestTime:
    """Long-form test-time curves of the usable runs."""

    __test__ = False  # not a pytest class despite the name

    run_id: np.ndarray
    T: np.ndarray
    val_loss: np.ndarray
    excluded: list[dict] = field(default_factory=list)


@dataclass
class Table:
    name: str
    folder: Path
    source: Path
    run_id: np.ndarray
    """Run ids (``row<i>`` when the table has no run_id column)."""
    status: np.ndarray
    columns: dict[str, np.ndarray]
    """Numeric columns as floats, NaN where a cell is empty or not a number."""
    present: set[str]
    """Columns the CSV actually has (before defaults were filled in)."""
    usable: np.ndarray
    """Rows that may enter a fit."""
    excluded: list[dict]
    """``{"run_id", "reason"}`` for every row left out of all fits."""
    notes: list[str]
    """What was assumed (defaults, derived columns), for the report."""
    test_time: TestTime | None
    sweep: dict | None
    """Contents of sweep.json when the table came from a tracked sweep."""
    labels: dict[str, str] = field(default_factory=dict)
    """Run id -> the sweep's trial name (``trial`` column), for people reading the report."""

    def rows_for(self, needed: tuple[str, ...]) -> tuple[np.ndarray, list[dict]]:
        """Usable rows with finite positive values in ``needed``, and why others were dropped."""
        mask = self.usable.copy()
        dropped = []
        for name in needed:
            values = self.columns[name]
            bad = mask & ~(np.isfinite(values) & (values > 0))
            dropped += [{"run_id": r, "reason": f"{name} missing or not positive"}
                        for r in self.run_id[bad]]
            mask &= ~bad
        return mask, dropped


def discover(path: Path) -> list[Path]:
    """Run-table CSVs under ``path``: itself, its runs.csv, or each sub-folder's runs.csv."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise TableError(f"{path}: no such file or folder; expected a reports folder holding "
                         f"sub-folders with a {RUNS_FILE}, or one such folder.")
    if (path / RUNS_FILE).exists():
        return [path / RUNS_FILE]
    found = sorted(p / RUNS_FILE for p in path.iterdir() if (p / RUNS_FILE).exists())
    if not found:
        raise TableError(f"{path}: found no {RUNS_FILE} in it or in any sub-folder; expected "
                         f"a reports folder such as reports/ or reports/<sweep>/.")
    return found


def _read(path: Path) -> list[dict[str, str]]:
    try:
        rows = read_rows(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TableError(f"{path}: cannot be read as CSV ({exc}).") from None
    return rows


def _number(cell: str | None) -> float:
    try:
        return float(cell) if cell not in (None, "") else math.nan
    except ValueError:
        return math.nan


def load(source: Path) -> Table:
    """Read and validate one run table (and the test_time.csv and sweep.json beside it)."""
    rows = _read(source)
    header = set(rows[0]) - {None} if rows else set()
    if not rows:
        raise TableError(f"{source}: has no data rows; a run table needs a header and one row "
                         f"per trial with at least the column val_loss.")
    if "val_loss" not in header:
        raise TableError(f"{source}: has no 'val_loss' column (found: {', '.join(sorted(header))})"
                         f"; every law fits val_loss, so nothing can be fitted from this table.")
    n = len(rows)
    notes: list[str] = []
    run_id = np.array([r.get("run_id") or f"row{i}" for i, r in enumerate(rows)], dtype=object)
    status = np.array([(r.get("status") or "ok").strip() for r in rows], dtype=object)
    columns = {c: np.array([_number(r.get(c)) for r in rows]) for c in NUMERIC}
    if "loops" not in header:
        columns["loops"] = np.ones(n)
        notes.append("no 'loops' column: every run taken as unlooped (loops = 1).")
    if "params_unrolled" not in header:
        columns["params_unrolled"] = columns["params"].copy()
        if "loops" in header:
            notes.append("no 'params_unrolled' column: N = params for every run.")
    derived = ~np.isfinite(columns["flops"])
    if derived.any() and {"params", "tokens"} <= header:
        columns["flops"][derived] = 6 * columns["params_unrolled"][derived] * columns["tokens"][
            derived]
        notes.append(f"flops derived as 6 N D for {int(derived.sum())} of {n} runs.")

    excluded = []
    usable = np.ones(n, dtype=bool)
    for i, r in enumerate(rows):
        reason = _exclusion(status[i], r, columns["val_loss"][i])
        if reason:
            usable[i] = False
            excluded.append({"run_id": run_id[i], "reason": reason})
    folder = source.parent
    table = Table(
        name=folder.name, folder=folder, source=source, run_id=run_id, status=status,
        columns=columns, present=header, usable=usable, excluded=excluded, notes=notes,
        test_time=None, sweep=_sweep(folder, notes),
        labels={str(i): r["trial"] for i, r in zip(run_id, rows, strict=True) if r.get("trial")},
    )
    if (folder / TEST_TIME_FILE).exists():
        table.test_time = _test_time(folder / TEST_TIME_FILE, table, notes)
    return table


def _exclusion(status: str, row: dict[str, str], loss: float) -> str | None:
    if status in ("diverged", "failed"):
        why = row.get("diverged_reason") or "no reason recorded"
        return f"{status}: {why}"
    if status not in STATUSES:
        return f"unknown status '{status}' (expected one of {', '.join(STATUSES)})"
    raw = row.get("val_loss")
    if raw in (None, "") or (math.isnan(loss) and raw.strip().lower() != "nan"):
        return f"val_loss missing or not a number ({raw!r})"
    if not math.isfinite(loss):
        return f"val_loss is {raw.strip()}"
    if loss <= 0:
        return f"val_loss is not positive ({loss:g})"
    return None


def _test_time(path: Path, table: Table, notes: list[str]) -> TestTime | None:
    try:
        rows = _read(path)
    except TableError as exc:
        notes.append(f"{exc} Test-time laws skipped.")
        return None
    missing = [c for c in TEST_TIME_COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        notes.append(f"{path}: expected columns {', '.join(TEST_TIME_COLUMNS)} with data rows"
                     f" (missing: {', '.join(missing) or 'rows'}). Test-time laws skipped.")
        return None
    status = dict(zip(table.run_id, table.usable, strict=True))
    keep, excluded = [], []
    for r in rows:
        t, loss = _number(r["T"]), _number(r["val_loss"])
        where = f"{r['run_id']} T={r['T']}"
        if not status.get(r["run_id"], True):
            excluded.append({"run_id": r["run_id"], "T": r["T"], "reason": "run excluded"})
        elif not (math.isfinite(t) and t > 0):
            excluded.append({"run_id": r["run_id"], "T": r["T"], "reason": "T not positive"})
        elif not (math.isfinite(loss) and loss > 0):
            excluded.append({"run_id": r["run_id"], "T": r["T"],
                             "reason": f"val_loss missing, NaN or not positive at {where}"})
        else:
            keep.append((r["run_id"], t, loss))
    ids, ts, losses = zip(*keep, strict=True) if keep else ((), (), ())
    return TestTime(np.array(ids, dtype=object), np.array(ts, dtype=float),
                    np.array(losses, dtype=float), excluded)


def _sweep(folder: Path, notes: list[str]) -> dict | None:
    path = folder / SWEEP_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        notes.append(f"{path}: unreadable ({exc}); results not logged to MLflow.")
        return None
    if not isinstance(data, dict) or not data.get("parent_run_id"):
        notes.append(f"{path}: no parent_run_id; results not logged to MLflow.")
        return None
    return data
