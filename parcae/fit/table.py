"""Loading and validating run tables (runs.csv, test_time.csv) for fitting.

Rows that cannot enter a fit (diverged, failed or collapsed runs, runs that did not learn,
missing / NaN / non-positive loss) are kept out with a reason each, never silently. Tables
from elsewhere may carry only ``params, tokens, val_loss``: ``loops`` then defaults to 1 and
``flops`` to 6 N D. A folder may also hold a test_time.csv alone (test-time laws only).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from parcae.fit import curves
from parcae.fit.curves import TestTime
from parcae.fit.spec import FitSpec, RunsSpec, TestTimeSpec
from parcae.runtable import STATUSES, read_rows

RUNS_FILE = "runs.csv"
TEST_TIME_FILE = "test_time.csv"
SWEEP_FILE = "sweep.json"

#: Numeric run-table columns the fits and plots read.
NUMERIC = ("params", "params_unrolled", "loops", "tokens", "flops", "val_loss",
           "max_state_norm", "rho_A", "val_accuracy", "baseline_loss", "core_layers",
           "effective_depth", "warmup", "grad_clip")


class TableError(Exception):
    """A table that cannot be used at all; the message names the file and the problem."""


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
    cells: dict[str, np.ndarray] = field(default_factory=dict)
    """Every column of the CSV as stripped strings (setting columns for like-with-like groups,
    ``source``, ``injection``, ``learned``, ...)."""

    def rows_for(self, needed: tuple[str, ...]) -> tuple[np.ndarray, list[dict]]:
        """Usable rows with finite positive values in ``needed`` and ``val_loss``, and why
        others were dropped."""
        mask = self.usable.copy()
        dropped = []
        for name in ("val_loss", *needed):
            values = self.columns[name]
            bad = mask & ~(np.isfinite(values) & (values > 0))
            dropped += [{"run_id": r, "reason": f"{name} missing or not positive"}
                        for r in self.run_id[bad]]
            mask &= ~bad
        return mask, dropped


def discover(path: Path) -> list[Path]:
    """Tables under ``path``: itself, its runs.csv (else its test_time.csv), or each
    sub-folder's."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise TableError(f"{path}: no such file or folder; expected a reports folder holding "
                         f"sub-folders with a {RUNS_FILE}, or one such folder.")
    if _table_in(path):
        return [_table_in(path)]  # type: ignore[list-item]
    found = sorted(t for p in path.iterdir() if p.is_dir() and (t := _table_in(p)))
    if not found:
        raise TableError(f"{path}: found no {RUNS_FILE} in it or in any sub-folder; expected "
                         f"a reports folder such as reports/ or reports/<sweep>/.")
    return found


def _table_in(folder: Path) -> Path | None:
    for name in (RUNS_FILE, TEST_TIME_FILE):
        if (folder / name).exists():
            return folder / name
    return None


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


def _check_numeric(rows: list[dict[str, str]], run_id: np.ndarray, source: Path) -> None:
    """A numeric cell holding text is an error, never a silent gap (flops would be
    replaced by 6 N D, a loss dropped as missing)."""
    for i, r in enumerate(rows):
        for c in NUMERIC:
            cell = (r.get(c) or "").strip()
            if cell and math.isnan(_number(cell)) and cell.lower() != "nan":
                raise TableError(f"{source}: row {i + 2} (run {run_id[i]}), column '{c}': "
                                 f"{cell!r} is not a number; fix the cell or leave it empty.")


def load(source: Path, spec: FitSpec | None = None) -> Table:
    """Read and validate one run table (and the test_time.csv and sweep.json beside it).

    ``source`` may be a test_time.csv alone: the table then has one row per curve and only
    the test-time law can be fitted.
    """
    spec = spec or FitSpec()
    if source.name == TEST_TIME_FILE:
        return _curves_alone(source, spec.test_time)
    notes: list[str] = []
    rows = _dedup(_read(source), source, spec.runs, notes)
    header = set(rows[0]) - {None} if rows else set()
    if not rows:
        raise TableError(f"{source}: has no data rows; a run table needs a header and one row "
                         f"per trial with at least the column val_loss.")
    if "val_loss" not in header:
        raise TableError(f"{source}: has no 'val_loss' column (found: {', '.join(sorted(header))})"
                         f"; every law fits val_loss, so nothing can be fitted from this table.")
    n = len(rows)
    run_id = np.array([r.get("run_id") or f"row{i}" for i, r in enumerate(rows)], dtype=object)
    status = np.array([(r.get("status") or "ok").strip() for r in rows], dtype=object)
    _check_numeric(rows, run_id, source)
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
        reason = _exclusion(status[i], r, columns["val_loss"][i], spec.runs)
        if reason:
            usable[i] = False
            excluded.append({"run_id": run_id[i], "reason": reason})
    folder = source.parent
    table = Table(
        name=folder.name, folder=folder, source=source, run_id=run_id, status=status,
        columns=columns, present=header, usable=usable, excluded=excluded, notes=notes,
        test_time=None, sweep=_sweep(folder, notes),
        labels={str(i): r["trial"] for i, r in zip(run_id, rows, strict=True) if r.get("trial")},
        cells={c: np.array([(r.get(c) or "").strip() for r in rows], dtype=object)
               for c in header},
    )
    if (folder / TEST_TIME_FILE).exists():
        table.test_time = _test_time(folder / TEST_TIME_FILE, table, spec.test_time)
    return table


def _dedup(rows: list[dict[str, str]], source: Path, runs: RunsSpec, notes: list[str]
           ) -> list[dict[str, str]]:
    ids = [r.get("run_id") for r in rows if r.get("run_id")]
    repeated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if not repeated:
        return rows
    shown = ", ".join(repeated[:10]) + (" ..." if len(repeated) > 10 else "")
    if runs.duplicates == "error":
        raise TableError(f"{source}: {len(repeated)} run_id(s) appear more than once ({shown}); "
                         f"remove the repeats or fit with --set runs.duplicates=last to keep "
                         f"each id's last row.")
    last = {r.get("run_id"): i for i, r in enumerate(rows)}
    kept = [r for i, r in enumerate(rows) if not r.get("run_id") or last[r["run_id"]] == i]
    notes.append(f"{source}: kept the last row of each repeated run_id ({shown}); "
                 f"{len(rows) - len(kept)} earlier row(s) dropped.")
    return kept


def _exclusion(status: str, row: dict[str, str], loss: float, runs: RunsSpec) -> str | None:
    if status in ("diverged", "failed"):
        why = row.get("diverged_rule") or row.get("diverged_reason") or "no reason recorded"
        return f"{status}: {why}"
    if status == "collapsed" and not runs.include_collapsed:
        return ("collapsed: the state collapsed to one token and the loss stayed at the "
                "baseline (fit them with --set runs.include_collapsed=true)")
    if status not in (*STATUSES, "collapsed"):
        return f"unknown status '{status}' (expected one of {', '.join(STATUSES)})"
    if (row.get("learned") or "").strip().lower() == "false" and not runs.include_not_learned:
        return (f"not learned: val_loss not below the baseline predictor's "
                f"{row.get('baseline_loss') or '?'} (fit them with "
                f"--set runs.include_not_learned=true)")
    raw = row.get("val_loss")
    if raw in (None, "") or (math.isnan(loss) and raw.strip().lower() != "nan"):
        return f"val_loss missing or not a number ({raw!r})"
    if not math.isfinite(loss):
        return f"val_loss is {raw.strip()}"
    if loss <= 0:
        return f"val_loss is not positive ({loss:g})"
    return None


def _test_time(path: Path, table: Table, spec: TestTimeSpec) -> TestTime | None:
    try:
        rows = _read(path)
    except TableError as exc:
        table.notes.append(f"{exc} Test-time laws skipped.")
        return None
    usable = {str(r): bool(u) for r, u in zip(table.run_id, table.usable, strict=True)}
    return curves.read(rows, path, usable, spec.metric, spec.transform, table.notes)


def _curves_alone(source: Path, spec: TestTimeSpec) -> Table:
    notes = [f"no {RUNS_FILE}: only the test-time law can be fitted from {source.name}."]
    test_time = curves.read(_read(source), source, None, spec.metric, spec.transform, notes)
    if test_time is None:
        raise TableError(notes[-1])
    ids = np.array(list(dict.fromkeys(test_time.run_id)), dtype=object)
    n = len(ids)
    folder = source.parent
    return Table(name=folder.name, folder=folder, source=source, run_id=ids,
                 status=np.array(["ok"] * n, dtype=object),
                 columns={c: np.full(n, math.nan) for c in NUMERIC}, present=set(),
                 usable=np.ones(n, dtype=bool), excluded=[], notes=notes, test_time=test_time,
                 sweep=None, cells={"run_id": ids})


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
