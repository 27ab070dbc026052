"""Logging a table's fits to its sweep's MLflow runs, when it has them.

The files go under ``fit/`` in the sweep's parent run, and the numbers become metrics so the
runs table can show and compare them: each fitted parameter as ``fit.<law>.<param>`` with its
95% interval as ``fit.<law>.<param>.lo`` / ``.hi`` (a subset other than ``all`` inserts its
name: ``fit.compute.loops_4.alpha``), and each law's ``fit.<law>.status`` tag (ok | flagged |
skipped | failed) with ``fit.<law>.flags`` (the flags' codes) and ``fit.<law>.reason`` (in
words) where it is not ok: a flagged law's numbers are not results. Test-time laws are fitted
per run, so their numbers go to that run (``fit.test_time.L_inf`` ...), not to the parent.

MLflow keeps every value a metric ever had; the status tag always describes the latest fit.

The fit's files are written before this runs; a tracking server that cannot be reached
costs a few seconds and one line, never the files (MLflow's own HTTP client retries for
minutes, so the server is probed first and retries are turned off).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from parcae.fit.results import TableFit
from parcae.fit.table import SWEEP_FILE
from parcae.tracking import CONNECT_TIMEOUT, sweep_store, unreachable

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: Laws fitted once per run: their numbers belong to the run, not to the sweep.
PER_RUN = ("test_time",)

Numbers = tuple[dict[str, float], dict[str, str]]
"""Metrics and tags for one MLflow run."""


def publish(result: TableFit, files: list[Path], say: Callable[[str], None]) -> None:
    """Log ``files`` and the fits' numbers to the sweep's runs; one line when there are none."""
    table = result.table
    if table.sweep is None or not table.sweep.get("parent_run_id"):
        say(f"{table.name}: no usable {SWEEP_FILE} beside the table; not logged to MLflow.")
        return
    import mlflow  # slow to import; only tracked sweeps need it

    uri = sweep_store(table.sweep, table.folder)
    run_id = table.sweep["parent_run_id"]
    reason = unreachable(uri)
    if reason is not None:
        say(f"{table.name}: tracking server {uri} cannot be reached ({reason}); fits not "
            f"logged to MLflow (the files are written).")
        return
    # it answered: a later failure is reported at once, not retried by MLflow for minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(3 * CONNECT_TIMEOUT)))
    sweep, per_run = numbers(result.laws)
    try:
        client = mlflow.MlflowClient(uri)
        for path in files:
            client.log_artifact(run_id, str(path), artifact_path="fit")
        log_numbers(client, run_id, *sweep)
        children = _children(client, run_id) if per_run else set()
        for child, (metrics, tags) in per_run.items():
            if child in children:
                log_numbers(client, child, metrics, tags)
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        say(f"{table.name}: could not log the fits to MLflow run {run_id} at {uri}: {exc}")
        return
    missing = len(set(per_run) - children)
    note = (f"; {missing} per-run fits name no run of this sweep and were not logged"
            if missing else "")
    say(f"{table.name}: fits logged to MLflow run {run_id} ({uri}): files under fit/, "
        f"{len(sweep[0])} numbers as fit.<law>.<param> metrics, "
        f"{len(per_run) - missing} runs' test-time fits on those runs{note}.")


def numbers(laws: dict[str, dict[str, dict]]) -> tuple[Numbers, dict[str, Numbers]]:
    """The parent run's metrics and tags, and each run's (per-run laws), from fit records."""
    sweep: Numbers = ({}, {})
    per_run: dict[str, Numbers] = {}
    for law, subsets in laws.items():
        for subset, record in subsets.items():
            if law in PER_RUN:
                target, prefix = per_run.setdefault(subset, ({}, {})), f"fit.{law}"
            else:
                target, prefix = sweep, f"fit.{law}" + ("" if subset == "all" else
                                                         f".{subset_key(subset)}")
            _add(record, prefix, *target)
    return sweep, per_run


def subset_key(subset: str) -> str:
    """A subset's name as part of a metric key: ``loops=4`` -> ``loops_4``,
    ``injection=add, frontier`` -> ``injection_add_frontier``."""
    return re.sub(r"[^\w.-]+", "_", subset).strip("_")


def _add(record: dict, prefix: str, metrics: dict[str, float], tags: dict[str, str]) -> None:
    status = record["status"]
    tags[f"{prefix}.status"] = status
    if status == "flagged":
        tags[f"{prefix}.flags"] = ", ".join(dict.fromkeys(f["code"] for f in record["flags"]))
        tags[f"{prefix}.reason"] = "; ".join(f["message"] for f in record["flags"])[:5000]
    elif status in ("skipped", "failed"):
        tags[f"{prefix}.reason"] = str(record.get("reason", ""))[:5000]
    if status not in ("ok", "flagged"):
        return
    ci = record.get("ci95", {})
    for name, value in record["params"].items():
        ends = ci.get(name) or (None, None)
        for key, number in ((name, value), (f"{name}.lo", ends[0]), (f"{name}.hi", ends[1])):
            if number is not None and math.isfinite(number):
                metrics[f"{prefix}.{key}"] = float(number)


def log_numbers(client: MlflowClient, run_id: str, metrics: dict[str, float],
                tags: dict[str, str]) -> None:
    """One batch per MLflow's limits (1000 metrics, 100 tags a call)."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    items = [Metric(k, v, now, 0) for k, v in metrics.items()]
    labels = [RunTag(k, v) for k, v in tags.items()]
    while items or labels:
        client.log_batch(run_id, metrics=items[:1000], tags=labels[:100])
        items, labels = items[1000:], labels[100:]


def _children(client: MlflowClient, parent_run_id: str) -> set[str]:
    experiment = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              max_results=50000)
    return {r.info.run_id for r in runs}
