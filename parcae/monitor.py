"""Stability monitors (DESIGN.md §3): a Lightning callback that watches the loop's states.

Every ``every`` steps it runs one fixed-depth pass on a slice of the batch and records
state norms per loop step, the last step's residual, token correlation and the injection's
spectra; every ``lipschitz_every`` steps it estimates the local Lipschitz constant of the
whole recurrent map by power iteration with Jacobian-vector products. Divergence stops the
trainer and is recorded with its step and reason; it never raises.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from parcae.config import check
from parcae.model.looped import LoopedLM


@dataclass(frozen=True)
class MonitorConfig:
    """When to measure stability and what counts as divergence."""

    every: int = 10
    """Optimizer steps between state-norm traces."""
    lipschitz_every: int = 50
    """Optimizer steps between Lipschitz estimates (0 disables)."""
    power_iters: int = 5
    """Power-iteration steps per Lipschitz estimate."""
    sample: int = 2
    """Sequences of the batch used for the traces."""
    spike_window: int = 50
    """Steps in the running median that loss spikes are measured against."""
    spike_factor: float = 1.5
    """A loss above this multiple of the running median counts as a spike."""
    max_state_norm: float = 1.0e4
    """Mean state norm above which the run is stopped as diverged."""
    max_loss: float = 50.0
    """Training loss (nats/token) above which the run is stopped as diverged."""

    def __post_init__(self) -> None:
        for key in ("every", "power_iters", "sample", "spike_window"):
            check(getattr(self, key) >= 1, key, "must be at least 1")
        check(self.lipschitz_every >= 0, "lipschitz_every", "must be 0 (off) or more")
        check(self.spike_factor > 1, "spike_factor", "must be above 1")
        check(self.max_state_norm > 0, "max_state_norm", "must be positive")
        check(self.max_loss > 0, "max_loss", "must be positive")


def token_correlation(h: Tensor) -> float:
    """Mean pairwise cosine similarity between token states of a sequence (1 = collapse)."""
    u = torch.nn.functional.normalize(h.float(), dim=-1)
    n = u.shape[1]
    if n < 2:
        return float("nan")
    total = u.sum(dim=1).pow(2).sum(dim=-1)  # |sum u|^2 = n + sum over ordered pairs
    return ((total - n) / (n * (n - 1))).mean().item()


def lipschitz(model: LoopedLM, idx: Tensor, steps: int, iters: int) -> float:
    """Largest singular value of d step(h, e) / d h at h_T, by power iteration on J^T J."""
    with torch.no_grad():
        e, h, rope = model.encode(idx)
        for _ in range(steps):
            h = model.step(h, e, rope)
    h = h.detach().float()
    e = e.detach().float()

    def f(z: Tensor) -> Tensor:
        return model.step(z, e, rope).float()

    v = torch.randn_like(h)
    v = v / v.norm()
    sigma = float("nan")
    # forward-mode AD needs the composite (math) attention kernel
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        _, pullback = torch.func.vjp(f, h)
        for _ in range(iters):
            jv = torch.func.jvp(f, (h,), (v,))[1]
            (w,) = pullback(jv)
            sigma = jv.norm().item()
            norm = w.norm()
            if not torch.isfinite(norm) or norm == 0:
                break
            v = w / norm
    return sigma


class StabilityMonitor(L.Callback):
    """Records stability figures; stops the trainer when loss or state norm diverges."""

    def __init__(self, cfg: MonitorConfig, loops: int) -> None:
        self.cfg = cfg
        self.loops = loops
        self.history: list[dict[str, float]] = []
        self.recent: deque[float] = deque(maxlen=cfg.spike_window)
        self.spikes = 0
        self.diverged_step: int | None = None
        self.diverged_reason: str | None = None

    def diverge(self, trainer: L.Trainer, step: int, reason: str) -> None:
        if self.diverged_step is None:
            self.diverged_step, self.diverged_reason = step, reason
        trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        loss = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)
        if not math.isfinite(loss):
            return self.diverge(trainer, step, "non-finite loss")
        grad_norm = getattr(pl_module, "last_grad_norm", None)
        if grad_norm is not None and not math.isfinite(grad_norm):
            return self.diverge(trainer, step, "non-finite gradient norm")
        if loss > self.cfg.max_loss:
            return self.diverge(trainer, step, f"loss {loss:.3g} above max_loss")
        if len(self.recent) >= 5 and loss > self.cfg.spike_factor * statistics.median(self.recent):
            self.spikes += 1
        self.recent.append(loss)
        if step % self.cfg.every and step != trainer.max_steps:
            return None
        metrics = self.measure(pl_module.model, batch[0][: self.cfg.sample], step)
        metrics["loss_spikes"] = float(self.spikes)
        self.history.append({"step": float(step), **metrics})
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"stability/{k}": v for k, v in metrics.items()}, step)
        worst = metrics["max_state_norm"]
        if not math.isfinite(worst) or worst > self.cfg.max_state_norm:
            self.diverge(trainer, step, f"state norm {worst:.3g} above max_state_norm")
        return None

    @torch.no_grad()
    def measure(self, model: LoopedLM, idx: Tensor, step: int) -> dict[str, float]:
        was_training = model.training
        model.eval()
        _, states = model.loop_states(idx, self.loops)
        norms = [h.float().norm(dim=-1).mean().item() for h in states]
        metrics = {f"state_norm_{t + 1}": n for t, n in enumerate(norms)}
        metrics["max_state_norm"] = max(norms)
        last = states[-1].float()
        if len(states) > 1:
            residual = (last - states[-2].float()).norm(dim=-1).mean().item()
            metrics["residual"] = residual
            metrics["rel_residual"] = residual / max(norms[-1], 1e-12)
            metrics["state_growth"] = (math.log(max(norms[-1], 1e-30))
                                       - math.log(max(norms[0], 1e-30))) / (len(norms) - 1)
        metrics["token_correlation"] = token_correlation(last)
        metrics.update(model.injection.spectra())
        metrics["sigma_C"] = torch.linalg.matrix_norm(model.C.weight.float(), 2).item()
        every = self.cfg.lipschitz_every
        if every and step % every == 0 and model.cfg.looped:
            metrics["lipschitz"] = lipschitz(model, idx, self.loops, self.cfg.power_iters)
        model.train(was_training)
        return metrics

    def summary(self) -> dict[str, float | int | str | None]:
        """The run-table stability columns, from the whole history."""
        def last(key: str) -> float | None:
            return next((h[key] for h in reversed(self.history) if key in h), None)

        norms = [h["max_state_norm"] for h in self.history]
        return {
            "max_state_norm": max(norms) if norms else None,
            "final_rel_residual": last("rel_residual"),
            "rho_A": last("rho_A"),
            "lipschitz": last("lipschitz"),
            "loss_spikes": self.spikes,
            "diverged_step": self.diverged_step,
            "diverged_reason": self.diverged_reason,
        }
