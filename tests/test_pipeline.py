"""The user's main path end to end: a real sweep on an embedded Ray, then the fit of its table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

GRID = {
    "cluster_name": "pipeline",
    "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
    "metadata": {"parcae": {
        "name": "pipeline",
        "base": {"model": {"preset": "tiny"},
                 "data": {"source": "pydoc", "batch_size": 8, "seq_len": 32},
                 "train": {"lr": 1.0e-2, "val_every": 50, "test_time_loops": [1, 2, 3, 4, 6]},
                 "monitor": {"every": 10, "lipschitz_every": 50}},
        "axes": {"loops": [1, 2], "tokens": [8192, 16384, 32768, 65536]},
        "resources": {"cpus": 1},
        "concurrency": 2,
    }},
}


def test_sweep_then_fit(tmp_path):
    grid = tmp_path / "pipeline.yaml"
    grid.write_text(yaml.safe_dump(GRID))
    reports = tmp_path / "reports"
    sweep = subprocess.run([sys.executable, "-m", "parcae.sweep", str(grid), "--reports",
                            str(reports)], capture_output=True, text=True, timeout=600)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    fit = subprocess.run([sys.executable, "-m", "parcae.fit", str(reports / "pipeline"),
                          "--set", "bootstrap.n=40"], capture_output=True, text=True,
                         timeout=600)
    assert fit.returncode == 0, fit.stderr[-3000:]
    out = reports / "pipeline"
    table = json.loads((out / "fits.json").read_text())["tables"]["pipeline"]
    # every run of this grid leaves the unigram plateau, so every run enters the fits
    assert table["n_usable"] == 8, table["excluded"]
    for law in ("compute", "parametric"):
        record = table["laws"][law]["all"]
        # eight tiny runs rarely identify a law: fitted, possibly flagged, always with bounds
        assert record["status"] in ("ok", "flagged"), record
        assert record["n_points"] == 8 and record["bounds"]
        assert record["status"] == "ok" or record["flags"]
        lo, hi = record["ci95"]["alpha"]
        assert lo <= record["params"]["alpha"] <= hi
    # more data lowers the loss, so the fitted compute exponent is positive
    assert table["laws"]["compute"]["all"]["params"]["alpha"] > 0
    assert any(r["status"] in ("ok", "flagged") for r in table["laws"]["test_time"].values())
    assert (out / "report.md").read_text().startswith("# Fits")
    assert list(out.glob("*.png")) or list(out.glob("**/*.png"))
    # the fit is logged to the sweep's MLflow parent run
    sweep_info = json.loads((out / "sweep.json").read_text())
    client = MlflowClient(sweep_info["tracking_uri"])
    names = [a.path for a in client.list_artifacts(sweep_info["parent_run_id"], "fit")]
    assert any(name.endswith("fits.json") for name in names)
