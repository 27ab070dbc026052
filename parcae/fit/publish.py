"""Logging a table's fit outputs to its sweep's MLflow parent run, when it has one.

The fit's files are written before this runs; a tracking server that cannot be reached
costs a few seconds and one line, never the files (MLflow's own HTTP client retries for
minutes, so the server is probed first and retries are turned off).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

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
    unreachable = _unreachable(uri)
    if unreachable:
        say(f"{table.name}: tracking server {uri} cannot be reached ({unreachable}); fits not "
            f"logged to MLflow (the files are written).")
        return
    try:
        client = mlflow.MlflowClient(uri)
        for path in files:
            client.log_artifact(run_id, str(path), artifact_path="fit")
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        say(f"{table.name}: could not log the fits to MLflow run {run_id} at {uri}: {exc}")
        return
    say(f"{table.name}: fits logged to MLflow run {run_id} ({uri}) under fit/.")


_PROBE_S = 3.0  # seconds to wait for a tracking server's TCP port


def _unreachable(uri: str) -> str | None:
    """Why an HTTP(S) tracking server cannot be reached, or None (files and databases pass)."""
    url = urlparse(uri)
    if url.scheme not in ("http", "https"):
        return None
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(_PROBE_S * 3)))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "localhost", port), timeout=_PROBE_S):
            return None
    except OSError as exc:
        return str(exc) or type(exc).__name__
