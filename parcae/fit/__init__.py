"""Fitting scaling and test-time laws to run tables: ``python -m parcae.fit reports/``.

Call :func:`fit_path` from Python; it does what the command does and returns the results.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from parcae.fit.bootstrap import Workers
    from parcae.fit.pipeline import TableFit
    from parcae.fit.spec import FitSpec

__all__ = ["FitOutcome", "FitSpec", "TableError", "Workers", "fit_path", "fit_table", "load",
           "load_spec"]

#: Names this package exports from its modules, loaded on first use: numpy, scipy and
#: statsmodels load when fitting, so ``python -m parcae.fit --help`` answers at once.
_EXPORTS = {"Workers": "bootstrap", "fit_table": "pipeline", "FitSpec": "spec",
            "load_spec": "spec", "TableError": "table", "discover": "table", "load": "table"}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


@dataclass
class FitOutcome:
    source: Path
    """The runs.csv."""
    result: TableFit | None
    """The fits, or None when the table could not be read."""
    out: Path | None
    """Folder holding fits.json, bootstrap.npz, report.md and the figures."""
    error: str | None = None
    """Why the table could not be used at all."""

    @property
    def fitted(self) -> int:
        return self.result.fitted if self.result else 0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def fit_path(path: Path, spec: FitSpec | None = None, out: Path | None = None, *,
             workers: int | None = None, spec_label: str = "built-in defaults",
             say: Callable[[str], None] = _stderr) -> list[FitOutcome]:
    """Fit every table under ``path``; write fits.json, report.md and PNGs per table.

    ``out`` defaults to each table's own folder; with several tables each gets
    ``out/<name>/``. ``workers`` overrides ``spec.bootstrap.workers``. Raises
    :class:`TableError` when ``path`` holds no table at all.
    """
    from parcae.fit.bootstrap import Workers
    from parcae.fit.spec import FitSpec
    from parcae.fit.table import discover

    spec = spec or FitSpec()
    sources = discover(path)
    with Workers(workers or spec.bootstrap.workers) as pool:
        return [_fit_one(source, spec, out, len(sources) > 1, pool, spec_label, say)
                for source in sources]


def _fit_one(source: Path, spec: FitSpec, out: Path | None, several: bool, pool: Workers,
             spec_label: str, say: Callable[[str], None]) -> FitOutcome:
    from parcae.fit import files, plots, publish, report  # matplotlib and mlflow load only here
    from parcae.fit.pipeline import fit_table
    from parcae.fit.table import TableError, load

    try:
        table = load(source, spec)
    except TableError as exc:
        say(str(exc))
        return FitOutcome(source, None, None, str(exc))
    for note in table.notes:
        say(note)
    result = fit_table(table, spec, pool)
    for message in result.messages:
        say(message)
    folder = table.folder if out is None else (out / table.name if several else out)
    folder.mkdir(parents=True, exist_ok=True)
    figures = plots.draw_all(result, folder)
    files.write_samples(folder / "bootstrap.npz", result.samples)
    report.write_json(folder / "fits.json", report.fits_document([result], spec))
    report.write_markdown(folder / "report.md", result, figures, spec_label)
    flagged = sum(r["status"] == "flagged" for s in result.laws.values() for r in s.values())
    say(f"{table.name}: {result.fitted} fits ({flagged} flagged); wrote "
        f"{folder / 'fits.json'}, bootstrap.npz and report.md")
    written = [folder / "fits.json", folder / "bootstrap.npz", folder / "report.md",
               *[folder / f for _, f in figures]]
    publish.publish(result, written, say)
    return FitOutcome(source, result, folder)
