"""Where MLflow records go: the one home of the default tracking URI."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

#: Reports folder used when the user names none (relative to the working directory).
DEFAULT_REPORTS = Path("reports")


def default_tracking_uri(reports: Path = DEFAULT_REPORTS) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store under ``reports/``.

    The path is made absolute because Ray trials run in their own working directory.
    MLflow 3 refuses its plain file store by default, hence SQLite.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    db = (reports / "mlflow.db").resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


@dataclass(frozen=True)
class TrackingConfig:
    """Where and how a run is recorded in MLflow."""

    enabled: bool = True
    """Record the run in MLflow."""
    experiment: str = "parcae"
    """MLflow experiment name."""
    uri: str | None = None
    """Tracking URI; default MLFLOW_TRACKING_URI, else SQLite under reports/."""
    parent_run_id: str | None = None
    """Parent run (a sweep); the run is nested under it in the UI."""


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage != "deleted":
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created meanwhile by a concurrent trial
        return client.get_experiment_by_name(name).experiment_id


def open_run(cfg: TrackingConfig, name: str, tags: Mapping[str, str]) -> tuple[MlflowClient, str]:
    """Create a run (nested under ``cfg.parent_run_id`` if set) and return its client and id."""
    uri = cfg.uri or default_tracking_uri()
    client = client_for(uri)
    all_tags = {"mlflow.runName": name, **tags}
    if cfg.parent_run_id:
        all_tags["mlflow.parentRunId"] = cfg.parent_run_id
    run = client.create_run(experiment_id(client, cfg.experiment), tags=all_tags)
    return client, run.info.run_id


def close_open_children(client: MlflowClient, parent_run_id: str, status: str,
                        reason: str) -> list[str]:
    """End every child run of a sweep still marked RUNNING, saying why; returns their ids.

    Nothing of a sweep runs once it ends: a child still RUNNING belongs to a worker that died
    (its trial was retried or abandoned) or to a sweep that was killed.
    """
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id], max_results=10000,
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and "
                      "attributes.status = 'RUNNING'")
    for run in runs:
        client.set_tag(run.info.run_id, "status", "failed" if status == "FAILED" else "killed")
        client.set_tag(run.info.run_id, "error", reason)
        client.set_terminated(run.info.run_id, status)
    return [r.info.run_id for r in runs]
