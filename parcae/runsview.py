"""The view a sweep's runs open on in the MLflow UI: columns, sort, charts and run colours.

MLflow 3 keeps the runs table's columns, its sort and the charts of its chart view in the
browser's local storage, where nothing outside the browser can set them, with one exception:
a *shared view*, an experiment tag ``mlflow.sharedViewState.<key>`` holding that state as
JSON, which the UI applies when its URL carries ``viewStateShareKey=<key>`` (it offers to keep
it as the user's own view). A run's colour in tables and charts is its tag
``mlflow.runColor``. Both are written into the store here; :func:`urls` names the view.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

SHARE_TAG = "mlflow.sharedViewState."
SHARE_PARAM = "viewStateShareKey"
COLOUR_TAG = "mlflow.runColor"

#: Loop counts in increasing order take these colours (matplotlib's tab10: the report's PNGs
#: use the same cycle).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")

#: What the runs table shows first, where the runs have it (a metric, else a tag, else a
#: param of that name); the sweep's own axes follow.
MAIN_COLUMNS = ("val_loss", "flops", "loops", "status", "learned", "val_accuracy", "tokens",
                "params", "tokens_per_second")

#: y against x, one scatter each in the chart view (x first), where the runs have both.
SCATTERS = (("flops", "val_loss"), ("flops", "val_accuracy"))

#: Where a run's loop count is, in the order tried.
_LOOPS = (("metrics", "loops"), ("tags", "loops"), ("params", "model.loops"))


@dataclass(frozen=True)
class View:
    """A preset view of one sweep's runs."""

    experiment_id: str
    key: str
    """The share key: ``viewStateShareKey`` in the URL."""
    runs: int
    """Runs the view lists (the sweep's trials, retries included)."""
    coloured: dict[str, str]
    """Loop count -> colour of its runs."""


def share_key(name: str) -> str:
    """A tag-safe share key for the sweep ``name``."""
    return re.sub(r"[^\w.-]", "_", name) or "sweep"


def urls(base: str, view: View, parent_run_id: str | None) -> dict[str, str]:
    """The runs table, the chart view and the sweep's own run (fit numbers) at ``base``."""
    runs = f"{base}/#/experiments/{view.experiment_id}/runs?{SHARE_PARAM}={view.key}"
    out = {"runs": runs, "charts": f"{runs}&compareRunsMode=CHART"}
    if parent_run_id:
        out["sweep run"] = f"{base}/#/experiments/{view.experiment_id}/runs/{parent_run_id}"
    return out


def preset(client: MlflowClient, experiment_id: str, name: str,
           parent_run_id: str | None) -> View:
    """Colour the sweep's runs by loop count and store its view; returns what was stored.

    The runs are the children of ``parent_run_id`` (the whole experiment without one).
    Writing again replaces the view, so it follows metrics that appeared since.
    """
    where = f"tags.mlflow.parentRunId = '{parent_run_id}'" if parent_run_id else ""
    runs = client.search_runs([experiment_id], where, max_results=50000)
    coloured = _colour(client, runs)
    axes = []
    if parent_run_id:
        parent = client.get_run(parent_run_id)
        axes = [k.removeprefix("axes.") for k in sorted(parent.data.params)
                if k.startswith("axes.")]
    key = share_key(name)
    state = view_state(name, where, runs, axes)
    client.set_experiment_tag(experiment_id, SHARE_TAG + key, json.dumps(state))
    return View(experiment_id, key, len(runs), coloured)


def view_state(name: str, where: str, runs: list[Run], axes: Iterable[str]) -> dict[str, Any]:
    """The UI state of the view (the runs page's search facets and UI state, as the MLflow UI
    shares them): ``where`` filters the runs, the table shows :data:`MAIN_COLUMNS` and the
    axes, sorted by val_loss; the chart view opens on :data:`SCATTERS` with every run shown."""
    present = {kind: set().union(*(getattr(r.data, kind) for r in runs))
               for kind in ("metrics", "tags", "params")}
    columns: dict[str, str] = {}
    for column in (*MAIN_COLUMNS, *axes):
        for kind in ("metrics", "tags", "params"):
            if column in present[kind] and column not in columns:
                columns[column] = f"{kind}.`{column}`"
    section = str(uuid.uuid5(uuid.NAMESPACE_URL, f"parcae/{name}"))
    charts = [{"type": "SCATTER", "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"parcae/{name}/{y}")),
               "metricSectionId": section, "displayName": f"{y} vs {x}",
               "xaxis": {"key": x, "type": "METRIC"}, "yaxis": {"key": y, "type": "METRIC"},
               "runsCountToCompare": max(100, len(runs)), "deleted": False, "isGenerated": False}
              for x, y in SCATTERS if {x, y} <= present["metrics"]]
    return {
        "searchFilter": where,
        "orderByKey": "metrics.`val_loss`" if "val_loss" in present["metrics"] else "",
        "orderByAsc": True,
        "selectedColumns": list(columns.values()),
        "columnOrder": list(columns.values()),  # within the table's Metrics and Tags groups
        "runsHiddenMode": "SHOW_ALL",  # the UI's default charts the first 10 runs only
        "compareRunCharts": charts,
        "compareRunSections": [{"uuid": section, "name": f"{name}: compared", "display": True,
                                "isReordered": False, "deleted": False, "isGenerated": False,
                                "columns": 2, "cardHeight": 420}],
        "isAccordionReordered": True,  # keeps this section above the UI's generated ones
        "hideEmptyCharts": True,
    }


def loops_of(run: Run) -> float | None:
    for kind, key in _LOOPS:
        value = getattr(run.data, kind).get(key)
        if value is not None:
            try:
                return float(value)
            except ValueError:
                return None
    return None


def _colour(client: MlflowClient, runs: list[Run]) -> dict[str, str]:
    """Set each run's colour from its loop count; returns loop count -> colour."""
    loops = {r.info.run_id: loops_of(r) for r in runs}
    values = sorted({v for v in loops.values() if v is not None})
    colours = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(values)}
    for run in runs:
        value = loops[run.info.run_id]
        if value is not None and run.data.tags.get(COLOUR_TAG) != colours[value]:
            client.set_tag(run.info.run_id, COLOUR_TAG, colours[value])
    return {f"{v:g}": c for v, c in colours.items()}
