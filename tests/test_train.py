"""Training runs end to end: every variant, divergence, test-time loops, records, bad input."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from mlflow import MlflowClient

from parcae.config import ConfigError
from parcae.data import DataConfig, build_data
from parcae.data.corpus import pydoc_books, split_tail
from parcae.model import ModelConfig
from parcae.module import DepthSampler
from parcae.monitor import RULES
from parcae.peak import device_peak
from parcae.run import Result, load, plan, resolve, train_run
from parcae.train import main
from parcae.trainer import WARMUP_STEPS

FAST = {"data": {"source": "pydoc", "seq_len": 32, "batch_size": 4},
        "train": {"tokens": 1280, "val_every": 5, "val_batches": 1, "log_every": 2},
        "monitor": {"every": 3, "lipschitz_every": 3},
        "tracking": {"enabled": False}}


def fast(**sections) -> dict:
    cfg = json.loads(json.dumps(FAST))
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "parcae.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("injection", ["diagonal", "linear", "add", "none", "baseline"])
def test_each_variant_trains_and_records(injection, tmp_path):
    cfg = resolve(fast(model={"injection": injection, "loops": 3}))
    result = train_run(cfg, tmp_path)
    # ten steps leave a run near the unigram; collapsed is the honest verdict when its tokens'
    # states have also become one
    assert result.status in ("ok", "collapsed"), result.error
    if result.status == "collapsed":
        assert result.learned is False
        assert result.stability["token_correlation"] >= cfg.monitor.collapse_correlation
    assert result.tokens == 10 * 4 * 32
    assert result.val_loss is not None and result.val_loss < 6.0
    # the untied baseline has no loop to rerun: its curve is T = 1 only
    assert set(result.test_time) == (set(range(1, 7)) if injection != "baseline" else {1})
    assert result.stability["max_state_norm"] > 0
    if injection != "baseline":
        assert result.stability["lipschitz"] > 0
    # rows after the first step (with a Lipschitz estimate), then every 3 steps and the last
    assert [row["step"] for row in result.trace] == [1, 3, 6, 9, 10]
    lipschitz_rows = [row["step"] for row in result.trace if "lipschitz" in row]
    assert lipschitz_rows == ([] if injection == "baseline" else [1, 3, 6, 9])
    stored = Result.read(tmp_path / "result.json")
    assert stored.test_time == result.test_time and stored.status == result.status
    assert stored.design == result.design and stored.design["core_layers"] == 1
    assert stored.design["effective_depth"] == 3 and stored.design["source"] == "pydoc"


def test_training_lowers_the_loss(tmp_path):
    # 100 steps of 8 x 32 bytes at a high rate: enough to leave the unigram plateau
    cfg = resolve(fast(train={"tokens": 25600, "lr": 2e-2, "val_every": 1000},
                       model={"loops": 2}, data={"batch_size": 8}))
    result = train_run(cfg)
    assert result.val_loss < 3.6  # byte-level start is ln 256 = 5.55 nats
    # ... and below the unigram, by the margin: it learned, and is no collapse
    assert result.val_loss < result.baseline_loss - cfg.monitor.learned_margin
    assert result.learned is True and result.status == "ok"
    assert abs(result.stability["final_train_loss"] - result.val_loss) < 0.5


@pytest.mark.parametrize("injection", ["add", "linear"])
def test_absurd_learning_rate_is_flagged_diverged_and_recorded(injection, tmp_path):
    cfg = resolve(fast(model={"injection": injection, "loops": 8},
                       train={"lr": 30.0, "warmup": 0.0}))
    result = train_run(cfg, tmp_path)
    assert result.status == "diverged"
    assert result.stability["diverged_step"] is not None
    rule = result.stability["diverged_rule"]
    assert rule in RULES and result.stability["diverged_reason"].startswith(f"{rule}: ")
    assert result.learned is None and result.test_time == {}
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["status"] == "diverged" and record["val_loss"] is None


def test_test_time_loops_beyond_training_depth():
    cfg = resolve(fast(model={"loops": 2}, train={"test_time_loops": [1, 5, 9]}))
    result = train_run(cfg)
    assert sorted(result.test_time) == [1, 2, 5, 9]  # the training depth is always included
    assert len(set(result.test_time.values())) == 4


def test_flop_budget_sets_the_tokens():
    cfg = resolve(fast(train={"flops": 2.5e9, "tokens": None}))
    p = plan(cfg)
    assert p.tokens == (p.accounting.tokens_for(2.5e9) // 128) * 128
    assert p.flops <= 2.5e9


def test_mlflow_run_holds_params_metrics_and_residuals(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = resolve(fast(tracking={"enabled": True, "uri": uri, "experiment": "t"}))
    result = train_run(cfg, tmp_path / "out")
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    # ten steps learn nothing, so the run may end collapsed; the record must say which
    assert result.status in ("ok", "collapsed")
    assert run.data.tags["status"] == result.status and run.data.tags["injection"] == "diagonal"
    assert run.data.params["model.loops"] == "4"
    for key in ("stability/residual", "stability/rel_residual", "stability/state_norm_4",
                "stability/rho_A", "stability/lipschitz", "stability/state_ratio",
                "train/loss", "val_loss", "baseline_loss", "learned"):
        assert key in run.data.metrics, key
    assert run.data.metrics["baseline_loss"] == result.baseline_loss
    assert run.data.tags["learned"] == str(result.learned).lower()
    assert "val_accuracy" not in run.data.metrics  # a corpus has no answers
    curve = client.get_metric_history(result.run_id, "test_time/loss")
    assert sorted(m.step for m in curve) == list(range(1, 9))


@pytest.mark.parametrize(("args", "key"), [
    (["--set", "model.bogus=1"], "model.bogus"),
    (["--set", "model.d_model=65"], "model.n_heads"),
    (["--set", "model.prelude_layers=-1"], "model.prelude_layers"),
    (["--set", "model.injection=magic"], "model.injection"),
    (["--set", "model.loops=two"], "model.loops"),
    (["--set", "data.source=text", "--set", "data.path=/nonexistent/x.txt"], "data.path"),
    (["--set", "train.tokens=10"], "train.tokens"),
])
def test_bad_input_is_one_clear_line_and_exit_2(args, key, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*args, "--set", "tracking.enabled=false", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert key in err and err.startswith("parcae.train: bad input:")
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing half-written


def test_bad_config_file_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  injection: diagonal\n  loops: [1, 2]\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(path) in str(err.value) and "model.loops" in str(err.value)
    assert "integer" in str(err.value)
    proc = cli(str(tmp_path / "missing.yaml"), cwd=tmp_path)  # the real process and exit code
    assert proc.returncode == 2 and "missing.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_yaml_exponent_strings_are_numbers():
    cfg = resolve({"train": {"tokens": "2e4", "flops": None}})
    assert cfg.train.tokens == 20000


@pytest.mark.parametrize("recipe", sorted(Path(__file__).parent.parent.glob("recipes/*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_recipes_load_and_plan(recipe):
    p = plan(load(recipe))
    assert p.steps >= 1 and p.flops > 0


class PoisonGradients(L.Callback):
    """Fault injection: from step 3 on, A_log gets an infinite gradient; the loss stays finite."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 3:
            pl_module.model.injection.A_log.register_hook(lambda g: g * math.inf)


def test_non_finite_gradient_stops_the_run_and_skips_the_update():
    cfg = resolve(fast())
    result = train_run(cfg, callbacks=(PoisonGradients(),))
    assert result.status == "diverged"
    assert result.stability["diverged_rule"] == "non_finite"
    assert result.stability["diverged_reason"] == "non_finite: grad_norm = inf"
    assert result.stability["diverged_step"] == 4
    assert result.trace[-1]["step"] == 4  # measured at once, off the monitor's schedule


# --- golden tiny runs for the run-table columns ---------------------------------------------

PHOP = {"source": "phop", "phop_hops": 1, "phop_length": 16, "phop_alphabet": 4,
        "seq_len": 16, "batch_size": 16}


def test_task_run_records_accuracy_and_the_chance_loss(tmp_path):
    cfg = resolve(fast(data=PHOP, model={"loops": 2},
                       train={"tokens": 16 * 16 * 10, "val_batches": 4}))
    result = train_run(cfg, tmp_path)
    assert result.status in ("ok", "collapsed"), result.error
    assert 0 <= result.val_accuracy <= 1
    assert result.val_accuracy == result.test_time_accuracy[2]
    assert set(result.test_time_accuracy) == set(result.test_time) == {1, 2, 3, 4}
    # answers are uniform over the alphabet: the chance predictor's loss is about ln 4
    assert result.baseline_loss == pytest.approx(math.log(4), abs=0.03)
    assert result.learned is (result.val_loss < result.baseline_loss - 0.05)
    assert result.design["source"] == "phop"
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["val_accuracy"] == result.val_accuracy
    assert record["baseline_loss"] == result.baseline_loss


def test_corpus_run_has_no_accuracy_and_the_unigram_loss():
    cfg = resolve(fast())
    result = train_run(cfg)
    assert result.val_accuracy is None and result.test_time_accuracy == {}
    # the unigram of the training split (add-one smoothed) on the same validation batch
    head, _ = split_tail(pydoc_books()[0].tokens.numpy(), cfg.data.val_fraction)
    counts = np.bincount(head, minlength=256) + 1.0
    logp = np.log(counts / counts.sum())
    (_, y), = build_data(cfg.data).val_batches(1)
    assert result.baseline_loss == pytest.approx(-logp[y.numpy()].mean(), rel=1e-9)
    entropy = -(np.exp(logp) * logp).sum()
    assert abs(result.baseline_loss - entropy) < 0.15


def test_one_loop_is_one_fixed_step_everywhere():
    cfg = resolve(fast(model={"loops": 1, "depth_sampling": "poisson"}))
    assert cfg.model.fixed_depth and cfg.model.sampling == "fixed"
    steps = DepthSampler(cfg.model, seed=0)(1000)
    assert steps.eq(1).all()  # Poisson(1) clamped at 1 would average 1.37
    p = plan(cfg)
    assert (p.accounting.steps_nograd, p.accounting.steps_grad) == (0.0, 1.0)
    assert p.columns()["depth_sampling"] == "fixed" and p.columns()["effective_depth"] == 1
    looped = ModelConfig(loops=2, depth_sampling="poisson")
    assert not looped.fixed_depth and DepthSampler(looped, seed=0)(1000).float().std() > 0.5
    result = train_run(cfg)
    assert result.design["depth_sampling"] == "fixed"


def test_baseline_records_its_effective_depth_and_a_single_loop():
    cfg = resolve(fast(model={"injection": "baseline", "loops": 3, "core_layers": 2}))
    columns = plan(cfg).columns()
    assert (columns["loops"], columns["core_layers"], columns["effective_depth"]) == (1, 2, 6)
    assert columns["depth_sampling"] == "fixed"
    assert build_data(DataConfig(source="pydoc")).answer_only is False


@pytest.fixture
def peak_cache(tmp_path, monkeypatch):
    """parcae.peak caches the device's peak under XDG_CACHE_HOME: keep it in the test's folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "parcae" / "peak.json"


class SlowEdges(L.Callback):
    """Adds known time to the first step and to every validation pass."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.validations = seconds, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:
            time.sleep(self.seconds)

    def on_validation_end(self, trainer, pl_module):
        self.validations += 1
        time.sleep(self.seconds)


def test_speed_excludes_warmup_and_validation_and_fixed_depth_flops_are_executed(peak_cache):
    cfg = resolve(fast(model={"depth_sampling": "fixed"}, train={"val_every": 3}))
    slow = SlowEdges(0.4)
    result = train_run(cfg, callbacks=(slow,))
    assert result.status in ("ok", "collapsed"), result.error
    assert result.flops_executed == result.flops  # fixed depth: accounted = executed, exactly
    assert result.warmup_seconds >= 0.4  # the slow first step is warm-up
    timed_tokens = (10 - WARMUP_STEPS) * 4 * 32
    timed = timed_tokens / result.tokens_per_second
    assert slow.validations >= 3
    # neither the slow first step nor any validation pass is in the timed steps
    assert timed <= result.train_seconds - 0.4 * (1 + slow.validations)
    peak = json.loads(peak_cache.read_text())
    assert len(peak) == 1 and next(iter(peak.values()))["flops_per_second"] > 1e8
    assert 0 < result.mfu < 1
    assert result.mfu == pytest.approx(result.tokens_per_second * plan(cfg).accounting
                                       .flops_per_token / device_peak("cpu", cfg.train.threads))


def test_all_run_scheme_executes_more_than_active_only_on_the_same_depths(peak_cache):
    runs = {active: train_run(resolve(fast(model={"loops": 6, "active_only": active})))
            for active in (True, False)}
    assert runs[True].flops == runs[False].flops  # one accounted budget
    assert runs[False].flops_executed > runs[True].flops_executed
    # the same weights, data and depths: the schemes differ in work, not in results
    assert runs[False].val_loss == pytest.approx(runs[True].val_loss, abs=1e-3)


def test_epochs_are_recorded_and_a_repeating_plan_warns_once(caplog):
    source = build_data(DataConfig(source="pydoc", seq_len=32, batch_size=4))
    cfg = resolve(fast(train={"tokens": 6 * source.train_tokens}))
    cfg = replace(cfg, name="repeats")
    with caplog.at_level(logging.WARNING, logger="parcae.run"):
        p = plan(cfg)
        plan(cfg)
    assert p.epochs == pytest.approx(p.tokens / source.train_tokens)
    assert p.columns()["epochs"] == p.epochs and 5.9 < p.epochs <= 6
    (record,) = caplog.records  # once, naming the run and its epochs
    assert "'repeats'" in record.message and f"{p.epochs:.1f} epochs" in record.message
    assert "data.max_epochs = 4" in record.message
    caplog.clear()
    plan(replace(cfg, data=replace(cfg.data, max_epochs=10.0)))
    assert not caplog.records
    task = resolve(fast(data={"source": "addition", "seq_len": 160}, train={"tokens": 6400}))
    assert plan(task).epochs is None  # fresh examples every batch: no epochs


def test_renamed_presets_say_what_they_became():
    with pytest.raises(ConfigError) as err:
        resolve({"model": {"preset": "140m"}})
    assert err.value.key == "model.preset" and "'140m-shape'" in str(err.value)
    assert "value embeddings" in str(err.value)
    p = plan(resolve({"model": {"preset": "140m-shape"}, "data": {"batch_size": 1,
                                                                  "seq_len": 64}}))
    assert round(p.accounting.params / 1e6, 1) == 43.7  # N: the blocks, no embeddings
