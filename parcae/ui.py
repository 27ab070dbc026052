"""``python -m parcae.ui [REPORTS] [--port N]``: the MLflow UI on a reports folder's sweeps.

REPORTS is a sweep's folder (``reports/smoke``) or a folder of sweeps (``reports``, the
default). The UI is MLflow's own server, started on 127.0.0.1 (this machine only) with the
folder's store (``mlflow.db`` and the ``mlartifacts/`` beside it). Each sweep's runs view is
preset first (columns, sort by val_loss, a val_loss-vs-FLOPs chart, runs coloured by loop
count: ``parcae/runsview.py``) and its URLs are printed. Ctrl-C stops the server.

With a tracking server instead of a local store (``tracking_uri`` in ``sweep.json``), nothing
is started: the views are preset there and their URLs printed.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from parcae.tracking import STORE

HOST = "127.0.0.1"  # never all interfaces: the UI can edit and delete runs
START_S = 300.0  # MLflow's server takes ~10 s to answer on an idle machine, minutes on a busy one


class UIError(Exception):
    """What the user must fix; printed as one paragraph."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m parcae.ui", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", type=Path, nargs="?", default=Path("reports"),
                        help="a sweep's reports folder or a folder of them (default: reports)")
    parser.add_argument("--port", type=int, default=0,
                        help="port on 127.0.0.1 (default: a free one)")
    return parser.parse_args(argv)


def sweeps_in(folder: Path) -> list[dict]:
    """The ``sweep.json`` of ``folder`` itself, else of each of its sub-folders."""
    from parcae.reports import Reports

    if Reports(folder).sweep.is_file():
        return [Reports(folder).read_sweep()]
    return [Reports(p).read_sweep() for p in sorted(folder.iterdir())
            if p.is_dir() and Reports(p).sweep.is_file()]


def store_of(folder: Path, sweeps: list[dict]) -> str:
    """The one tracking URI of ``folder``'s sweeps (their copied store where the recorded one
    is gone: ``parcae.tracking.sweep_store``), else the folder's own store."""
    from parcae.tracking import sweep_store

    uris = {sweep_store(s, _folder_of(folder, s)) for s in sweeps}
    if len(uris) > 1:
        raise UIError(f"the sweeps under {folder} were tracked in different stores "
                      f"({', '.join(sorted(uris))}); name one sweep's folder.")
    if not sweeps:
        if (folder / STORE).is_file():  # single runs (python -m parcae.train) only
            return f"sqlite:///{(folder / STORE).resolve()}"
        raise UIError(f"{folder} holds no sweep.json and no {STORE}: nothing was tracked there "
                      f"(a sweep writes reports/<name>/sweep.json and reports/{STORE}).")
    uri = uris.pop()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UIError(f"the store {uri} named in {folder}'s sweep.json is gone and no {STORE} "
                      f"holding the sweep lies beside the reports.")
    return uri


def _folder_of(folder: Path, sweep: dict) -> Path:
    """The reports folder of ``sweep``: ``folder`` itself or its sub-folder of that name."""
    own = folder / sweep.get("name", "")
    return own if sweep.get("name") and (own / "sweep.json").is_file() else folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def preset_views(uri: str, sweeps: list[dict], base: str) -> list[str]:
    """Preset each sweep's view in the store; returns the lines to print."""
    from parcae import runsview
    from parcae.tracking import client_for

    client = client_for(uri)
    lines = []
    for sweep in sweeps:
        name = sweep.get("name", "?")
        experiment = client.get_experiment_by_name(sweep.get("experiment") or name)
        if experiment is None:
            lines.append(f"  {name}: no experiment {sweep.get('experiment') or name!r} in "
                         f"{uri}; skipped")
            continue
        view = runsview.preset(client, experiment.experiment_id, name, sweep.get("parent_run_id"))
        colours = ", ".join(f"{v}: {c}" for v, c in view.coloured.items()) or "none"
        lines.append(f"  {name}: {view.runs} runs; colour by loops ({colours})")
        lines += [f"    {what:<10} {url}" for what, url in
                  runsview.urls(base, view, sweep.get("parent_run_id")).items()]
    if not sweeps:  # single runs (python -m parcae.train): their experiments
        for experiment in client.search_experiments():
            lines.append(f"  experiment {experiment.name}: "
                         f"{base}/#/experiments/{experiment.experiment_id}/runs")
    return lines


def serve(uri: str, port: int, log: Path) -> subprocess.Popen:
    """MLflow's server on the SQLite store ``uri``, artifacts beside it, one worker."""
    from parcae.tracking import TELEMETRY_ENV, artifact_location

    db_folder = Path(uri.removeprefix("sqlite:///")).parent
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--artifacts-destination", artifact_location(uri) or str(db_folder / "mlartifacts"),
           "--host", HOST, "--port", str(port), "--workers", "1"]
    # no background job runner (GenAI jobs): one process less on a small machine
    env = {**os.environ, **TELEMETRY_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=db_folder, start_new_session=True)


def wait_ready(server: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            raise UIError("the MLflow server exited:\n" + "\n".join(tail))
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise UIError(f"the MLflow server did not answer at {base} within {START_S:.0f} s "
                  f"(log: {log})")


def stop(server: subprocess.Popen) -> None:
    """End the server's whole process group (uvicorn starts a worker process)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # a terminated launcher stops its server too


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = args.reports
    try:
        if not folder.is_dir():
            raise UIError(f"{folder} is not a folder; give a sweep's reports folder "
                          f"(reports/<name>) or the folder holding them.")
        sweeps = sweeps_in(folder)
        uri = store_of(folder, sweeps)
        if uri.startswith(("http://", "https://")):
            print(f"parcae.ui: {folder} is tracked on the server {uri}; its views:")
            print("\n".join(preset_views(uri, sweeps, uri.rstrip("/"))))
            return 0
        if not uri.startswith("sqlite:///"):
            raise UIError(f"{uri}: only a SQLite store or a tracking server can be shown.")
        port = args.port or free_port()
        base = f"http://{HOST}:{port}"
        lines = preset_views(uri, sweeps, base)
    except UIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="parcae-ui-") as tmp:
        log = Path(tmp) / "mlflow-server.log"
        server = serve(uri, port, log)
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the
        # background, where SIGINT is ignored
        try:
            print(f"parcae.ui: starting the MLflow UI on {uri} ...", flush=True)
            wait_ready(server, base, log)
            print(f"parcae.ui: MLflow UI at {base} (Ctrl-C stops it)")
            print("\n".join(lines), flush=True)
            server.wait()
            raise UIError("the MLflow server exited:\n" + log.read_text(errors="replace")[-2000:])
        except KeyboardInterrupt:
            print("\nparcae.ui: stopped.")
            return 0
        except UIError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        finally:
            stop(server)


if __name__ == "__main__":
    sys.exit(main())
