"""Logging a table's fit outputs to its sweep's MLflow parent run, when it has one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from parcae.fit.table import SWEEP_FILE, Table
from parcae.tracking import default_tracking_uri


def publish(table: Table, files: list[Path], say: Callable[[str], None]) -> None:
    """Log ``files`` under ``fit/`` in the sweep's parent run; one line when there is none."""
    if table.sweep is None:
        say(f"{table.name}: no usable {SWEEP_FILE} beside the table; not logged to MLflow.")
        return
    import mlflow  # slow to import; only tracked sweeps need it

    uri = table.sweep.get("tracking_uri") or default_tracking_uri(table.folder.parent)
    run_id = table.sweep["parent_run_id"]
    try:
        client = mlflow.MlflowClient(uri)
        for path in files:
            client.log_artifact(run_id, str(path), artifact_path="fit")
    except mlflow.exceptions.MlflowException as exc:
        say(f"{table.name}: could not log the fits to MLflow run {run_id} at {uri}: {exc}")
        return
    say(f"{table.name}: fits logged to MLflow run {run_id} ({uri}) under fit/.")
