"""Grid files: expansion, isoFLOP budgets, rules, keys, Ray's schema and bad-input errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from parcae.config import ConfigError
from parcae.grid import expand, load_grid, parse_grid, points, trial_key
from parcae.sweep import main

GRIDS = sorted((Path(__file__).parent.parent / "grids").glob("*.yaml"))
BASE = {"model": {"preset": "tiny"}, "data": {"source": "pydoc", "batch_size": 4,
                                                "seq_len": 32}}


def grid_file(sweep: dict, **top) -> dict:
    return {"cluster_name": "t", "provider": {"type": "local", "head_ip": "127.0.0.1",
                                              "worker_ips": []},
            **top, "metadata": {"parcae": {"name": "t", "base": BASE, **sweep}}}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cross_product_in_axis_order_with_stable_keys():
    grid = parse_grid(grid_file({"axes": {"lr": [1e-3, 3e-3], "loops": [1, 2, 4],
                                          "tokens": [4096]}}))
    trials = expand(grid)
    assert len(trials) == 6
    # crossing order is the Axes field order (loops before lr), whatever the file's order
    assert [t.key for t in trials[:3]] == ["loops=1,lr=0.001,tokens=4096",
                                           "loops=1,lr=0.003,tokens=4096",
                                           "loops=2,lr=0.001,tokens=4096"]
    assert [t.key for t in expand(grid)] == [t.key for t in trials]
    t = trials[2]
    assert (t.cfg.model.loops, t.cfg.train.lr, t.cfg.train.tokens) == (2, 1e-3, 4096)
    assert t.cfg.name == "t/" + t.key
    assert trial_key({}) == "base"


def test_isoflop_tokens_come_from_the_compute_accounting():
    # PyYAML reads 1e9 (no dot) as a string: the axis must still be a number
    text = yaml.safe_dump(grid_file({"axes": {"loops": [1, 4], "flops": ["1e9", 4.0e9]}}))
    grid = parse_grid(yaml.safe_load(text))
    trials = expand(grid)
    assert [t.point["flops"] for t in trials] == [1e9, 4e9, 1e9, 4e9]
    per_step = 4 * 32
    for t in trials:
        acct = t.plan.accounting
        assert t.plan.tokens == (acct.tokens_for(t.point["flops"]) // per_step) * per_step
        assert t.point["flops"] - acct.flops_per_token * per_step < t.plan.flops
        assert t.plan.flops <= t.point["flops"]
    # the same budget buys fewer tokens at more loops
    assert trials[2].plan.tokens < trials[0].plan.tokens
    assert trials[1].key == "loops=1,flops=4e9"


def test_exclude_include_and_overrides():
    sweep = {"axes": {"injection": ["diagonal", "add", "baseline"], "loops": [1, 4],
                      "tokens": [4096]},
             "exclude": [{"injection": "baseline", "loops": [4]}],
             "overrides": [{"match": {"injection": "add"}, "set": {"train.lr": 1e-4}}]}
    grid = parse_grid(grid_file(sweep))
    keys = [t.key for t in expand(grid)]
    assert len(keys) == 5 and "injection=baseline,loops=4,tokens=4096" not in keys
    lrs = {t.point["injection"]: t.cfg.train.lr for t in expand(grid)}
    assert lrs["add"] == 1e-4 and lrs["diagonal"] == 3e-3
    sweep["include"] = [{"loops": 1}]
    assert {p["loops"] for p in points(parse_grid(grid_file(sweep)))} == {1}


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.name)
def test_shipped_grids_are_valid_ray_cluster_configs(path):
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    data = yaml.safe_load(path.read_text())
    validate_config(fillout_defaults(data))
    corpus = data["metadata"]["parcae"]["base"].get("data", {})
    if corpus.get("source") == "tokens" and not Path(corpus["path"]).exists():
        # the corpus is the user's to fill in: until then the dry run says how to make it
        with pytest.raises(ConfigError, match="python -m parcae.prepare"):
            expand(load_grid(path), str(path))
        return
    assert expand(load_grid(path), str(path))


def test_ray_rejects_unknown_top_level_keys():
    import jsonschema
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    with pytest.raises(jsonschema.ValidationError):
        validate_config(fillout_defaults(grid_file({"axes": {}}, parcae={"name": "x"})))


def test_smoke_grid_asks_the_papers_question():
    trials = expand(load_grid(Path("grids/smoke.yaml")))
    assert len({t.point["loops"] for t in trials}) >= 3
    assert len({t.point["flops"] for t in trials}) >= 3


@pytest.mark.parametrize("sweep, key", [
    ({"axes": {"width": [64]}}, "metadata.parcae.axes.width"),
    ({"axes": {"loops": [1]}, "colour": "red"}, "metadata.parcae.colour"),
    ({"axes": {"loops": []}}, "metadata.parcae.axes.loops"),
    ({"axes": {"loops": [1], "flops": [10]}}, "metadata.parcae.axes.flops"),
    ({"axes": {"loops": [1]}, "exclude": [{"lr": 1e-3}]}, "metadata.parcae.exclude[0].lr"),
    ({"axes": {"loops": [0]}}, "metadata.parcae.axes.loops"),
    pytest.param({"axes": {"loops": [1]}, "resources": {"gpus": 1}},
                 "metadata.parcae.resources.gpus",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
    ({"axes": {"injection": ["diagonl"]}}, "metadata.parcae.axes.injection"),
])
def test_bad_grids_exit_2_naming_file_and_key(tmp_path, capsys, sweep, key):
    path = write(tmp_path, grid_file(sweep))
    assert main([str(path), "--reports", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: '{key}'" in err and "Traceback" not in err
    assert not (tmp_path / "reports" / "t" / "runs.csv").exists()


def test_warmup_depth_sampling_and_grad_clip_are_axes():
    grid = parse_grid(grid_file({"axes": {"loops": [4], "depth_sampling": ["poisson", "fixed"],
                                          "warmup": [0, 0.1], "grad_clip": [0, 1.0],
                                          "tokens": [4096]}}))
    trials = expand(grid)
    assert len(trials) == 8
    t = next(t for t in trials if t.point == {"loops": 4, "depth_sampling": "fixed",
                                              "warmup": 0, "grad_clip": 1.0, "tokens": 4096})
    assert (t.cfg.model.depth_sampling, t.cfg.train.warmup, t.cfg.train.grad_clip) == (
        "fixed", 0.0, 1.0)
    assert t.plan.columns()["depth_sampling"] == "fixed"
    assert t.key == "loops=4,depth_sampling=fixed,warmup=0,grad_clip=1,tokens=4096"


def misplaced_axes(where: str) -> dict:
    data = grid_file({})
    axes = {"loops": [1, 2]}
    if where == "top":
        data["axes"] = axes
    elif where == "metadata":
        data["metadata"]["axes"] = axes
    elif where == "empty":
        data["metadata"]["parcae"]["axes"] = None
    elif where == "base":
        data["metadata"]["parcae"]["base"] = {**BASE, "axes": axes}
    elif where == "override":
        data["metadata"]["parcae"].update(axes={"seed": [0, 1]}, overrides=[
            {"match": {"seed": 1}, "set": {"model": {"axes": axes}}}])
    return data


@pytest.mark.parametrize(("where", "key"), [
    ("top", "axes"), ("metadata", "metadata.axes"), ("empty", "metadata.parcae.axes"),
    ("base", "metadata.parcae.base.axes"),
    ("override", "metadata.parcae.overrides[0].set.model.axes")])
def test_misplaced_axes_exit_2_naming_the_key(tmp_path, capsys, where, key):
    # each of these once ran a one-trial sweep, or blamed the wrong key
    path = write(tmp_path, misplaced_axes(where))
    assert main([str(path), "--dry-run", "--reports", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: '{key}'" in err and "Traceback" not in err


def test_missing_name_is_named():
    data = grid_file({"axes": {"loops": [1]}})
    del data["metadata"]["parcae"]["name"]
    with pytest.raises(ConfigError) as exc:
        parse_grid(data, "g.yaml")
    assert exc.value.key == "metadata.parcae.name" and "required" in exc.value.message


def test_bad_base_key_is_named(tmp_path):
    data = grid_file({"axes": {"loops": [1]}})
    data["metadata"]["parcae"]["base"] = {"train": {"lr": "fast"}}
    with pytest.raises(ConfigError) as exc:
        parse_grid(data, "g.yaml")
    assert exc.value.key == "metadata.parcae.base.train.lr"


def test_unwritable_reports_folder_exits_2(tmp_path, capsys):
    path = write(tmp_path, grid_file({"axes": {"loops": [1]}, "base": {**BASE}}))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main([str(path), "--reports", str(blocker / "reports")]) == 2
    assert "'--reports'" in capsys.readouterr().err


def test_missing_sweep_block_via_the_cli(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("cluster_name: x\nprovider: {type: local}\n")
    proc = subprocess.run([sys.executable, "-m", "parcae.sweep", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"{path}: 'metadata.parcae'" in proc.stderr and "Traceback" not in proc.stderr


def test_dry_run_prints_trials_and_total_compute(capsys):
    assert main(["grids/smoke.yaml", "--dry-run", "--reports", "/nonexistent/x"]) == 0
    out = capsys.readouterr().out
    assert "loops=4,seed=0,flops=" in out and "total compute" in out


def test_ray_submit_script_reads_the_bootstrap_config(tmp_path):
    # on a head node, `ray submit` runs the script with the grid at ~/ray_bootstrap_config.yaml
    (tmp_path / "ray_bootstrap_config.yaml").write_text(Path("grids/smoke.yaml").read_text())
    script = Path(__file__).parent.parent / "scripts" / "ray_submit_sweep.py"
    env = {**os.environ, "HOME": str(tmp_path), "MLFLOW_TRACKING_URI": "sqlite:///x.db"}
    proc = subprocess.run([sys.executable, str(script), "--dry-run"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "loops=4,seed=1,flops=1.2e12" in proc.stdout and "30 trials" in proc.stdout
