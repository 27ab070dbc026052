"""fits.json, report.md and the MLflow hand-off of a tracked sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from parcae.fit import fit_path, load_spec
from parcae.fit.synthetic import sweep, write


def _table(folder: Path) -> None:
    runs, curves = sweep(np.random.default_rng(0), np.geomspace(1e18, 1e20, 4),
                         (1, 2, 4, 8, 16, 32), 1, 0.002, test_time=(1, 2, 4, 8, 16, 32))
    runs[0] |= {"status": "diverged", "diverged_reason": "state norm above 1e4",
                "max_state_norm": 2e4}
    write(folder, runs, curves)


def test_outputs_and_mlflow_artifacts(tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("sweep", artifact_location=str(tmp_path / "art"))
    run_id = client.create_run(experiment).info.run_id
    folder = tmp_path / "reports" / "tracked"
    _table(folder)
    (folder / "sweep.json").write_text(json.dumps(
        {"name": "tracked", "parent_run_id": run_id, "tracking_uri": uri}))
    said: list[str] = []
    spec = load_spec(None, {"bootstrap.n": 10, "test_time.bootstrap": 5})
    [outcome] = fit_path(tmp_path / "reports", spec, workers=1, say=said.append)
    assert outcome.out == folder and outcome.fitted > 0

    doc = json.loads((folder / "fits.json").read_text())  # strict JSON: no NaN
    table = doc["tables"]["tracked"]
    assert table["excluded"][0]["reason"] == "diverged: state norm above 1e4"
    for law in ("compute", "parametric", "isoflop", "test_time", "unified"):
        records = [r for r in table["laws"][law].values() if r["status"] in ("ok", "flagged")]
        assert records, law
        for r in records:
            assert set(r["ci95"]) == set(r["params"]) and r["n_points"] > 0
            assert "heldout_rel_error" in r and "loss" in r and "excluded" in r
    report = (folder / "report.md").read_text()
    for png in ("compute.png", "isoflop.png", "isoflop_optima.png", "test_time.png"):
        assert (folder / png).stat().st_size > 0 and f"]({png})" in report
    # the synthetic table has no stability traces: the report says so instead of a figure
    assert "- Not drawn, stability over training: no stability traces" in report

    logged = {a.path for a in client.list_artifacts(run_id, "fit")}
    assert {"fit/fits.json", "fit/report.md", "fit/compute.png"} <= logged
    assert any("logged to MLflow" in s for s in said)


def test_untracked_table_says_so_once(tmp_path: Path) -> None:
    _table(tmp_path / "plain")
    said: list[str] = []
    spec = load_spec(None, {"bootstrap.n": 0, "test_time.bootstrap": 0})
    fit_path(tmp_path / "plain", spec, tmp_path / "out", workers=1, say=said.append)
    assert sum("not logged to MLflow" in s for s in said) == 1
    assert (tmp_path / "out" / "fits.json").exists()
