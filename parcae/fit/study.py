"""The study a run table records, as the findings and the paper's plots read it.

A sweep folder holds ``runs.csv`` (one row per trial), ``test_time.csv`` (one row per run and
test-time depth T) and ``stability/<trial>.csv`` (one row per monitored training step). They
are read here as plain rows; columns a table lacks read as missing, never as errors, so every
finding can say what it could not compute. This module also names the roles of Saunshi et al.
(2025) a row plays (looped k⊗L, iso-parameter k⊗1, iso-FLOP kL⊗1) and the seed statistics.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parcae.runtable import read_rows

Row = dict[str, str]

#: Sources tokenized bytewise: their losses are nats per byte.
BYTE_SOURCES = ("austen", "pydoc", "text")

#: Columns that set up a run's conditions (seeds are replicates and are left out).
CONDITIONS = ("source", "preset", "injection", "core_layers", "loops", "effective_depth",
              "depth_sampling", "lr", "warmup", "grad_clip", "tokens", "flops")


#: Statuses of runs that have no validation result.
FAILED = ("diverged", "failed")


@dataclass(frozen=True)
class Finding:
    """One comparison of the study in one sentence, and its numbers."""

    kind: str
    """What it is about: ``depth``, ``stability``, ``test_time``, ``compute`` or ``runs``."""
    sentence: str
    numbers: dict[str, Any] = field(default_factory=dict)
    """The figures of the sentence (``available: false`` when it could not be computed)."""

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "sentence": self.sentence, "numbers": self.numbers}


def unavailable(kind: str, reason: str) -> Finding:
    """A finding the table cannot support, saying why."""
    return Finding(kind, f"Not computed: {reason}.", {"available": False, "reason": reason})


@dataclass(frozen=True)
class Study:
    """One sweep's rows, read once."""

    name: str
    """The table's name (its folder)."""
    folder: Path
    runs: list[Row]
    curves: list[Row]
    """test_time.csv rows (empty when the file is absent)."""
    traces: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """Trial key -> stability trace column -> values per monitored step."""
    limits: dict[str, float] = field(default_factory=dict)
    """Divergence limits the sweep's grid file sets (``max_state_norm``, ``max_state_ratio``,
    ``max_rho``); a limit the grid leaves at the monitor's default is absent."""


def load(source: Path) -> Study:
    """Read runs.csv (``source``) and the test-time rows, traces and grid beside it."""
    folder = source.parent
    runs = read_rows(source)
    curves = read_rows(folder / "test_time.csv") if (folder / "test_time.csv").exists() else []
    traces = {}
    for row in runs:
        path = folder / "stability" / f"{row.get('trial', '')}.csv"
        if row.get("trial") and path.exists():
            traces[row["trial"]] = _trace(path)
    return Study(folder.name, folder, runs, curves, traces, _limits(folder))


def _trace(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = {c for r in rows for c in r if c}
    return {c: np.array([number(r, c) for r in rows]) for c in columns}


def _limits(folder: Path) -> dict[str, float]:
    """The divergence limits in the grid named by sweep.json (the smaller of the sweep's
    ``stop`` rule and the trials' ``monitor`` where both set one)."""
    import yaml

    try:
        grid = Path(json.loads((folder / "sweep.json").read_text())["grid"])
        sweep = yaml.safe_load(grid.read_text())["metadata"]["parcae"]
        stop = sweep.get("stop") or {}
        monitor = (sweep.get("base") or {}).get("monitor") or {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return {}
    out = {}
    for key in ("max_state_norm", "max_state_ratio", "max_rho"):
        found = [number({key: str(v)}, key) for v in (stop.get(key), monitor.get(key))]
        found = [v for v in found if math.isfinite(v)]  # YAML reads 1.0e4 as text
        if found:
            out[key] = min(found)
    return out


def number(row: Row, column: str) -> float:
    """A numeric cell, NaN when empty, absent or not a number."""
    try:
        return float(row.get(column) or "nan")
    except ValueError:
        return math.nan


def label(row: Row) -> str:
    """How a run is named to people: its trial key, else its run id."""
    return row.get("trial") or row.get("run_id") or "?"


def has(rows: Iterable[Row], column: str) -> bool:
    """Whether any row has a number in ``column``."""
    return any(math.isfinite(number(r, column)) for r in rows)


def unit(rows: Iterable[Row]) -> str:
    """The loss unit of the rows: nats/byte for byte-level corpora, nats/token otherwise."""
    sources = {r.get("source") for r in rows} - {None, ""}
    if sources and sources <= set(BYTE_SOURCES):
        return "nats/byte"
    if sources & set(BYTE_SOURCES):
        return "nats/token or nats/byte"
    return "nats/token"


def varying(rows: list[Row], columns: Iterable[str] = CONDITIONS) -> list[str]:
    """Columns of ``columns`` that take more than one value in ``rows``."""
    return [c for c in columns if len({r.get(c, "") for r in rows}) > 1]


def conditions(rows: list[Row], columns: Iterable[str] = CONDITIONS,
               given: tuple[str, ...] = ("loops",)) -> list[str]:
    """Columns that vary among rows sharing the ``given`` columns' values.

    Columns that only follow ``given`` (``depth_sampling`` is always ``fixed`` at loops = 1)
    are not separate conditions and must not split a comparison across ``given``.
    """
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(c, "") for c in given), []).append(r)
    return [c for c in varying(rows, columns)
            if c in given or any(len({r.get(c, "") for r in g}) > 1 for g in groups.values())]


def cell(value: str) -> str:
    """A table cell for a sentence: numbers to 3 significant figures, text as it is."""
    try:
        return f"{float(value):.3g}"
    except ValueError:
        return value


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a sentence: ``digits`` significant figures, "–" when missing."""
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def depth_label(k: float, loops: float) -> str:
    """Saunshi et al.'s notation: k distinct blocks applied ``loops`` times, ``k⊗L``."""
    return f"{k:g}⊗{loops:g}"


def role(row: Row) -> str | None:
    """``looped`` (loops > 1), ``iso-parameter`` (looped, loops = 1) or ``iso-FLOP`` (baseline)."""
    if row.get("injection") == "baseline":
        return "iso-FLOP"
    loops = number(row, "loops")
    if not math.isfinite(loops):
        return None
    return "looped" if loops > 1 else "iso-parameter"


@dataclass(frozen=True)
class Stat:
    """A mean over seeds with its spread."""

    mean: float
    sd: float
    """Sample standard deviation over seeds (NaN with one seed)."""
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        v = np.array([x for x in values if math.isfinite(x)], dtype=float)
        if not len(v):
            return cls(math.nan, math.nan, 0)
        return cls(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v))

    def text(self, digits: int = 3) -> str:
        if self.n > 1:
            return f"{fmt(self.mean, digits)} ± {fmt(self.sd, 2)}"
        return f"{fmt(self.mean, digits)} (1 seed)" if self.n else "–"

    def record(self) -> dict:
        return {"mean": self.mean, "sd": self.sd, "n_seeds": self.n}


def compare(a: Stat, b: Stat, higher_is_better: bool) -> str:
    """``better``, ``worse`` (a against b), ``within`` the seed spread, or ``unjudged``.

    A difference is called only when the intervals mean ± sd of the two do not overlap; with
    one seed on either side there is no spread to judge against.
    """
    if a.n < 2 or b.n < 2 or not (math.isfinite(a.sd) and math.isfinite(b.sd)):
        return "unjudged"
    gap = a.mean - b.mean if higher_is_better else b.mean - a.mean
    if abs(gap) <= a.sd + b.sd:
        return "within"
    return "better" if gap > 0 else "worse"


def spread_note(n_seeds: Iterable[int]) -> str:
    """How the ± of a sentence was computed."""
    counts = sorted(set(n_seeds))
    if not counts or counts == [1]:
        return "one seed each: no seed spread, so no difference is called"
    seeds = "/".join(str(c) for c in counts)
    return f"mean ± std over {seeds} seeds"
