"""End to end: a tiny sweep on an embedded Ray, killed, resumed, re-run; MLflow over REST.

One module-scoped sweep serves every test: four trials (one trains, one diverges and stops
itself, one diverges and is stopped by the sweep's stop rule, one crashes on every try), run
one at a time so that killing the sweep after its first row leaves work for the resumed run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from parcae.monitor import RULES
from parcae.runtable import COLUMNS, read_rows

pytestmark = pytest.mark.slow

GRID = {
    "cluster_name": "e2e",
    "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
    "metadata": {"parcae": {
        "name": "e2e",
        "base": {"model": {"preset": "tiny", "loops": 2},
                 "data": {"source": "pydoc", "batch_size": 8, "seq_len": 64},
                 "train": {"tokens": 20000, "val_every": 20, "test_time_loops": [1, 2, 4]},
                 "monitor": {"every": 5, "lipschitz_every": 20}},
        "axes": {"injection": ["diagonal", "add"], "lr": [3.0e-3, 10.0, 30.0]},
        "exclude": [{"injection": "diagonal", "lr": [10.0, 30.0]}],
        "overrides": [
            # a trial that asks Lightning for a GPU on this CPU-only machine crashes every try
            {"match": {"injection": "add", "lr": 3.0e-3}, "set": {"train.device": "gpu"}},
            # monitors too lenient to act: the sweep's stop rule must stop this one
            {"match": {"lr": 30.0}, "set": {"monitor.max_loss": 1e6,
                                            "monitor.max_state_norm": 1e12,
                                            "monitor.max_state_ratio": 1e12,
                                            "monitor.growth_eps": 1e9,
                                            "monitor.max_rho": 1e9}},
        ],
        "resources": {"cpus": 1},
        "concurrency": 1,
        "retries": 1,
        "stop": {"max_state_norm": 1e5},
    }},
}
OK, CRASH = "injection=diagonal,lr=0.003", "injection=add,lr=0.003"
DIVERGE, STOPPED = "injection=add,lr=10", "injection=add,lr=30"


def ray_pids() -> set[int]:
    """Ray's processes of this user: raylet, GCS, agents and workers."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if proc.stat().st_uid != os.getuid():
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::") or "/ray/core/src/ray/" in cmd or (
                "/ray/" in cmd and ("dashboard" in cmd or "gcs_server" in cmd)):
            found.add(int(proc.name))
    return found


def sweep_cmd(grid: Path, reports: Path) -> list[str]:
    return [sys.executable, "-m", "parcae.sweep", str(grid), "--reports", str(reports)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    grid, reports = tmp / "e2e.yaml", tmp / "reports"
    grid.write_text(yaml.safe_dump(GRID))
    runs = reports / "e2e" / "runs.csv"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    before = ray_pids()
    out: dict = {"grid": grid, "reports": reports, "runs": runs}
    try:
        # 1. killed with SIGKILL as soon as its first trial has a row
        killed = subprocess.Popen(sweep_cmd(grid, reports), env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and killed.poll() is None:
            if runs.exists() and len(read_rows(runs)) >= 1:
                break
            time.sleep(0.1)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        out["after_kill"] = read_rows(runs)
        # 2. resumed: runs what is left, to the end
        mid = ray_pids()
        t0 = time.monotonic()
        out["resumed"] = subprocess.run(sweep_cmd(grid, reports), env=env, capture_output=True,
                                        text=True, timeout=400)
        out["resumed_seconds"] = time.monotonic() - t0
        out["left_behind"] = ray_pids() - mid
        out["rows"] = read_rows(runs)
        # 3. run again: everything is finished
        t0 = time.monotonic()
        out["rerun"] = subprocess.run(sweep_cmd(grid, reports), env=env, capture_output=True,
                                      text=True, timeout=200)
        out["rerun_seconds"] = time.monotonic() - t0
        out["sweep"] = json.loads((reports / "e2e" / "sweep.json").read_text())
        yield out
    finally:
        # the SIGKILLed sweep's Ray agents wait for their raylet's death to be confirmed
        deadline = time.monotonic() + 30
        while ray_pids() - before and time.monotonic() < deadline:
            time.sleep(1)
        for pid in ray_pids() - before:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def by_trial(rows):
    return {r["trial"]: r for r in rows}


def test_resumed_sweep_completes_every_trial(sweep):
    proc = sweep["resumed"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = sweep["rows"]
    assert list(rows[0]) == list(COLUMNS)
    assert sorted(r["trial"] for r in rows) == sorted([OK, CRASH, DIVERGE, STOPPED])
    ok = by_trial(rows)[OK]
    # 39 steps may leave it on the unigram plateau: collapsed exactly when it did not learn
    # and its token states became one
    assert ok["status"] in ("ok", "collapsed") and float(ok["val_loss"]) < 5.6
    assert (ok["status"] == "collapsed") == (
        ok["learned"] == "false" and float(ok["token_correlation"]) >= 0.9)
    assert ok["learned"] == str(float(ok["val_loss"]) < float(ok["baseline_loss"]) - 0.05).lower()
    assert 2.5 < float(ok["baseline_loss"]) < 4  # pydoc's byte unigram
    assert (ok["source"], ok["core_layers"], ok["effective_depth"], ok["depth_sampling"]) == (
        "pydoc", "1", "2", "poisson")
    assert (ok["warmup"], ok["grad_clip"], ok["val_accuracy"], ok["diverged_rule"]) == (
        "0.05", "1.0", "", "")
    assert float(ok["max_state_ratio"]) > 0 and float(ok["final_train_loss"]) > 0
    assert (ok["sweep"], ok["injection"], ok["loops"], ok["backprop_depth"]) == (
        "e2e", "diagonal", "2", "1")
    assert int(ok["tokens"]) <= 20000 and float(ok["flops"]) > 0
    assert int(ok["params_unrolled"]) > int(ok["params"]) > 0
    assert float(ok["max_state_norm"]) > 0 and 0 < float(ok["rho_A"]) < 1


def test_killed_sweep_loses_no_finished_trial(sweep):
    killed, rows = sweep["after_kill"], sweep["rows"]
    assert 1 <= len(killed) < 4
    assert all(r in rows for r in killed)  # same rows, same run ids: not re-run
    assert "1 already finished" in sweep["resumed"].stdout or len(killed) > 1


def test_sweep_reports_progress_and_where_to_look(sweep):
    out = sweep["resumed"].stdout
    progress = [line for line in out.splitlines() if " running, " in line]
    # a line per finished trial (at least), each with the counts and an ETA or why none yet
    pending = 4 - len(sweep["after_kill"])
    assert len(progress) >= pending
    assert all(line.startswith("parcae.sweep: e2e: ") and f" left of {pending} trials" in line
               and "ETA" in line for line in progress)
    assert f"{pending} done, 0 running, 0 left of {pending} trials" in progress[-1]
    assert "open it with: python -m parcae.ui " in out


def test_rerun_starts_nothing(sweep):
    proc = sweep["rerun"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0 to run" in proc.stdout
    assert read_rows(sweep["runs"]) == sweep["rows"]
    assert sweep["rerun_seconds"] < sweep["resumed_seconds"]


def test_diverged_trial_is_stopped_and_recorded(sweep):
    row = by_trial(sweep["rows"])[DIVERGE]
    assert row["status"] == "diverged"
    assert row["diverged_step"] != "" and row["diverged_rule"] in RULES
    assert row["diverged_reason"].startswith(row["diverged_rule"] + ": ")
    assert row["val_loss"] == "" and row["learned"] == ""


def test_stop_rule_stops_a_trial_its_monitors_let_run(sweep):
    row = by_trial(sweep["rows"])[STOPPED]
    assert row["status"] == "diverged"
    assert "stop.max_state_norm" in row["diverged_reason"] and row["diverged_step"] == "5"
    assert row["diverged_rule"] == "stop_rule"
    assert float(row["max_state_norm"]) > 1e5


def test_crashing_trial_is_retried_then_failed(sweep):
    row = by_trial(sweep["rows"])[CRASH]
    assert row["status"] == "failed"
    assert "gpu" in row["diverged_reason"].lower()


def test_test_time_curves_and_stability_traces(sweep):
    root = sweep["reports"] / "e2e"
    ok = by_trial(sweep["rows"])[OK]
    curve = [r for r in read_rows(root / "test_time.csv") if r["run_id"] == ok["run_id"]]
    assert sorted(int(r["T"]) for r in curve) == [1, 2, 4]
    assert {r["val_accuracy"] for r in curve} == {""}  # a corpus has no answers
    trace = read_rows(root / "stability" / f"{OK}.csv")
    assert len(trace) >= 2 and {"step", "tokens", "state_norm_1", "state_norm_2",
                                "state_norm_last", "state_ratio", "rel_residual"} <= set(trace[0])
    assert float(trace[1]["tokens"]) == float(trace[1]["step"]) * 8 * 64


def test_no_ray_process_left_behind(sweep):
    assert not sweep["left_behind"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_mlflow_server_shows_parent_and_children(sweep):
    info = sweep["sweep"]
    assert info["name"] == "e2e" and info["tracking_uri"].startswith("sqlite:///")
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port",
         str(port), "--backend-store-uri", info["tracking_uri"], "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.5)
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name"
                                    f"?experiment_name=e2e", timeout=30) as resp:
            exp = json.loads(resp.read())["experiment"]["experiment_id"]
        parents = post(base, "/api/2.0/mlflow/runs/search", {
            "experiment_ids": [exp], "filter": "tags.`parcae.kind` = 'sweep'"})["runs"]
        assert [p["info"]["run_id"] for p in parents] == [info["parent_run_id"]]
        assert parents[0]["info"]["status"] == "FINISHED"
        children = post(base, "/api/2.0/mlflow/runs/search", {
            "experiment_ids": [exp], "max_results": 100,
            "filter": f"tags.mlflow.parentRunId = '{info['parent_run_id']}'"})["runs"]
        tags = {c["info"]["run_id"]: {t["key"]: t["value"] for t in c["data"]["tags"]}
                for c in children}
        data = {c["info"]["run_id"]: {kind: {m["key"]: m["value"] for m in c["data"].get(kind, [])}
                                      for kind in ("params", "metrics")} for c in children}
        rows = by_trial(sweep["rows"])
        for key in (OK, DIVERGE, STOPPED):
            t = tags[rows[key]["run_id"]]
            assert t["trial"] == key and t["sweep"] == "e2e" and t["status"] == rows[key]["status"]
            assert {"loops", "injection", "lr", "params", "tokens"} <= set(t)
        assert tags[rows[OK]["run_id"]]["injection"] == "diagonal"
        assert tags[rows[DIVERGE]["run_id"]]["lr"] == "10"
        # short names, resolved params of the corpus only, the main figures as metrics
        assert tags[rows[OK]["run_id"]]["mlflow.runName"] == "diagonal·lr0.003"
        assert tags[rows[DIVERGE]["run_id"]]["mlflow.runName"] == "add·lr10"
        ok = data[rows[OK]["run_id"]]
        assert ok["params"]["model.backprop_depth"] == "1"
        assert not [k for k in ok["params"] if k.startswith(("data.addition_", "data.phop_"))]
        assert {"val_loss", "loops", "flops", "tokens", "learned"} <= set(ok["metrics"])
        assert tags[rows[OK]["run_id"]]["val_loss"] == f"{float(rows[OK]['val_loss']):.6g}"
        statuses = {c["info"]["run_id"]: c["info"]["status"] for c in children}
        # the resumed sweep tried it twice (one retry); the killed one may have tried too
        crashed = [i for i, t in tags.items() if t.get("trial") == CRASH]
        assert sum(tags[i].get("status") == "failed" for i in crashed) >= 2
        # runs the SIGKILLed sweep left open were closed when it resumed
        assert "RUNNING" not in statuses.values()
        assert {statuses[rows[k]["run_id"]] for k in (OK, DIVERGE, STOPPED)} == {"FINISHED"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
