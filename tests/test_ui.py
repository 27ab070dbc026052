"""The MLflow side a user sees: the preset runs view, the fit's numbers on the sweep's runs,
``python -m parcae.ui`` and, in headless Chromium, the page it opens on."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from parcae import runsview
from parcae.fit import fit_path, load_spec
from parcae.fit.publish import subset_key
from parcae.fit.synthetic import sweep, write

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _client(tmp_path: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _toy_sweep(client, tmp_path: Path) -> tuple[str, str, dict[str, float]]:
    """An experiment with a parent run, four children (loops 1, 2 x seed 0, 1) and one run
    of another sweep; returns the experiment, the parent and child id -> loops."""
    exp = client.create_experiment("toy", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp, tags={"mlflow.runName": "toy", "sweep": "toy"}).info.run_id
    client.log_param(parent, "axes.loops", "1,2")
    client.log_param(parent, "axes.seed", "0,1")
    loops = {}
    for mu in (1, 2):
        for seed in (0, 1):
            run = client.create_run(exp, tags={
                "mlflow.runName": f"mu{mu}·s{seed}", "mlflow.parentRunId": parent,
                "sweep": "toy", "loops": str(mu), "seed": str(seed), "status": "ok"}).info.run_id
            for key, value in (("val_loss", 2.0 / mu + 0.01 * seed), ("flops", 1e12),
                               ("loops", mu)):
                client.log_metric(run, key, value)
            loops[run] = mu
    client.create_run(exp, tags={"mlflow.runName": "other", "loops": "8"})
    return exp, parent, loops


def test_preset_view_shows_the_sweep_compared_and_coloured_by_loops(tmp_path):
    client = _client(tmp_path)
    exp, parent, loops = _toy_sweep(client, tmp_path)
    view = runsview.preset(client, exp, "toy", parent)
    state = json.loads(client.get_experiment(exp).tags[runsview.SHARE_TAG + "toy"])
    # the filter is MLflow search syntax that selects exactly the sweep's trials
    found = client.search_runs([exp], state["searchFilter"])
    assert {r.info.run_id for r in found} == set(loops) and view.runs == 4
    assert state["selectedColumns"][:4] == ["metrics.`val_loss`", "metrics.`flops`",
                                            "metrics.`loops`", "tags.`status`"]
    assert "tags.`seed`" in state["selectedColumns"]  # the sweep's axes follow
    assert state["columnOrder"] == state["selectedColumns"]  # val_loss first, not a-z
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`val_loss`", True)
    assert state["runsHiddenMode"] == "SHOW_ALL"
    [chart] = state["compareRunCharts"]  # no val_accuracy: one scatter
    assert chart["type"] == "SCATTER" and chart["xaxis"]["key"] == "flops"
    assert chart["yaxis"]["key"] == "val_loss"
    assert chart["metricSectionId"] == state["compareRunSections"][0]["uuid"]
    colours = {run: client.get_run(run).data.tags[runsview.COLOUR_TAG] for run in loops}
    for run, mu in loops.items():
        assert colours[run] == view.coloured[str(mu)]
    assert view.coloured["1"] != view.coloured["2"]
    other = client.search_runs([exp], "tags.loops = '8'")[0]
    assert runsview.COLOUR_TAG not in other.data.tags  # not this sweep's
    urls = runsview.urls("http://127.0.0.1:5", view, parent)
    assert urls["runs"] == f"http://127.0.0.1:5/#/experiments/{exp}/runs?viewStateShareKey=toy"
    assert urls["charts"].endswith("&compareRunsMode=CHART")
    runsview.preset(client, exp, "toy", parent)  # again: the same view
    assert json.loads(client.get_experiment(exp).tags[runsview.SHARE_TAG + "toy"]) == state


def test_fit_numbers_reach_the_sweep_runs(tmp_path):
    client = _client(tmp_path)
    exp = client.create_experiment("tracked", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp).info.run_id
    runs, curves = sweep(np.random.default_rng(0), np.geomspace(1e18, 1e20, 4), (1, 2, 4, 8),
                         1, 0.002, test_time=(1, 2, 4, 8, 16))
    ids = {r["run_id"]: client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
           for r in runs}
    for row in (*runs, *curves):
        row["run_id"] = ids[row["run_id"]]
    folder = tmp_path / "reports" / "tracked"
    write(folder, runs, curves)
    (folder / "sweep.json").write_text(json.dumps(
        {"name": "tracked", "parent_run_id": parent, "tracking_uri": client.tracking_uri}))
    said: list[str] = []
    spec = load_spec(None, {"bootstrap.n": 10, "test_time.bootstrap": 5})
    fit_path(folder, spec, workers=1, say=said.append)
    laws = json.loads((folder / "fits.json").read_text())["tables"]["tracked"]["laws"]

    logged = client.get_run(parent).data
    statuses = set()
    for law, subsets in laws.items():
        if law == "test_time":
            continue
        for subset, record in subsets.items():
            prefix = f"fit.{law}" + ("" if subset == "all" else f".{subset_key(subset)}")
            statuses.add(record["status"])
            assert logged.tags[f"{prefix}.status"] == record["status"]
            if record["status"] not in ("ok", "flagged"):
                assert logged.tags[f"{prefix}.reason"] == record["reason"]
                continue
            for name, value in record["params"].items():
                assert logged.metrics[f"{prefix}.{name}"] == pytest.approx(value)
                lo, hi = record["ci95"][name]
                assert logged.metrics[f"{prefix}.{name}.lo"] == pytest.approx(lo)
                assert logged.metrics[f"{prefix}.{name}.hi"] == pytest.approx(hi)
            if record["status"] == "flagged":  # marked, with the codes and the words
                codes = {f["code"] for f in record["flags"]}
                assert set(logged.tags[f"{prefix}.flags"].split(", ")) == codes
                assert record["flags"][0]["message"] in logged.tags[f"{prefix}.reason"]
    assert {"ok", "flagged"} <= statuses  # both kinds were checked
    assert "fit.compute.loops_1.status" in logged.tags  # a subset's key, spelled out
    assert not [k for k in logged.metrics if k.startswith("fit.test_time")]
    for run, record in laws["test_time"].items():  # per-run fits sit on their runs
        child = client.get_run(run).data
        assert child.tags["fit.test_time.status"] == record["status"]
        if record["status"] in ("ok", "flagged"):
            assert child.metrics["fit.test_time.L_inf"] == pytest.approx(record["params"]["L_inf"])
    assert any("as fit.<law>.<param> metrics" in s for s in said)


def _ui(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "parcae.ui", *args], capture_output=True,
                          text=True, timeout=60, **kw)


def test_ui_explains_a_folder_it_cannot_show(tmp_path):
    missing = _ui(str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
    empty = _ui(str(tmp_path))
    assert empty.returncode == 2 and "nothing was tracked" in empty.stderr
    moved = tmp_path / "smoke"  # its store was never copied along
    moved.mkdir()
    (moved / "sweep.json").write_text(json.dumps(
        {"name": "smoke", "tracking_uri": f"sqlite:///{tmp_path / 'gone' / 'mlflow.db'}"}))
    gone = _ui(str(moved))
    assert gone.returncode == 2 and "is gone" in gone.stderr
    assert not (tmp_path / "gone").exists()  # no empty store made in its place


GRID = {
    "cluster_name": "uicheck",
    "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
    "metadata": {"parcae": {
        "name": "uicheck",
        "base": {"model": {"preset": "tiny"},
                 "data": {"source": "pydoc", "batch_size": 8, "seq_len": 64},
                 "train": {"tokens": 4096, "val_every": 4, "test_time_loops": [1, 2]},
                 "monitor": {"every": 4, "lipschitz_every": 8}},
        "axes": {"loops": [1, 2]},
        "resources": {"cpus": 1},
        "concurrency": 1,
    }},
}


def _dom(url: str) -> str:
    """The page after its scripts ran (Chromium's virtual time skips the waiting)."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000",
         "--virtual-time-budget=60000", "--dump-dom", url],
        capture_output=True, text=True, timeout=300).stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium on PATH (Debian package chromium)")
def test_browser_shows_the_sweep_compared(tmp_path):
    from mlflow import MlflowClient

    grid, reports = tmp_path / "uicheck.yaml", tmp_path / "reports"
    grid.write_text(yaml.safe_dump(GRID))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-m", "parcae.sweep", str(grid), "--reports",
                           str(reports)], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((reports / "uicheck" / "sweep.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    names = {r.info.run_name for r in client.search_runs(
        [client.get_run(info["parent_run_id"]).info.experiment_id],
        f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")}
    assert len(names) == 2

    ui = subprocess.Popen([sys.executable, "-m", "parcae.ui", str(reports)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 400
        while not any(line.strip().startswith("charts") for line in lines):
            assert ui.poll() is None and time.monotonic() < deadline, "".join(lines)
            lines.append(ui.stdout.readline())
        urls = dict(re.findall(r"^\s+(runs|charts)\s+(http://127\.0\.0\.1:\d+/\S+)$",
                               "".join(lines), re.M))
        runs_page = _dom(urls["runs"])
        for name in names:  # each trial is a row of the table, by its short name
            assert f">{name}<" in runs_page, runs_page[-3000:]
        assert "Sort: val_loss" in runs_page  # the preset view, not MLflow's default
        charts_page = _dom(urls["charts"])
        assert "flops vs. val_loss" in charts_page  # the scatter's card
        base = urls["runs"].split("/#")[0]
        ui.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = ui.communicate(timeout=60)
        assert ui.returncode == 0 and "stopped" in out
        with pytest.raises(OSError):  # the server went with it
            urllib.request.urlopen(f"{base}/health", timeout=5)
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait()
