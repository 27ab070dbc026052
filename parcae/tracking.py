"""Where MLflow records go and what they hold: the one home of the default tracking URI.

MLflow is imported only inside functions: the CLIs answer ``--help`` without it.
"""

from __future__ import annotations

import contextlib
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parcae.config import ConfigError, flatten, to_dict

if TYPE_CHECKING:
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow import MlflowClient

    from parcae.run import Plan, Result

#: MLflow reports usage (and writes ``~/.config/mlflow/telemetry.json``) when imported unless
#: told not to; like Ray's usage stats, it is off in every process parcae starts. The user's
#: own setting wins.
TELEMETRY_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true"}
for _key, _value in TELEMETRY_ENV.items():
    os.environ.setdefault(_key, _value)

#: Experiment of single runs (``python -m parcae.train``) that name none; a sweep's trials go
#: to the experiment named after the sweep.
TRAIN_EXPERIMENT = "parcae-train"

#: Seconds to wait for a tracking server before giving up (MLflow itself retries for minutes).
CONNECT_TIMEOUT = 5.0

#: Reports folder used when the user names none (relative to the working directory).
DEFAULT_REPORTS = Path("reports")


#: The SQLite store's file name in a reports folder.
STORE = "mlflow.db"


def default_tracking_uri(reports: Path = DEFAULT_REPORTS) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store under ``reports/``.

    The path is made absolute because Ray trials run in their own working directory.
    MLflow 3 refuses its plain file store by default, hence SQLite.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    db = (reports / STORE).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def sweep_store(sweep: Mapping[str, Any], folder: Path) -> str:
    """The tracking URI that holds the sweep whose reports are in ``folder``.

    ``sweep.json`` names the store the sweep wrote to. When the reports were copied away from
    it (``ray rsync-down`` from a cluster's head, a moved folder), the store copied beside them
    (``folder/mlflow.db`` or ``folder/../mlflow.db``) that holds the sweep's parent run is read
    instead: the recorded server or path is gone or belongs to another machine.
    """
    uri = sweep.get("tracking_uri") or default_tracking_uri(folder.parent)
    if uri.startswith("sqlite:///") and Path(uri.removeprefix("sqlite:///")).is_file():
        return uri
    for copy in (folder / STORE, folder.parent / STORE):
        if copy.is_file() and _holds_run(copy, sweep.get("parent_run_id")):
            return f"sqlite:///{copy.resolve()}"
    return uri


def _holds_run(db: Path, run_id: str | None) -> bool:
    """Whether the SQLite store ``db`` has run ``run_id`` (any store, without an id)."""
    import sqlite3

    if run_id is None:
        return True
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return con.execute("SELECT 1 FROM runs WHERE run_uuid = ?", (run_id,)).fetchone() \
                is not None
    except sqlite3.Error:  # not an MLflow store
        return False


def open_hint(uri: str, run_id: str | None = None) -> str:
    """How a user opens ``uri`` in the MLflow UI: the ``python -m parcae.ui`` command for a
    store in a reports folder, the run's page on a server, else MLflow's own command."""
    if uri.startswith(("http://", "https://")):
        if run_id is None:
            return uri
        experiment = client_for(uri).get_run(run_id).info.experiment_id
        return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
    db = Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("sqlite:///") and db.name == "mlflow.db":
        folder = db.parent
        with contextlib.suppress(ValueError):  # shorter when under the working directory
            folder = folder.relative_to(Path.cwd())
        return f"python -m parcae.ui {folder}"
    return f"python -m mlflow ui --backend-store-uri {uri}"


@dataclass(frozen=True)
class TrackingConfig:
    """Where and how a run is recorded in MLflow."""

    enabled: bool = True
    """Record the run in MLflow."""
    experiment: str | None = None
    """MLflow experiment name; default the sweep's name for a sweep's trials, else
    ``parcae-train``."""
    uri: str | None = None
    """Tracking URI; default MLFLOW_TRACKING_URI, else SQLite under reports/."""
    parent_run_id: str | None = None
    """Parent run (a sweep); the run is nested under it in the UI."""


def client_for(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def unreachable(uri: str) -> str | None:
    """Why the tracking server at ``uri`` does not answer within ``CONNECT_TIMEOUT``, else None.

    Only http(s) URIs name a server; a SQLite or file store is created on first use.
    """
    if not uri.startswith(("http://", "https://")):
        return None
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=CONNECT_TIMEOUT):
            return None
    except urllib.error.HTTPError:  # it answers: a server, perhaps behind a proxy
        return None
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc)) or type(exc).__name__


def check_reachable(uri: str, key: str = "tracking.uri") -> None:
    """Refuse, within seconds, a tracking server that does not answer (before any training)."""
    reason = unreachable(uri)
    if reason is not None:
        raise ConfigError(key, f"MLflow tracking server {uri} is unreachable ({reason}); start "
                          "it or point MLFLOW_TRACKING_URI elsewhere")


def artifact_location(uri: str) -> str | None:
    """Where a SQLite store's artifacts go: ``mlartifacts/`` beside the database (MLflow's
    default is ``./mlruns`` in whatever directory the run started from). A server decides
    for itself (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of the experiment ``name``, created (artifacts beside a SQLite store) if new."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage != "deleted":
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(
            client.tracking_uri))
    except MlflowException:  # created meanwhile by a concurrent trial
        return client.get_experiment_by_name(name).experiment_id


def open_run(cfg: TrackingConfig, name: str, tags: Mapping[str, str]) -> tuple[MlflowClient, str]:
    """Create a run (nested under ``cfg.parent_run_id`` if set) and return its client and id."""
    uri = cfg.uri or default_tracking_uri()
    client = client_for(uri)
    all_tags = {"mlflow.runName": name, **tags}
    if cfg.parent_run_id:
        all_tags["mlflow.parentRunId"] = cfg.parent_run_id
    experiment = experiment_id(client, cfg.experiment or TRAIN_EXPERIMENT)
    run = client.create_run(experiment, tags=all_tags)
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


def _applies(key: str, source: str, sources: tuple[str, ...]) -> bool:
    """Whether a ``data.*`` setting means anything for ``source``: the ``<source>_*`` family
    of settings (``addition_digits``, ``phop_hops``, ...) belongs to that source alone."""
    name = key.removeprefix("data.")
    if name == "token_dtype":
        return source == "tokens"
    family = name.split("_", 1)[0]
    return family not in sources or family == source


def run_params(plan: Plan) -> dict[str, Any]:
    """The MLflow params of a run: its resolved config (preset-filled shape, the data's
    vocabulary, ``backprop_depth`` = mu_bwd), without unset keys or data settings of other
    sources, so runs of one sweep compare column by column."""
    from parcae.data import DataConfig

    sources = typing.get_args(typing.get_type_hints(DataConfig)["source"])
    model = plan.model
    config = to_dict(plan.cfg)
    config["model"] = {**to_dict(model), "backprop_depth": model.mu_bwd if model.looped else 1}
    return {k: v for k, v in flatten(config).items() if v is not None
            and (not k.startswith("data.") or _applies(k, plan.cfg.data.source, sources))}


def start_run(cfg: TrackingConfig, name: str, tags: Mapping[str, str],
              plan: Plan) -> tuple[MlflowClient, str, MLFlowLogger]:
    """Open a run's MLflow entry with its resolved settings as params and the config as given
    in ``config.yaml``; returns the client, the run id and the Lightning logger that writes its
    training curves."""
    client, run_id = open_run(cfg, name, tags)
    from lightning.pytorch.loggers import MLFlowLogger

    logger = MLFlowLogger(tracking_uri=client.tracking_uri, run_id=run_id)
    logger.log_hyperparams(run_params(plan))
    client.log_dict(run_id, to_dict(plan.cfg), "config.yaml")
    return client, run_id, logger


def record_result(client: MlflowClient, result: Result, out: Path | None,
                  write_error: str | None = None) -> None:
    """Final metrics, status tag and the result record in the run's MLflow entry.

    The figures runs are compared by are metrics (val_loss, val_accuracy, learned, loops,
    flops: the runs table sorts by them) and, but flops, tags too (status and learned to filter
    by; loops and the axes are tags from the start).

    A record that could not be written marks the run FAILED with the reason
    (``record_error``), whatever its training status.
    """
    rid = result.run_id
    for t, loss in result.test_time.items():
        client.log_metric(rid, "test_time/loss", loss, step=t)
    for t, accuracy in result.test_time_accuracy.items():
        client.log_metric(rid, "test_time/accuracy", accuracy, step=t)
    finals = {"params": result.params, "params_unrolled": result.params_unrolled,
              "tokens": result.tokens, "flops": result.flops, "train_seconds": result.train_seconds,
              "loops": result.design.get("loops")}
    for key in ("val_loss", "val_accuracy", "baseline_loss"):
        if getattr(result, key) is not None:
            finals[key] = getattr(result, key)
            client.set_tag(rid, key, f"{getattr(result, key):.6g}")
    if result.learned is not None:
        finals["learned"] = float(result.learned)
        client.set_tag(rid, "learned", str(result.learned).lower())
    finals.update({f"final/{k}": v for k, v in result.stability.items()
                   if isinstance(v, int | float) and v is not None and math.isfinite(v)})
    data = result.config["data"]
    # at the last training step: "tokens" and "flops" are also curves (logged every
    # log_every steps), and the runs table shows a metric's value at its highest step
    last = result.tokens // (data["batch_size"] * data["seq_len"])
    for key, value in finals.items():
        if value is not None:
            client.log_metric(rid, key, float(value), step=last)
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
