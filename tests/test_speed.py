"""The fast training step's bookkeeping: executed loop steps counted per training batch, and
when ``train.compile`` compiles (compiling itself is timed by benchmarks/train_throughput.py,
too slow for this suite)."""

from __future__ import annotations

from dataclasses import replace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from parcae.model import ModelConfig
from parcae.model.schedule import ActiveRows, AllRows
from parcae.module import DepthSampler, LoopedLMModule, TrainConfig, use_compile

MODEL = ModelConfig(loops=4, vocab_size=32)


def train_steps(model_cfg: ModelConfig, n: int) -> LoopedLMModule:
    module = LoopedLMModule(model_cfg, TrainConfig(), total_steps=n)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 32, (8, 16), generator=gen),) * 2 for _ in range(n)]
    trainer = L.Trainer(max_steps=n, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return module


@pytest.mark.parametrize("active_only", [True, False])
def test_loop_steps_count_what_the_training_forwards_ran(active_only):
    cfg = replace(MODEL, active_only=active_only)
    module = train_steps(cfg, 3)
    sampler = DepthSampler(cfg, seed=0)  # the same draws the module made, in order
    draws = [sampler(8).tolist() for _ in range(3)]
    assert any(min(d) < max(d) for d in draws)  # the two schedules differ on these draws
    bwd = cfg.mu_bwd
    if active_only:  # each sequence its own T_i: min(T_i, mu_bwd) with gradient
        grad = sum(min(t, bwd) for d in draws for t in d)
        nograd = sum(max(t - bwd, 0) for d in draws for t in d)
    else:  # every sequence runs the batch's T_max
        grad = sum(8 * min(max(d), bwd) for d in draws)
        nograd = sum(8 * max(max(d) - bwd, 0) for d in draws)
    assert module.loop_steps == {"grad": grad, "nograd": nograd}
    assert isinstance(module.model.schedule, ActiveRows if active_only else AllRows)


def test_compile_is_on_by_default_only_on_a_gpu(monkeypatch):
    assert not use_compile("auto", "cpu")
    assert use_compile("auto", "cuda")
    assert use_compile("on", "cpu") and not use_compile("off", "cuda")
    monkeypatch.setenv("PATH", "")  # no C++ compiler: CPU falls back to eager, with a warning
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        assert not use_compile("on", "cpu")
