"""Training a looped LM as a LightningModule: depth sampling, optimizer, schedule."""

from __future__ import annotations

import math
import shutil
import statistics
import warnings
from dataclasses import dataclass
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from parcae.compute import account
from parcae.config import check
from parcae.data import IGNORE_INDEX, Batch, exact_match
from parcae.model import ModelConfig, build_model
from parcae.model.blocks import RMSNorm
from parcae.model.injection import Injection


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, budget and evaluation settings of one run."""

    seed: int = 0
    """Seed for weights, data order and depth sampling."""
    lr: float = 3.0e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    warmup: float = 0.05
    """Fraction of steps of linear warmup."""
    cooldown: float = 0.2
    """Fraction of steps of linear decay to min_lr_ratio at the end (warmup-stable-decay)."""
    weight_decay: float = 0.1
    """AdamW decay on matrices; injection parameters, norms and C are not decayed."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    tokens: int | None = None
    """Training token budget D. Give this or `flops`; with neither, 150k tokens."""
    flops: float | None = None
    """Training FLOP budget C; tokens are derived from it via parcae.compute."""
    val_every: int = 100
    """Optimizer steps between validation passes."""
    val_batches: int = 4
    """Validation batches per pass (the same fixed batches every time)."""
    test_time_loops: tuple[int, ...] | None = None
    """Test-time loop counts evaluated at the end; default 1..2*loops."""
    log_every: int = 10
    """Optimizer steps between logged training metrics."""
    device: Literal["auto", "cpu", "gpu"] = "auto"
    """Where to train; auto takes a GPU when one is visible."""
    threads: int | None = None
    """torch intra-op threads on CPU (sweeps set one per trial's CPUs)."""
    compile: Literal["auto", "on", "off"] = "auto"
    """torch.compile the recurrent core (dynamic shapes: active-only loop steps run a varying
    number of sequences). auto = on when training on a GPU, off on CPU. Measured on a 2-core CPU
    (2 threads, batch 8 x 128): compiling took 67 s at the tiny preset (146 s at small, busy
    machine) for steady steps 1.14x faster than eager, so a CPU run shorter than ~10 minutes
    loses time (the default 150k-token tiny run trains in ~12 s). On a GPU it is on because
    eager loop steps there are bound by kernel launches that compiling fuses (not yet measured
    here: benchmarks/train_throughput.py --compile does). ``on`` forces it (long CPU runs); the
    compile time is recorded apart from the speed (``warmup_seconds``)."""
    devices: int = 1
    """Devices (GPUs, or CPU processes) one run trains on; above 1 it trains with DDP,
    data.batch_size being the global batch they share (see parcae.trainer)."""

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", "must be positive")
        for key in ("beta1", "beta2"):
            check(0 <= getattr(self, key) < 1, key, "AdamW's betas lie in [0, 1)")
        check(self.weight_decay >= 0, "weight_decay", "must be 0 (off) or positive")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must lie in [0, 1]")
        check(self.warmup >= 0 and self.cooldown >= 0 and self.warmup + self.cooldown <= 1,
              "warmup", "warmup and cooldown are fractions in [0, 1] summing to at most 1")
        check(self.tokens is None or self.flops is None, "tokens",
              "give a token budget or a FLOP budget, not both")
        check(self.tokens is None or self.tokens > 0, "tokens", "must be positive")
        check(self.flops is None or self.flops > 0, "flops", "must be positive")
        check(self.grad_clip >= 0, "grad_clip", "must be 0 (off) or positive")
        for key in ("val_every", "val_batches", "log_every"):
            check(getattr(self, key) >= 1, key, "must be at least 1")
        check(self.threads is None or self.threads >= 1, "threads", "must be at least 1")
        check(self.devices >= 1, "devices", "must be at least 1")
        check(not self.test_time_loops or min(self.test_time_loops) >= 1, "test_time_loops",
              "loop counts must be at least 1")


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Warmup-stable-decay multiplier of the peak learning rate."""
    warm = max(1, round(cfg.warmup * total))
    cool = round(cfg.cooldown * total)
    if step < warm:
        return (step + 1) / warm
    if step >= total - cool:
        frac = (total - step) / max(cool, 1)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * max(frac, 0.0)
    return 1.0


def use_compile(setting: str, device_type: str) -> bool:
    """Whether ``train.compile`` compiles on this device; inductor on CPU needs a C++
    compiler, without which ``on`` falls back to eager with a warning."""
    wanted = setting == "on" or (setting == "auto" and device_type == "cuda")
    if wanted and device_type == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
        warnings.warn("train.compile: no C++ compiler (g++/c++) on PATH for torch.compile on "
                      "CPU; training without compiling", stacklevel=2)
        return False
    return wanted


class DepthSampler:
    """Per-sequence loop counts T ~ max(Poisson(loops), 1), or the fixed depth
    (``ModelConfig.fixed_depth``: fixed sampling, loops = 1, or the baseline's single pass)."""

    def __init__(self, cfg: ModelConfig, seed: int) -> None:
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(seed + 1)

    def __call__(self, batch: int) -> Tensor:
        if not self.cfg.looped:
            return torch.ones(batch, dtype=torch.long)
        if self.cfg.fixed_depth:
            return torch.full((batch,), self.cfg.loops, dtype=torch.long)
        rate = torch.full((batch,), float(self.cfg.loops))
        return torch.poisson(rate, generator=self.gen).long().clamp_(min=1)


def lm_loss(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX)


class LoopedLMModule(L.LightningModule):
    def __init__(self, model_cfg: ModelConfig, cfg: TrainConfig, total_steps: int,
                 answers: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.answers = answers  # the data scores answers: exact-match accuracy is meaningful
        self.total_steps = total_steps
        self.model = build_model(model_cfg)
        self.depths = DepthSampler(model_cfg, cfg.seed)
        self.last_grad_norm: float | None = None
        # (sequence, loop step) pairs the training forwards ran with and without gradient
        # under the model's schedule (parcae.model.schedule): executed, not expected
        self.loop_steps: dict[str, int] = {"grad": 0, "nograd": 0}
        self.compiled = False
        # tokens per optimizer step (all ranks) and planned FLOPs per token (parcae.compute):
        # the curves' x-axes, set by the first training step
        self.step_tokens = 0
        self.flops_per_token: float | None = None
        self.val_batches: list[tuple[float, float | None]] = []
        """(loss, answer accuracy or None without answers) of each batch of this validation."""
        self.val_loss: float | None = None
        """Mean loss of the latest validation pass."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        steps = self.depths(x.shape[0])  # on the host, where the loop schedule is planned
        loss = lm_loss(self.model(x, steps, self.model.cfg.mu_bwd), y)
        grad, nograd = self.model.schedule.executed(steps.tolist(), self.model.cfg.mu_bwd)
        self.loop_steps = {"grad": self.loop_steps["grad"] + grad,
                           "nograd": self.loop_steps["nograd"] + nograd}
        if not self.step_tokens:
            self.step_tokens = x.numel() * self.trainer.world_size
            self.flops_per_token = account(self.model.cfg, x.shape[1]).flops_per_token
        if self.global_step % self.cfg.log_every == 0:
            self.log_curves({"train/loss": loss.detach().item(),
                             "train/mean_depth": float(steps.float().mean()),
                             "train/lr": self.lr_schedulers().get_last_lr()[0]},
                            self.global_step + 1)
        return loss

    def log_curves(self, metrics: dict[str, float], step: int, axes: bool = True) -> None:
        """Curves straight to the logger, at ``step`` = optimizer steps completed (the step of
        the monitors' and the final metrics), with the tokens and FLOPs trained by then: the
        x-axes on which runs of other batch sizes or depths overlay. Lightning's ``self.log``
        held each training value until its own ``log_every_n_steps`` gate, a step off ours
        (step 0's values were logged as step 9), and logged validation one step early; its
        bookkeeping also cost 1% of a tiny step (LOG.md, 2026-12-05)."""
        if self.logger is not None:
            tokens = step * self.step_tokens
            if axes:  # the grad norm shares its step with the loss, which logs them
                metrics = {**metrics, "tokens": float(tokens),
                           "flops": tokens * (self.flops_per_token or 0.0)}
            self.logger.log_metrics(metrics, step)

    def transfer_batch_to_device(self, batch: Batch, device: torch.device,
                                 dataloader_idx: int) -> Batch:
        """A batch is an (x, y) pair: moved as such, not by Lightning's walk over any
        collection (~1% of a small model's step on CPU)."""
        return Batch(*(t.to(device, non_blocking=True) for t in batch))

    def on_validation_epoch_start(self) -> None:
        self.val_batches = []

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x, self.model.cfg.loops if self.model.cfg.looped else 1)
        accuracy = exact_match(logits, y).float().mean().item() if self.answers else None
        self.val_batches.append((lm_loss(logits, y).item(), accuracy))

    def on_validation_epoch_end(self) -> None:
        """Mean validation loss (and answer accuracy) over the fixed validation batches; under
        DDP every rank validates on all of them, so the ranks agree."""
        losses, accuracies = zip(*self.val_batches, strict=True)
        self.val_loss = statistics.fmean(losses)
        metrics = {"val/loss": self.val_loss}
        if self.answers:
            metrics["val/accuracy"] = statistics.fmean(accuracies)
        self.log_curves(metrics, self.global_step)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        clip = self.cfg.grad_clip or math.inf
        self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters(), clip))
        if not math.isfinite(self.last_grad_norm):
            # skip this update so the weights recorded with the divergence stay finite
            optimizer.zero_grad(set_to_none=False)
        if self.global_step % self.cfg.log_every == 0:
            self.log_curves({"train/grad_norm": self.last_grad_norm}, self.global_step + 1,
                            axes=False)

    def configure_model(self) -> None:
        """Compile the core once the device is known (``TrainConfig.compile``)."""
        if not self.compiled and use_compile(self.cfg.compile,
                                             self.trainer.strategy.root_device.type):
            self.model.compile_core()
            self.compiled = True

    def configure_optimizers(self):
        no_decay = {id(p) for m in self.model.modules() if isinstance(m, RMSNorm | Injection)
                    for p in m.parameters()}
        no_decay.add(id(self.model.C.weight))
        params = list(self.model.parameters())
        groups = [
            {"params": [p for p in params if id(p) not in no_decay],
             "weight_decay": self.cfg.weight_decay},
            {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
        ]
        # one fused kernel per group, on CPU too: the per-tensor loop is ~3% of a small step
        opt = torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2),
                                fused=True)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, self.total_steps, self.cfg))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def test_time_curve(self, batches: list[tuple[Tensor, Tensor]],
                        loops: tuple[int, ...]) -> dict[int, dict[str, float | None]]:
        """Validation loss and answer accuracy (None without answers) at each loop count T."""
        self.model.eval()
        curve = {}
        for t in loops:
            losses, accs = [], []
            for x, y in batches:
                logits = self.model(x.to(self.device), t)
                losses.append(lm_loss(logits, y.to(self.device)).item())
                accs.append(exact_match(logits, y.to(self.device)).float().mean().item())
            curve[t] = {"loss": sum(losses) / len(losses),
                        "accuracy": sum(accs) / len(accs) if self.answers else None}
        return curve
