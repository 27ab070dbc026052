"""One training run: its config, the run itself, and the record it leaves (``result.json``).

This is the unit every sweep trial executes; ``python -m parcae.train`` is its CLI.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from parcae.compute import Accounting, account
from parcae.config import (
    ConfigError,
    build,
    check_writable,
    load_yaml,
    parse_override,
    set_dotted,
    to_dict,
)
from parcae.data import Batch, DataConfig, DataSource, build_data
from parcae.model import PRESETS, ModelConfig
from parcae.model.config import RENAMED_PRESETS
from parcae.module import LoopedLMModule, TrainConfig
from parcae.monitor import MonitorConfig, StabilityMonitor, final_status, learned
from parcae.peak import device_peak
from parcae.tracking import TrackingConfig, record_result, start_run
from parcae.trainer import (
    ShareDepths,
    SharedStop,
    StepClock,
    build_trainer,
    data_parallel,
    on_gpu,
    rank,
    rank_threads,
)

#: Tokens trained when the config gives neither a token nor a FLOP budget.
DEFAULT_TOKENS = 150_000


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run; one-to-one with a ``parcae.train`` YAML file."""

    name: str = "run"
    """Run name shown in MLflow and the run table."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model shape, injection variant and recurrence (``model.preset`` fills the shape)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Corpus or synthetic task, batch size and sequence length."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, budget and evaluation."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """Stability monitoring and divergence rules."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow recording."""


def resolve(mapping: dict[str, Any] | None, source: str | None = None,
            overrides: tuple[str, ...] = ()) -> RunConfig:
    """Build a RunConfig from a YAML mapping plus ``key=value`` overrides.

    ``model.preset`` names a shape from PRESETS; keys the user gives win over it.
    """
    data = copy.deepcopy(mapping or {})
    try:
        for text in overrides:
            key, value = parse_override(text)
            set_dotted(data, key, value)
        model = data.get("model") or {}
        if not isinstance(model, dict):
            raise ConfigError("model", "expected a mapping of model settings")
        preset = model.get("preset", ModelConfig.preset)
        if preset in RENAMED_PRESETS:
            raise ConfigError("model.preset", f"preset {preset!r} was renamed to "
                              f"{RENAMED_PRESETS[preset]!r}: the paper's block shape without "
                              "its value embeddings (README, Compute accounting)")
        if preset not in PRESETS:
            raise ConfigError("model.preset", f"unknown preset {preset!r}; "
                              f"allowed: {', '.join(PRESETS)}")
        data["model"] = {**PRESETS[preset], **model}
        return build(RunConfig, data)
    except ConfigError as exc:
        raise exc.within("", source) from None


def load(path: Path | None, overrides: tuple[str, ...] = ()) -> RunConfig:
    return resolve(load_yaml(path) if path else {}, str(path) if path else None, overrides)


@dataclass
class Result:
    """The record of one run, written as ``result.json``; sweeps aggregate these."""

    run_id: str
    name: str
    status: str
    """ok | diverged | collapsed | failed (see parcae.runtable.STATUSES)"""
    config: dict[str, Any]
    params: int
    params_unrolled: int
    tokens: int
    flops: float
    val_loss: float | None
    """Validation loss at T = loops (T = 1 for the baseline)."""
    test_time: dict[int, float]
    """Validation loss at each test-time loop count."""
    test_time_accuracy: dict[int, float]
    """Answer exact-match accuracy at each test-time loop count (tasks only; empty for
    corpora)."""
    stability: dict[str, Any]
    """The run-table stability columns (see parcae.runtable)."""
    trace: list[dict[str, float]]
    """Every monitored step's stability figures, in order."""
    train_seconds: float
    error: str | None = None
    val_accuracy: float | None = None
    """Answer exact-match accuracy at T = loops (tasks only)."""
    baseline_loss: float | None = None
    """Loss of the unigram (corpora) or chance (tasks) predictor on the validation batches."""
    learned: bool | None = None
    """val_loss < baseline_loss - monitor.learned_margin (None without a val_loss)."""
    design: dict[str, Any] = field(default_factory=dict)
    """The run-table columns the config fixes (``Plan.columns``: source, core_layers,
    effective_depth, depth_sampling, warmup, grad_clip, epochs, ...)."""
    epochs: float | None = None
    """tokens / training-split tokens (None for generated tasks)."""
    flops_executed: float | None = None
    """FLOPs the training passes ran (``flops`` is the accounted budget; parcae.compute)."""
    tokens_per_second: float | None = None
    """Training tokens per second after the warm-up steps, validation excluded."""
    warmup_seconds: float | None = None
    """Seconds of the first training steps (``parcae.trainer.WARMUP_STEPS``, compile included)."""
    mfu: float | None = None
    """Model FLOP utilisation: accounted FLOPs per second over the devices' measured peak."""

    def write(self, out: Path) -> Path:
        """Write ``out/result.json`` atomically (a crash never leaves half a record)."""
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "result.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2, default=str))
        os.replace(tmp, out / "result.json")
        return out / "result.json"

    @classmethod
    def read(cls, path: Path) -> Result:
        raw = json.loads(path.read_text())
        for key in ("test_time", "test_time_accuracy"):
            raw[key] = {int(t): v for t, v in raw[key].items()}
        return cls(**raw)


log = logging.getLogger(__name__)
_warned: set[tuple[str, float]] = set()


class _Stream(IterableDataset):
    """An infinite, seeded stream of ready batches for Lightning; under DDP each rank takes
    its rows of every global batch."""

    def __init__(self, source: DataSource, seed: int) -> None:
        self.source, self.seed = source, seed

    def __iter__(self):
        r, world = rank()  # asked here: the DDP group exists once batches are drawn
        if world == 1:
            yield from self.source.train_batches(self.seed)
            return
        for x, y in self.source.train_batches(self.seed):
            b = x.shape[0] // world
            yield Batch(x[r * b:(r + 1) * b], y[r * b:(r + 1) * b])


@dataclass(frozen=True)
class Plan:
    """What a config resolves to before training: data, shapes, budget."""

    cfg: RunConfig
    model: ModelConfig
    accounting: Accounting
    steps: int
    tokens: int
    flops: float
    epochs: float | None
    """tokens / training-split tokens; None for generated tasks (no example repeats)."""

    def columns(self) -> dict[str, Any]:
        """The run-table cells fixed before training (parcae.runtable.COLUMNS)."""
        m, train = self.model, self.cfg.train
        return {"seed": train.seed, "source": self.cfg.data.source, "preset": m.preset,
                "injection": m.injection, "params": self.accounting.params,
                "params_unrolled": self.accounting.params_unrolled,
                "core_layers": m.core_layers, "loops": m.loops if m.looped else 1,
                "effective_depth": m.effective_depth, "depth_sampling": m.sampling,
                "backprop_depth": m.mu_bwd if m.looped else 1, "tokens": self.tokens,
                "flops": self.flops, "epochs": self.epochs, "lr": train.lr,
                "warmup": train.warmup,
                "grad_clip": train.grad_clip}


def data_source(cfg: RunConfig) -> DataSource:
    try:
        return build_data(cfg.data)
    except ConfigError as exc:
        raise exc.within("data") from None


def plan(cfg: RunConfig, source: DataSource | None = None) -> Plan:
    """Resolve the vocabulary from the data and the budget into optimizer steps."""
    source = source or data_source(cfg)
    model = replace(cfg.model, vocab_size=source.vocab_size)
    acct = account(model, cfg.data.seq_len)
    per_step = cfg.data.batch_size * cfg.data.seq_len
    if cfg.train.flops is not None:
        tokens, key = acct.tokens_for(cfg.train.flops), "train.flops"
    else:
        tokens, key = cfg.train.tokens or DEFAULT_TOKENS, "train.tokens"
    steps = tokens // per_step
    if steps < 1:
        raise ConfigError(key, f"budget buys {tokens} tokens, less than one step of "
                          f"{per_step} tokens (batch_size x seq_len); raise the budget")
    if cfg.data.batch_size % cfg.train.devices:
        raise ConfigError("data.batch_size", f"{cfg.data.batch_size} sequences do not split "
                          f"evenly over train.devices = {cfg.train.devices}")
    tokens = steps * per_step
    epochs = tokens / source.train_tokens if source.train_tokens else None
    if epochs is not None and epochs > cfg.data.max_epochs:
        warn_repetition(cfg, tokens, source.train_tokens, epochs)
    return Plan(cfg, model, acct, steps, tokens, acct.flops_for(tokens), epochs)


def warn_repetition(cfg: RunConfig, tokens: int, train_tokens: int, epochs: float) -> None:
    """Say once per run (and process) that it would see its training data many times."""
    if (cfg.name, epochs) in _warned:
        return
    _warned.add((cfg.name, epochs))
    log.warning("parcae: run %r is planned for %.1f epochs: %s tokens over a training split of "
                "%s, above data.max_epochs = %g; past a few epochs it measures memorisation "
                "more than scaling (use a larger corpus, or raise data.max_epochs to accept "
                "it)", cfg.name, epochs, f"{tokens:,}", f"{train_tokens:,}",
                cfg.data.max_epochs)


@dataclass
class Fitted:
    """What training left in this process (rank 0's is the run's)."""

    module: LoopedLMModule
    monitor: StabilityMonitor
    clock: StepClock
    status: str
    """ok | diverged | failed, before the learned/collapsed verdict."""
    error: str | None
    seconds: float


def fit(cfg: RunConfig, p: Plan, source: DataSource, val: list[Batch], logger: Any = None,
        callbacks: tuple[L.Callback, ...] = ()) -> Fitted:
    """Train the planned run in this process (every DDP rank runs this); never raises."""
    train = cfg.train
    threads = rank_threads(train.threads, train.devices)
    if threads:
        torch.set_num_threads(threads)
    L.seed_everything(train.seed, verbose=False)
    # Lightning's banners (tips, "GPU available: False") and a deprecation inside its own
    # code are noise in sweeps of many runs
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`")
    module = LoopedLMModule(p.model, train, p.steps, answers=source.answer_only)
    monitor = StabilityMonitor(cfg.monitor, p.model.loops if p.model.looped else 1)
    clock = StepClock()
    # order matters: the clock times the monitors; the shared stop sees every stop request
    trainer = build_trainer(cfg, p.steps, logger, [
        ShareDepths(), monitor, *callbacks, clock, SharedStop(monitor)])
    status, error = "ok", None
    started = time.perf_counter()
    try:
        trainer.fit(module, DataLoader(_Stream(source, train.seed), batch_size=None),
                    DataLoader(val, batch_size=None))
    except Exception as exc:  # a crashing run is recorded, never lost
        status, error = "failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    seconds = time.perf_counter() - started
    if monitor.diverged_step is not None:
        status = "diverged"
    return Fitted(module, monitor, clock, status, error, seconds)


def measured(cfg: RunConfig, p: Plan, clock: StepClock) -> dict[str, float | None]:
    """The ``parcae.runtable.MEASURED_CELLS`` of a trained run: executed FLOPs, speed and MFU."""
    executed = None  # over the tokens actually trained: a run stopped early did less
    if clock.loop_steps is not None:
        executed = p.accounting.executed_flops(clock.tokens, clock.loop_steps)
    speed, mfu = clock.tokens_per_second, None
    if speed is not None:
        train = cfg.train
        gpu = on_gpu(train.device)
        peak = device_peak("cuda" if gpu else "cpu",
                           None if gpu else rank_threads(train.threads, train.devices))
        mfu = speed * p.accounting.flops_per_token / (peak * train.devices)
    return {"flops_executed": executed, "tokens_per_second": speed,
            "warmup_seconds": clock.warmup_seconds, "mfu": mfu}


def train_run(cfg: RunConfig, out: Path | None = None, tags: dict[str, str] | None = None,
              callbacks: tuple[L.Callback, ...] = ()) -> Result:
    """Train, monitor and evaluate one run; always returns (and writes) its record.

    Bad input raises ConfigError before anything is recorded. Divergence and crashes during
    training are caught and recorded as ``diverged`` / ``failed``; a run that trains to the
    end without learning while its token states collapse is recorded as ``collapsed``.
    """
    source = data_source(cfg)
    p = plan(cfg, source)
    if out is not None:  # not after hours of training
        check_writable(out, "--out")
    model_cfg, train = p.model, cfg.train
    loops = model_cfg.loops if model_cfg.looped else 1
    test_loops = train.test_time_loops or tuple(range(1, 2 * loops + 1))
    if not model_cfg.looped:  # the untied baseline has no loop to run again: T = 1 only
        test_loops = (1,)
    elif loops not in test_loops:
        test_loops = tuple(sorted({*test_loops, loops}))
    run_tags = {"injection": model_cfg.injection, "loops": str(loops),
                "params": str(p.accounting.params), "tokens": str(p.tokens),
                "preset": model_cfg.preset, **(tags or {})}
    run_id, client, logger = f"local-{os.getpid()}-{time.time_ns()}", None, None
    if cfg.tracking.enabled:
        client, run_id, logger = start_run(cfg.tracking, cfg.name, run_tags, p)

    val = source.val_batches(train.val_batches)
    baseline = source.baseline_loss(val)
    with data_parallel(cfg):  # this process is rank 0; the others train their shares
        fitted = fit(cfg, p, source, val, logger, callbacks)
    module, monitor, status = fitted.module, fitted.monitor, fitted.status
    curve = module.test_time_curve(val, test_loops) if status == "ok" else {}
    stability = monitor.summary()
    val_loss = curve[loops]["loss"] if curve else None
    did_learn = learned(val_loss, baseline, cfg.monitor)
    status = final_status(status, did_learn, stability["token_correlation"], cfg.monitor)
    result = Result(
        run_id=run_id, name=cfg.name, status=status,
        config=to_dict(replace(cfg, model=model_cfg)),  # the vocabulary the data gave
        params=p.accounting.params, params_unrolled=p.accounting.params_unrolled,
        tokens=p.tokens, flops=p.flops, val_loss=val_loss,
        test_time={t: c["loss"] for t, c in curve.items()},
        test_time_accuracy={t: c["accuracy"] for t, c in curve.items()
                            if c["accuracy"] is not None},
        stability=stability, trace=monitor.history, train_seconds=fitted.seconds,
        error=fitted.error, val_accuracy=curve[loops]["accuracy"] if curve else None,
        baseline_loss=baseline, learned=did_learn, design=p.columns(), epochs=p.epochs,
        **measured(cfg, p, fitted.clock))
    write_error = None
    if out is not None:
        try:
            result.write(out)
        except OSError as exc:  # the folder changed since the check; MLflow still gets all
            write_error = f"cannot write {out / 'result.json'}: {exc.strerror or exc}"
    if client is not None:
        record_result(client, result, out if write_error is None else None, write_error)
    if write_error:
        raise RecordError(write_error)
    return result


class RecordError(OSError):
    """The run trained but its ``result.json`` could not be written (MLflow has the run)."""
