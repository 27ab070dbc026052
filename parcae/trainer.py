"""The Lightning Trainer of a run: its construction, its step clock, and multi-device (DDP)
training.

Several devices (``train.devices`` > 1) train with DDP, one process per device. The process
that calls ``train_run`` is rank 0 and keeps everything it owns (monitor history, step clock,
MLflow run, ``result.json``); the other ranks are fresh ``python -m parcae.trainer`` processes
that rebuild the same run from its pickled config, train their share of every batch and exit.
Lightning then only joins the processes (``creates_processes_externally``): its own launchers
do not fit here, since ``ddp`` re-runs ``sys.argv`` (a Ray worker's command line inside a
trial) and ``ddp_spawn``/``ddp_fork`` train in children whose callback state never returns.

``data.batch_size`` stays the global batch: rank r trains rows r*b..(r+1)*b-1 of each batch
the single-device run would see (b = batch_size / devices) with that run's loop depths, so a
run's hyperparameters and data do not depend on how many devices share it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.plugins.environments import LightningEnvironment
from lightning.pytorch.strategies import DDPStrategy

from parcae.monitor import StabilityMonitor, Verdict

if TYPE_CHECKING:
    from parcae.run import RunConfig

#: Seconds a rank waits for the others (joining, and in every collective) before it fails:
#: a rank that died leaves the others waiting otherwise (Lightning's default is 30 minutes).
DDP_TIMEOUT = 300

#: Training steps timed apart as warm-up: the first compiles (``train.compile``) and the second
#: recompiles once shapes turn dynamic; both also fill allocator caches.
WARMUP_STEPS = 2


def on_gpu(device: str) -> bool:
    return device == "gpu" or (device == "auto" and torch.cuda.is_available())


def build_trainer(cfg: RunConfig, steps: int, logger: Any,
                  callbacks: list[L.Callback]) -> L.Trainer:
    """The Trainer every run uses (single device, or one DDP rank when devices > 1)."""
    train = cfg.train
    gpu = on_gpu(train.device)
    ddp = train.devices > 1
    return L.Trainer(
        max_steps=steps, accelerator="gpu" if gpu else "cpu", devices=train.devices,
        strategy=DDPStrategy(cluster_environment=LightningEnvironment(),
                             timeout=timedelta(seconds=DDP_TIMEOUT)) if ddp else "auto",
        use_distributed_sampler=False,  # every rank validates on all the fixed val batches
        precision="bf16-mixed" if gpu else "32-true", logger=logger or False,
        callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=train.log_every,
        val_check_interval=min(train.val_every, steps), check_val_every_n_epoch=None,
        num_sanity_val_steps=0)


def rank() -> tuple[int, int]:
    """(rank, world size) of this process in the running DDP group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class StepClock(L.Callback):
    """Training throughput: tokens per second over the steps after ``WARMUP_STEPS``
    (validation passes excluded), the warm-up's seconds, and the loop steps all ranks ran.

    Each step is timed from the end of the previous one (or of the validation pass between
    them) to its own end: data loading, forward, backward, optimizer and monitors count.
    """

    def __init__(self) -> None:
        self.steps = 0
        self.tokens = 0
        """Training tokens of all ranks so far."""
        self.timed_tokens = 0
        self.mark = 0.0
        self.timed_seconds = 0.0
        self.warmup_seconds: float | None = None
        self.loop_steps: dict[str, int] | None = None

    def _now(self, module: L.LightningModule) -> float:
        if module.device.type == "cuda":  # time the work, not its launch
            torch.cuda.synchronize(module.device)
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        self.mark = self._now(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        self.mark = self._now(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = self._now(pl_module)
        self.steps += 1
        tokens = batch[0].numel() * trainer.world_size
        self.tokens += tokens
        if self.steps <= WARMUP_STEPS:
            self.warmup_seconds = (self.warmup_seconds or 0.0) + now - self.mark
        else:
            self.timed_seconds += now - self.mark
            self.timed_tokens += tokens
        self.mark = now

    def on_train_end(self, trainer, pl_module) -> None:
        counts = pl_module.loop_steps  # every rank counted its own share: sum them
        total = trainer.strategy.reduce(
            torch.tensor([counts["grad"], counts["nograd"]], device=pl_module.device),
            reduce_op="sum")
        self.loop_steps = {"grad": int(total[0]), "nograd": int(total[1])}

    @property
    def tokens_per_second(self) -> float | None:
        """Training tokens per second of all ranks; None when no step ran after the warm-up."""
        return self.timed_tokens / self.timed_seconds if self.timed_tokens else None


class SharedStop(L.Callback):
    """With several ranks, any rank's divergence stops them all, and rank 0 records the verdict
    (each rank's monitor judges its own share of the batch). Without DDP it does nothing."""

    def __init__(self, monitor: StabilityMonitor) -> None:
        self.monitor = monitor

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.world_size == 1:
            return
        if not trainer.strategy.reduce_boolean_decision(trainer.should_stop, all=False):
            return
        mine = self.monitor.verdict
        verdicts: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(
            verdicts, None if mine is None else (self.monitor.diverged_step, mine))
        found = next(((r, v) for r, v in enumerate(verdicts) if v is not None), None)
        if mine is None and found is not None:
            peer, (step, verdict) = found
            self.monitor.diverge(trainer, step, Verdict(
                verdict.rule, f"rank {peer} of {trainer.world_size}: {verdict.reason}"))
        trainer.should_stop = True


class RankDepths:
    """The module's depth sampler under DDP: draws the depths of the whole global batch, as
    the single-device run would, and keeps this rank's rows."""

    def __init__(self, sampler, rank: int, world: int) -> None:
        self.sampler, self.rank, self.world = sampler, rank, world

    def __call__(self, batch: int) -> torch.Tensor:
        return self.sampler(batch * self.world)[self.rank * batch:(self.rank + 1) * batch]


class ShareDepths(L.Callback):
    """Installs ``RankDepths`` on the module once the DDP group is up."""

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.world_size > 1 and not isinstance(pl_module.depths, RankDepths):
            pl_module.depths = RankDepths(pl_module.depths, trainer.global_rank,
                                          trainer.world_size)


def rank_threads(threads: int | None, devices: int) -> int | None:
    """CPU threads per rank: the run's ``threads`` (or all cores) shared by its ranks."""
    if devices == 1:
        return threads
    return max(1, (threads or os.cpu_count() or 1) // devices)


@contextlib.contextmanager
def data_parallel(cfg: RunConfig) -> Iterator[None]:
    """Runs the body as rank 0 of ``cfg.train.devices`` DDP ranks on this machine: starts the
    other ranks, and afterwards waits for them and leaves the process as it found it (the
    environment, no process group), so the next run in the same process (a reused Ray actor,
    a test session) starts clean."""
    devices = cfg.train.devices
    if devices == 1:
        yield
        return
    keys = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK")
    saved = {k: os.environ.get(k) for k in keys}
    shared = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
              "WORLD_SIZE": str(devices), "NODE_RANK": "0"}
    package_root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    peers: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="parcae-ddp-") as tmp:
        spec = Path(tmp) / "run.pkl"
        spec.write_bytes(pickle.dumps(cfg))
        try:
            os.environ.update(shared, LOCAL_RANK="0")
            for r in range(1, devices):
                env = {**os.environ, **shared, "LOCAL_RANK": str(r), "PYTHONPATH": path}
                peers.append(subprocess.Popen(
                    [sys.executable, "-m", "parcae.trainer", str(spec)], env=env))
            yield
        finally:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            for peer in peers:
                try:
                    peer.wait(timeout=60)
                except subprocess.TimeoutExpired:  # stuck in a collective rank 0 left
                    peer.kill()
                    peer.wait()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peer_main(spec: Path) -> int:
    """A DDP rank other than 0: train this rank's share of the run described in ``spec``."""
    from parcae.run import data_source, fit, plan

    cfg = pickle.loads(spec.read_bytes())
    logging.getLogger("parcae.run").setLevel(logging.ERROR)  # rank 0 has said what it plans
    source = data_source(cfg)
    fitted = fit(cfg, plan(cfg, source), source, source.val_batches(cfg.train.val_batches))
    return 0 if fitted.error is None else 1


if __name__ == "__main__":
    sys.exit(peer_main(Path(sys.argv[1])))
