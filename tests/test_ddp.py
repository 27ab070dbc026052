"""Multi-device training: train.devices = 2 runs DDP over two CPU processes (gloo)."""

from __future__ import annotations

import os

import pytest
import torch

from parcae.config import ConfigError
from parcae.grid import expand, parse_grid
from parcae.monitor import RULES
from parcae.run import Result, resolve, train_run
from parcae.sweep import trial_configs

# 100 steps of 8 x 32 bytes at a high rate leave the unigram plateau (as in test_train)
RUN = {"data": {"source": "pydoc", "seq_len": 32, "batch_size": 8},
       "train": {"tokens": 25600, "lr": 2e-2, "val_every": 50, "val_batches": 2, "threads": 2},
       "model": {"loops": 2, "state_init": "zero"},
       "monitor": {"every": 10, "lipschitz_every": 0},
       "tracking": {"enabled": False}}


@pytest.mark.slow
def test_two_processes_train_the_same_run_as_one(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = {k: os.environ.get(k) for k in ("MASTER_PORT", "WORLD_SIZE", "LOCAL_RANK")}
    two = train_run(resolve({**RUN, "train": {**RUN["train"], "devices": 2}}), tmp_path / "two")
    # the process is left as found: no process group, no DDP environment
    assert not torch.distributed.is_initialized()
    assert {k: os.environ.get(k) for k in before} == before
    one = train_run(resolve(RUN), tmp_path / "one")
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["result.json"]  # rank 0 only
    stored = Result.read(tmp_path / "two" / "result.json")
    assert stored.status == two.status == "ok" and stored.config["train"]["devices"] == 2
    assert stored.learned and stored.val_loss < 3.6  # byte-level start: ln 256 = 5.55 nats
    # the global batch is split, with the single-device run's data and depths; zero initial
    # loop states leave only the order of float sums to differ (random ones would differ too:
    # each rank draws its rows from the same seeded generator, and 100 steps at this rate
    # turn that into val losses up to 0.13 apart)
    assert stored.val_loss == pytest.approx(one.val_loss, abs=0.02)
    assert stored.tokens == one.tokens and stored.flops_executed == one.flops_executed
    assert len(stored.trace) == len(one.trace) and stored.tokens_per_second > 0
    assert [r["tokens"] for r in stored.trace] == [r["tokens"] for r in one.trace]


def grid(gpus: float) -> dict:
    return {"metadata": {"parcae": {
        "name": "g", "base": {"data": {"source": "pydoc", "seq_len": 32, "batch_size": 8},
                              "train": {"tokens": 2560}},
        "axes": {"loops": [1, 2]}, "resources": {"cpus": 4, "gpus": gpus}}}}


def test_a_trial_holding_several_gpus_trains_on_all_of_them():
    for gpus, devices in ((2, 2), (1, 1), (0.5, 1), (0, 1)):
        g = parse_grid(grid(gpus))
        runs, _ = trial_configs(g, expand(g), None, None)
        assert {cfg.train.devices for cfg in runs.values()} == {devices}
    with pytest.raises(ConfigError) as err:
        parse_grid(grid(1.5))
    assert err.value.key.endswith("resources.gpus") and "whole GPUs" in str(err.value)


@pytest.mark.slow
def test_a_divergence_stops_every_rank_and_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = resolve({**RUN, "model": {"injection": "add", "loops": 8},
                   "train": {**RUN["train"], "lr": 30.0, "warmup": 0.0, "devices": 2},
                   "monitor": {"every": 3, "lipschitz_every": 0}})
    result = train_run(cfg, tmp_path)
    assert result.status == "diverged"  # and train_run returned: no rank was left waiting
    assert result.stability["diverged_rule"] in RULES
    assert result.stability["diverged_step"] < 100 and result.test_time == {}
    assert not torch.distributed.is_initialized()
