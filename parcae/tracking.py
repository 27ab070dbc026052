"""Where MLflow records go: the one home of the default tracking URI."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from parcae.config import flatten

if TYPE_CHECKING:
    from lightning.pytorch.loggers import MLFlowLogger

    from parcae.run import Result

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


def start_run(cfg: TrackingConfig, name: str, tags: Mapping[str, str],
              config: dict[str, Any]) -> tuple[MlflowClient, str, MLFlowLogger]:
    """Open a run's MLflow entry with its config as params and ``config.yaml``; returns the
    client, the run id and the Lightning logger that writes its training curves."""
    from lightning.pytorch.loggers import MLFlowLogger

    client, run_id = open_run(cfg, name, tags)
    logger = MLFlowLogger(tracking_uri=client.tracking_uri, run_id=run_id)
    logger.log_hyperparams(flatten(config))
    client.log_dict(run_id, config, "config.yaml")
    return client, run_id, logger


def record_result(client: MlflowClient, result: Result, out: Path | None,
                  write_error: str | None = None) -> None:
    """Final metrics, status tag and the result record in the run's MLflow entry.

    A record that could not be written marks the run FAILED with the reason
    (``record_error``), whatever its training status.
    """
    rid = result.run_id
    for t, loss in result.test_time.items():
        client.log_metric(rid, "test_time/loss", loss, step=t)
    for t, accuracy in result.test_time_accuracy.items():
        client.log_metric(rid, "test_time/accuracy", accuracy, step=t)
    finals = {"params": result.params, "params_unrolled": result.params_unrolled,
              "tokens": result.tokens, "flops": result.flops, "train_seconds": result.train_seconds}
    for key in ("val_loss", "val_accuracy", "baseline_loss"):
        if getattr(result, key) is not None:
            finals[key] = getattr(result, key)
    if result.learned is not None:
        finals["learned"] = float(result.learned)
        client.set_tag(rid, "learned", str(result.learned).lower())
    finals.update({f"final/{k}": v for k, v in result.stability.items()
                   if isinstance(v, int | float) and v is not None and math.isfinite(v)})
    for key, value in finals.items():
        client.log_metric(rid, key, float(value))
    client.set_tag(rid, "status", result.status)
    for key in ("diverged_rule", "diverged_reason"):
        if result.stability.get(key):
            client.set_tag(rid, key, str(result.stability[key]))
    if result.error:
        client.set_tag(rid, "error", result.error[:4000])
    if out is not None:
        client.log_artifact(rid, str(out / "result.json"))
    if write_error:  # the record lives on in MLflow
        client.log_dict(rid, asdict(result), "result.json")
        client.set_tag(rid, "record_error", write_error)
    failed = result.status == "failed" or write_error is not None
    client.set_terminated(rid, "FAILED" if failed else "FINISHED")
