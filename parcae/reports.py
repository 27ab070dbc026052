"""One sweep's reports folder: its files, its lock, and the records its run table comes from.

Each finished trial leaves a record, ``records/<trial>.json`` (its run-table row, test-time
curve and stability trace), written atomically before anything is appended; the tables are
derived from the records and can be rebuilt from them (``rebuild``). A record that cannot be
written in the folder (it became read-only, the disk is full) is kept in a spool folder under
the user's cache and moved in by the next sweep, so a finished trial is never trained twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from parcae.config import ConfigError
from parcae.runtable import (
    COLUMNS,
    TEST_TIME_COLUMNS,
    append_row,
    append_test_time,
    read_rows,
    repair_tail,
    write_table,
)


def _write_json(path: Path, data: Any) -> None:
    """Atomic and durable: the file is the old one or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        json.dump(data, fh, indent=1, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_trace(path: Path, trace: list[dict[str, float]]) -> None:
    """One row per monitored step; columns are the union of the figures measured."""
    columns = ["step", *sorted({k for r in trace for k in r} - {"step"})]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(path, columns, trace)


class Reports:
    """The files of ``reports/<sweep name>/`` (documented in ``reports/README.md``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def runs(self) -> Path:
        return self.root / "runs.csv"

    @property
    def test_time(self) -> Path:
        return self.root / "test_time.csv"

    @property
    def sweep(self) -> Path:
        return self.root / "sweep.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "sweep.lock"

    @property
    def ray_pids(self) -> Path:
        """PIDs of the running sweep's embedded Ray (see ``parcae.embedded``)."""
        return self.root / "ray_pids.json"

    def trace(self, key: str) -> Path:
        return self.root / "stability" / f"{key}.csv"

    def record(self, key: str) -> Path:
        return self.root / "records" / f"{key}.json"

    @property
    def spool(self) -> Path:
        """Where records go while this folder cannot be written (outside it)."""
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]
        return cache / "parcae" / "spool" / digest

    def finished(self) -> set[str]:
        """Trial keys that already have a row (kept, never re-run)."""
        return {r["trial"] for r in read_rows(self.runs)} if self.runs.exists() else set()

    def read_sweep(self) -> dict[str, Any]:
        return json.loads(self.sweep.read_text()) if self.sweep.exists() else {}

    def write_sweep(self, info: dict[str, Any]) -> None:
        _write_json(self.sweep, info)

    @contextlib.contextmanager
    def lock(self) -> Iterator[str | None]:
        """Hold the folder for one sweep; yields a message when a dead sweep's lock is taken.

        The lock is the kernel's (``flock``), released when its holder dies however it dies;
        the file names the holder for the message a second sweep prints.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+") as fh:
            old = fh.read().strip()
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = json.loads(old) if old.startswith("{") else {}
                raise ConfigError("--reports", f"{self.root} is in use by the sweep of PID "
                                  f"{holder.get('pid', '?')} on host {holder.get('host', '?')} "
                                  f"(started {holder.get('started', '?')}); wait for it to "
                                  "end or stop it") from None
            holder = json.loads(old) if old.startswith("{") else None
            message = (f"took over the lock of the sweep of PID {holder.get('pid')} on host "
                       f"{holder.get('host')}, which ended without releasing it"
                       if holder else None)
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
            fh.flush()
            try:
                yield message
            finally:
                fh.seek(0)
                fh.truncate()  # an empty lock file: released cleanly

    def save(self, key: str, record: dict[str, Any]) -> None:
        """Record a finished trial: its record first, then its curve, trace and row.

        A row therefore always has its record; a record without a row (a crash in between)
        gets its row from ``reconcile``. Raises OSError when the folder cannot be written.
        """
        _write_json(self.record(key), record)
        self._tables(key, record)

    def _tables(self, key: str, record: dict[str, Any]) -> None:
        row = record["row"]
        if record.get("test_time"):
            append_test_time(self.test_time, row["run_id"], dict(record["test_time"]),
                             dict(record.get("test_time_accuracy") or []))
        if record.get("trace"):
            _write_trace(self.trace(key), record["trace"])
        append_row(self.runs, row)

    def spool_record(self, key: str, record: dict[str, Any]) -> Path:
        path = self.spool / f"{key}.json"
        _write_json(path, {"reports": str(self.root.resolve()), **record})
        return path

    def reconcile(self) -> list[str]:
        """Repair and complete the folder before a sweep; returns what was done, in words.

        A partial last line of a table is cut off (its trial re-runs unless it has a record);
        spooled records are moved in; a record without a row gets its row.
        """
        notes = []
        for table in (self.runs, self.test_time):
            cut = repair_tail(table)
            if cut is not None:
                notes.append(f"{table}: removed a partial last line ({cut[:60]!r}...); "
                             "the trial it belonged to is recorded again or re-runs")
        if self.spool.is_dir():
            for path in sorted(self.spool.glob("*.json")):
                record = json.loads(path.read_text())
                record.pop("reports", None)
                _write_json(self.record(record["row"]["trial"]), record)
                path.unlink()
                notes.append(f"moved the record of {record['row']['trial']} in from {path}")
            with contextlib.suppress(OSError):
                self.spool.rmdir()
        rows = self.finished()
        for key, record in self.records().items():
            if key not in rows:
                self._tables(key, record)
                notes.append(f"wrote the row of {key} from its record")
        return notes

    def records(self) -> dict[str, dict[str, Any]]:
        """Every trial record in the folder, oldest first."""
        folder = self.root / "records"
        found = [json.loads(p.read_text()) for p in folder.glob("*.json")] \
            if folder.is_dir() else []
        return {r["row"]["trial"]: r for r in sorted(found, key=lambda r: r.get("written", 0))}

    def rebuild(self) -> list[str]:
        """Write ``runs.csv``, ``test_time.csv`` and the traces anew from the records.

        Rows and curves of trials without a record (written before records existed) are kept.
        """
        records = self.records()
        old = [r for r in read_rows(self.runs) if r["trial"] not in records] \
            if self.runs.exists() else []
        kept_ids = {r["run_id"] for r in old}
        curves = [r for r in read_rows(self.test_time) if r["run_id"] in kept_ids] \
            if self.test_time.exists() else []
        for record in records.values():
            row = record["row"]
            accuracy = dict(record.get("test_time_accuracy") or [])
            curves += [{"run_id": row["run_id"], "T": t, "val_loss": loss,
                        "val_accuracy": accuracy.get(t)}
                       for t, loss in sorted(record.get("test_time") or [])]
            if record.get("trace"):
                _write_trace(self.trace(row["trial"]), record["trace"])
        self.root.mkdir(parents=True, exist_ok=True)
        write_table(self.runs, list(COLUMNS), [*old, *(r["row"] for r in records.values())])
        write_table(self.test_time, list(TEST_TIME_COLUMNS), curves)
        return [f"{self.runs}: {len(records)} rows from records"
                + (f", {len(old)} rows without a record kept" if old else "")]
