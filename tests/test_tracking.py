"""What MLflow gets: comparable params, short names, curves against tokens and FLOPs, the
main figures as metrics and tags, no telemetry, and a quick refusal of a dead server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parcae.config import ConfigError
from parcae.embedded import trial_environment
from parcae.grid import run_name
from parcae.run import plan, resolve
from parcae.tracking import check_reachable, run_params
from parcae.train import main

FAST = ["--set", "data.source=pydoc", "--set", "data.seq_len=32", "--set", "data.batch_size=4",
        "--set", "train.tokens=1280", "--set", "train.val_every=5", "--set",
        "train.val_batches=1", "--set", "train.log_every=2", "--set", "monitor.every=3",
        "--set", "monitor.lipschitz_every=3"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_names_are_short_axis_values():
    assert run_name({"loops": 4, "flops": 1.2e12}) == "mu4·C1.2e12"
    assert run_name({"injection": "diagonal", "seed": 1}) == "diagonal·s1"
    assert run_name({}) == ""


def test_params_are_resolved_and_only_those_of_the_source():
    corpus = run_params(plan(resolve({"model": {"loops": 5}, "data": {"source": "pydoc"}})))
    assert corpus["model.backprop_depth"] == 3  # ceil(5 / 2), not None
    assert corpus["model.d_model"] > 0 and corpus["model.vocab_size"] == 256
    assert not [k for k in corpus if k.startswith(("data.addition_", "data.phop_"))]
    assert "data.token_dtype" not in corpus and "data.path" not in corpus
    assert None not in corpus.values()
    task = run_params(plan(resolve({"data": {"source": "addition", "seq_len": 256}})))
    assert task["data.addition_digits"] == 3 and task["model.vocab_size"] == 13
    assert not [k for k in task if k.startswith("data.phop_")]
    baseline = run_params(plan(resolve({"model": {"injection": "baseline"}})))
    assert baseline["model.backprop_depth"] == 1


def test_unreachable_server_fails_fast_naming_it():
    uri = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        check_reachable(uri)
    assert time.monotonic() - start < 5
    assert uri in str(err.value) and "unreachable" in str(err.value)
    check_reachable("sqlite:////nonexistent/mlflow.db")  # a file store is made on first use


def test_train_refuses_a_dead_server_before_training(tmp_path, capsys):
    uri = f"http://127.0.0.1:{closed_port()}"
    assert main([*FAST, "--set", f"tracking.uri={uri}", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and uri in err[0] and "tracking.uri" in err[0]
    assert not (tmp_path / "out").exists()


def test_train_shows_progress_and_where_the_run_went(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'reports' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main([*FAST, "--set", "data.source=addition", "--set", "data.seq_len=256",
                 "--set", "train.tokens=10240", "--set", "train.log_every=3",
                 "--out", "out"]) in (0, 1)
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    err = captured.err
    assert "\r" not in err  # not a terminal: plain lines
    progress = [line for line in err.splitlines() if line.startswith("parcae.train: run: ")]
    assert progress and "10.24k/10.24k tok (100%)" in progress[-1] and "loss=" in progress[-1]
    assert f"parcae.train: result {Path('out') / 'result.json'}" in err
    assert f"MLflow run {summary['run_id']} in experiment 'parcae-train'" in err
    assert "open it with: python -m parcae.ui reports" in err
    assert not (tmp_path / "mlruns").exists()  # artifacts beside the store

    client = MlflowClient(uri)
    run = client.get_run(summary["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "parcae-train"
    assert run.data.params["model.backprop_depth"] == "2"  # loops 4 by default
    assert "data.addition_digits" in run.data.params
    assert not [k for k in run.data.params if k.startswith("data.phop_")]
    for key in ("val_loss", "val_accuracy", "learned", "loops", "flops"):
        assert key in run.data.metrics, key
    assert {"val_loss", "val_accuracy", "learned", "status"} <= set(run.data.tags)
    assert run.data.metrics["loops"] == 4
    # curves overlay across batch sizes only against tokens and FLOPs, logged at each step
    tokens = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "tokens")}
    flops = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "flops")}
    loss_steps = {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert len(tokens) >= 4 and loss_steps <= set(tokens) and set(flops) == set(tokens)
    values = [tokens[s] for s in sorted(tokens)]
    assert values == sorted(values) and values[-1] == summary["tokens"]
    per_step = summary["tokens"] / max(tokens)  # each curve point logged at its own step
    assert all(value == step * per_step for step, value in tokens.items())
    assert min(loss_steps) == 1
    val_steps = {m.step for m in client.get_metric_history(run.info.run_id, "val/loss")}
    assert val_steps == {5, 10} and val_steps <= set(tokens)  # val_every 5, 10 steps
    assert flops[max(flops)] == pytest.approx(summary["flops"])


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's environment: no CI or pytest markers (MLflow skips telemetry there)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CI", "PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "XDG_CONFIG_HOME",
                        "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    return {**env, "HOME": str(home), **extra}


@pytest.mark.parametrize("setting", [None, "false"])
def test_mlflow_telemetry_is_off(tmp_path, setting):
    """parcae turns it off; the user's own setting ("false": on) wins, which shows the
    check can see the file MLflow writes."""
    code = "import parcae.tracking; import mlflow"  # MLflow starts its telemetry on import
    extra = {"MLFLOW_DISABLE_TELEMETRY": setting} if setting else {}
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(tmp_path, **extra),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    written = (tmp_path / ".config" / "mlflow" / "telemetry.json").exists()
    assert written == (setting == "false")


def test_trials_inherit_the_telemetry_switches():
    env = trial_environment({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                             "AWS_SECRET_ACCESS_KEY": "x"})
    assert env == {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def test_sweep_refuses_a_dead_server_before_anything_starts(tmp_path, capsys):
    from parcae.sweep import main as sweep

    uri = f"http://127.0.0.1:{closed_port()}"
    grid = {"cluster_name": "t", "provider": {"type": "local", "head_ip": "127.0.0.1",
                                              "worker_ips": []},
            "metadata": {"parcae": {"name": "dead", "base": {
                "model": {"preset": "tiny"}, "data": {"source": "pydoc", "seq_len": 32},
                "tracking": {"uri": uri}}}}}
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(grid))  # JSON is YAML
    start = time.monotonic()
    assert sweep([str(path), "--reports", str(tmp_path / "reports")]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and uri in err[0]
    assert not (tmp_path / "reports").exists()


def test_reports_copied_from_a_cluster_read_the_store_copied_beside_them(tmp_path):
    """After ``ray rsync-down`` the sweep.json still names the head's server; the copied
    mlflow.db that holds the sweep's parent run is what the fit and the UI must read."""
    from mlflow import MlflowClient

    from parcae.tracking import sweep_store

    db = tmp_path / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    parent = client.create_run(client.create_experiment("grid")).info.run_id
    folder = tmp_path / "grid"
    folder.mkdir()
    dead = f"http://127.0.0.1:{closed_port()}"
    assert sweep_store({"tracking_uri": dead, "parent_run_id": parent}, folder) \
        == f"sqlite:///{db.resolve()}"
    # a store that does not hold the sweep is not taken for its copy
    assert sweep_store({"tracking_uri": dead, "parent_run_id": "0" * 32}, folder) == dead
    # a recorded store that still exists wins
    other = tmp_path / "elsewhere.db"
    MlflowClient(f"sqlite:///{other}").search_experiments()
    assert sweep_store({"tracking_uri": f"sqlite:///{other}", "parent_run_id": parent},
                       folder) == f"sqlite:///{other}"
