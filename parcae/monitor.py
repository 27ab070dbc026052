"""Stability monitors: a Lightning callback that watches the loop's states, and the rules that
judge them.

After the first step and every ``every`` steps the monitor runs one fixed-depth pass on a slice
of the batch and records a trace row: state norms per loop step, ||h_T|| relative to the injected
input e, the last step's residual, token correlation and the injection's spectra; at the first
step and every ``lipschitz_every`` steps also the local Lipschitz constant of the recurrent map
(power iteration with Jacobian-vector products).
A non-finite or absurd training loss triggers a row at once.

Divergence is judged on the trace by the rules of ``RULES``, in order: first how the state grows
across loop steps and across training (``geometric_growth``, ``spectral_radius``,
``state_ratio``), then ``non_finite``, and only as a last resort the absolute limits
(``state_norm_limit``, ``loss_limit``). Each rule is a pure function of the trace and the
config, so it can be tested on constructed traces. Divergence stops the trainer and is recorded
with its step, rule and reason; it never raises.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor
from torch.autograd import forward_ad
from torch.nn.attention import SDPBackend, sdpa_kernel

from parcae.config import check
from parcae.model.looped import LoopedLM


@dataclass(frozen=True)
class MonitorConfig:
    """When to measure stability, and what counts as divergence, collapse and learning."""

    every: int = 20
    """Optimizer steps between state-norm traces. Non-finite or over-limit losses and gradients
    are checked every step and trigger a trace at once; every 10 with the Lipschitz estimate
    every 100 cost 2.9-3.3% of step time at tiny and small on 2 CPU threads
    (``benchmarks/train_throughput.py``), hence 20."""
    lipschitz_every: int = 100
    """Optimizer steps between Lipschitz estimates (0 disables). One estimate costs about a
    training step (power iteration with a JVP and a VJP per iteration); every 50 cost 3-4% of
    step time with the traces."""
    power_iters: int = 5
    """Power-iteration steps per Lipschitz estimate."""
    sample: int = 2
    """Sequences of the batch used for the traces."""
    spike_window: int = 50
    """Steps in the running median that loss spikes are measured against."""
    spike_factor: float = 1.5
    """A loss above this multiple of the running median counts as a spike."""
    final_window: int = 20
    """Last training steps whose mean loss is the run's final_train_loss."""
    patience: int = 3
    """Consecutive monitor points over which geometric_growth and spectral_radius must hold."""
    growth_eps: float = 0.1
    """geometric_growth: the step-to-step norm ratio ||h_{t+1}|| / ||h_t|| over the later half
    of the loop steps (at least two ratios, so loops >= 3) stays above 1 + growth_eps."""
    growth_keep: float = 0.8
    """geometric_growth: ... and does not fade: the last ratio's excess over 1 is at least this
    fraction of the first later ratio's (additive growth h_t ~ t e has ratios 1 + 1/t, whose
    excess halves from t = T/2 to T; geometric growth keeps it)."""
    state_growth: float = 0.05
    """Growing state, for geometric_growth and spectral_radius: ||h_T|| rises by more than this
    fraction from each monitor point to the next."""
    max_rho: float = 1.0
    """spectral_radius: rho of the injection's linear part (rho(A-bar); rho(W_1) for linear)
    above this at every one of ``patience`` points while the state grows. Strictly above: add's
    linear part is the identity (rho = 1 exactly), whose growth is additive, not geometric;
    state_ratio judges that."""
    max_state_ratio: float = 500.0
    """state_ratio: ||h_T|| / ||e|| above this. Measured on tiny Austen runs (loops 4): about
    10 for healthy runs, up to 360 for a bounded (contracting) diagonal recurrence whose B grew
    at lr 3e-2, and past 500 within 100 steps for add's additive growth at the same rate."""
    max_state_norm: float = 1.0e4
    """state_norm_limit (last resort): mean state norm above which the run is stopped."""
    max_loss: float = 50.0
    """loss_limit (last resort): training loss (nats/token) above which the run is stopped."""
    learned_margin: float = 0.05
    """A run learned when val_loss < baseline_loss - learned_margin (nats/token; baseline_loss
    is the unigram or chance predictor's loss on the same validation data)."""
    collapse_correlation: float = 0.9
    """A run that trained to the end but did not learn is ``collapsed`` when the token
    correlation of h_T at its last monitored step is at least this (1 = every token the same)."""

    def __post_init__(self) -> None:
        for key in ("every", "power_iters", "sample", "spike_window", "final_window", "patience"):
            check(getattr(self, key) >= 1, key, "must be at least 1")
        check(self.lipschitz_every >= 0, "lipschitz_every", "must be 0 (off) or more")
        check(self.spike_factor > 1, "spike_factor", "must be above 1")
        for key in ("growth_eps", "growth_keep", "state_growth", "max_rho", "max_state_ratio",
                    "max_state_norm", "max_loss"):
            check(getattr(self, key) > 0, key, "must be positive")
        check(self.learned_margin >= 0, "learned_margin", "must be 0 or more")
        check(0 < self.collapse_correlation <= 1, "collapse_correlation",
              "must lie in (0, 1]")


Row = Mapping[str, float]


@dataclass(frozen=True)
class Verdict:
    """A divergence rule that fired."""

    rule: str
    """Its code: a name in RULES, or stop_rule (the sweep's Tune stopper)."""
    reason: str
    """What it saw, with the numbers and the limit."""


def state_norms(row: Row) -> list[float]:
    """Mean ||h_t|| for t = 1..T of a trace row."""
    norms, t = [], 1
    while f"state_norm_{t}" in row:
        norms.append(row[f"state_norm_{t}"])
        t += 1
    return norms


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def later_ratios(row: Row) -> list[float]:
    """Step-to-step ratios ||h_{t+1}|| / ||h_t|| over the later half of the loop steps (at
    least two; none when the loop has fewer than three steps or a norm is zero/non-finite)."""
    norms = state_norms(row)
    if len(norms) < 3 or not _finite(*norms) or min(norms) <= 0:
        return []
    ratios = [b / a for a, b in zip(norms, norms[1:], strict=False)]
    return ratios[-max(2, len(ratios) // 2):]


def _grows_geometrically(row: Row, cfg: MonitorConfig) -> bool:
    ratios = later_ratios(row)
    return bool(ratios) and min(ratios) > 1 + cfg.growth_eps and (
        ratios[-1] - 1 >= cfg.growth_keep * (ratios[0] - 1))


def _state_grows(rows: Sequence[Row], cfg: MonitorConfig) -> bool:
    last = [r["state_norm_last"] for r in rows]
    return _finite(*last) and all(b > (1 + cfg.state_growth) * a
                                  for a, b in zip(last, last[1:], strict=False))


def geometric_growth(trace: Sequence[Row], cfg: MonitorConfig) -> Verdict | None:
    """The state grows geometrically over the later loop steps, at ``patience`` consecutive
    monitor points, while ||h_T|| keeps growing across them."""
    rows = trace[-cfg.patience:]
    if len(rows) < cfg.patience or not all(_grows_geometrically(r, cfg) for r in rows):
        return None
    if not _state_grows(rows, cfg):
        return None
    ratio = min(min(later_ratios(r)) for r in rows)
    return Verdict("geometric_growth", (
        f"geometric_growth: ||h_t+1||/||h_t|| >= {ratio:.3g} over the later loop steps "
        f"(limit 1 + growth_eps = {1 + cfg.growth_eps:.3g}) at {cfg.patience} monitor points "
        f"while ||h_T|| grew {rows[0]['state_norm_last']:.3g} -> "
        f"{rows[-1]['state_norm_last']:.3g}"))


def spectral_radius(trace: Sequence[Row], cfg: MonitorConfig) -> Verdict | None:
    """rho of the injection's linear part above ``max_rho`` at ``patience`` consecutive
    monitor points while ||h_T|| grows across them."""
    rows = trace[-cfg.patience:]
    rhos = [r.get("rho_A", math.nan) for r in rows]
    if len(rows) < cfg.patience or not all(rho > cfg.max_rho for rho in rhos):
        return None
    if not _state_grows(rows, cfg):
        return None
    return Verdict("spectral_radius", (
        f"spectral_radius: rho {min(rhos):.3g}..{max(rhos):.3g} > max_rho {cfg.max_rho:.3g} "
        f"at {cfg.patience} monitor points while ||h_T|| grew "
        f"{rows[0]['state_norm_last']:.3g} -> {rows[-1]['state_norm_last']:.3g}"))


def state_ratio(trace: Sequence[Row], cfg: MonitorConfig) -> Verdict | None:
    """||h_T|| / ||e|| above ``max_state_ratio`` at the last monitor point."""
    ratio = trace[-1].get("state_ratio", math.nan) if trace else math.nan
    if not ratio > cfg.max_state_ratio or not math.isfinite(ratio):
        return None
    return Verdict("state_ratio", f"state_ratio: ||h_T||/||e|| = {ratio:.3g} above "
                   f"max_state_ratio {cfg.max_state_ratio:.3g}")


def non_finite(trace: Sequence[Row], cfg: MonitorConfig) -> Verdict | None:
    """A non-finite loss, gradient norm or state norm at the last monitor point."""
    if not trace:
        return None
    row = trace[-1]
    keys = ("loss", "grad_norm", "max_state_norm", "state_norm_last")
    bad = [k for k in keys if k in row and not math.isfinite(row[k])]
    if not bad:
        return None
    return Verdict("non_finite", "non_finite: " + ", ".join(f"{k} = {row[k]}" for k in bad))


def state_norm_limit(trace: Sequence[Row], cfg: MonitorConfig) -> Verdict | None:
    """Last resort: mean state norm above the absolute ``max_state_norm``."""
    worst = trace[-1].get("max_state_norm", math.nan) if trace else math.nan
    if not worst > cfg.max_state_norm:
        return None
    return Verdict("state_norm_limit", f"state_norm_limit: state norm {worst:.3g} above "
                   f"max_state_norm {cfg.max_state_norm:.3g}")


def loss_limit(trace: Sequence[Row], cfg: MonitorConfig) -> Verdict | None:
    """Last resort: training loss above the absolute ``max_loss``."""
    loss = trace[-1].get("loss", math.nan) if trace else math.nan
    if not loss > cfg.max_loss:
        return None
    return Verdict("loss_limit", f"loss_limit: training loss {loss:.3g} above max_loss "
                   f"{cfg.max_loss:.3g}")


Rule = Callable[[Sequence[Row], MonitorConfig], "Verdict | None"]

RULES: dict[str, Rule] = {
    "geometric_growth": geometric_growth,
    "spectral_radius": spectral_radius,
    "state_ratio": state_ratio,
    "non_finite": non_finite,
    "state_norm_limit": state_norm_limit,
    "loss_limit": loss_limit,
}
"""Divergence rules in the order they are asked; the first that fires is the verdict."""


def judge(trace: Sequence[Row], cfg: MonitorConfig) -> Verdict | None:
    """The first divergence rule that fires on ``trace``, or None."""
    return next((v for rule in RULES.values() if (v := rule(trace, cfg)) is not None), None)


def learned(val_loss: float | None, baseline_loss: float | None,
            cfg: MonitorConfig) -> bool | None:
    """val_loss below baseline_loss by ``learned_margin``; None when either is unmeasured."""
    if val_loss is None or baseline_loss is None:
        return None
    return val_loss < baseline_loss - cfg.learned_margin


def final_status(status: str, did_learn: bool | None, correlation: float | None,
                 cfg: MonitorConfig) -> str:
    """``collapsed`` for a run that trained to the end (``ok``) without learning while its
    tokens' states became one (correlation >= collapse_correlation); else ``status``.
    A run that did not learn but kept distinct token states stays ``ok`` (learned = false)."""
    if status == "ok" and did_learn is False and correlation is not None and (
            correlation >= cfg.collapse_correlation):
        return "collapsed"
    return status


def token_correlation(h: Tensor) -> float:
    """Mean pairwise cosine similarity between token states of a sequence (1 = collapse)."""
    u = torch.nn.functional.normalize(h.float(), dim=-1)
    n = u.shape[1]
    if n < 2:
        return float("nan")
    total = u.sum(dim=1).pow(2).sum(dim=-1)  # |sum u|^2 = n + sum over ordered pairs
    return ((total - n) / (n * (n - 1))).mean().item()


def lipschitz(model: LoopedLM, idx: Tensor, steps: int, iters: int) -> float:
    """Largest singular value of d step(h, e) / d h at h_T, by power iteration on J^T J:
    J v by forward-mode AD (dual numbers), J^T u by backward passes through one recorded
    step."""
    with torch.no_grad():
        e, h, rope = model.encode(idx)
        drive = model.injection.prepare(e)
        for _ in range(steps):
            h = model.step(h, drive, rope)
    h = h.detach().float()

    def f(z: Tensor) -> Tensor:
        return model.step(z, drive, rope).float()

    v = torch.randn_like(h)
    v = v / v.norm()
    sigma = float("nan")
    # forward-mode AD needs the composite (math) attention kernel
    with sdpa_kernel(SDPBackend.MATH):
        with torch.enable_grad():
            z = h.clone().requires_grad_()
            out = f(z)
        for _ in range(iters):
            with torch.no_grad(), forward_ad.dual_level():
                jv = forward_ad.unpack_dual(f(forward_ad.make_dual(h, v))).tangent
            (w,) = torch.autograd.grad(out, z, jv, retain_graph=True)
            sigma = jv.norm().item()
            norm = w.norm()
            if not torch.isfinite(norm) or norm == 0:
                break
            v = w / norm
    return sigma


class StabilityMonitor(L.Callback):
    """Records the stability trace; stops the trainer when a divergence rule fires."""

    def __init__(self, cfg: MonitorConfig, loops: int) -> None:
        self.cfg = cfg
        self.loops = loops
        self.history: list[dict[str, float]] = []
        self.recent: deque[float] = deque(maxlen=cfg.spike_window)
        self.final: deque[float] = deque(maxlen=cfg.final_window)
        self.spikes = 0
        self.diverged_step: int | None = None
        self.verdict: Verdict | None = None

    def diverge(self, trainer: L.Trainer, step: int, verdict: Verdict) -> None:
        if self.diverged_step is None:
            self.diverged_step, self.verdict = step, verdict
        trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        loss = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)
        grad = getattr(pl_module, "last_grad_norm", None)
        # trouble is measured at once, not at the next scheduled point
        alarm = not math.isfinite(loss) or loss > self.cfg.max_loss or (
            grad is not None and not math.isfinite(grad))
        if math.isfinite(loss):
            if len(self.recent) >= 5 and loss > self.cfg.spike_factor * statistics.median(
                    self.recent):
                self.spikes += 1
            self.recent.append(loss)
            self.final.append(loss)
        # step 1 records where training starts from; it also pays torch's one-time setup of
        # forward-mode AD (~0.3 s) inside the run's warm-up instead of a timed step
        if not alarm and step % self.cfg.every and step not in (1, trainer.max_steps):
            return
        x = batch[0]
        every = self.cfg.lipschitz_every
        lipschitz_due = bool(every) and (step == 1 or step % every == 0) and not alarm
        with torch.compiler.set_stance("force_eager"):  # a compiled core: no compiles for this
            metrics = self.measure(pl_module.model, x[: self.cfg.sample], lipschitz_due)
        tokens = step * x.numel() * trainer.world_size  # x is this rank's share of the batch
        row = {"step": float(step), "tokens": float(tokens), "loss": loss,
               **({} if grad is None else {"grad_norm": grad}), **metrics,
               "loss_spikes": float(self.spikes)}
        self.history.append(row)
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"stability/{k}": v for k, v in row.items()
                                        if k != "step" and math.isfinite(v)}, step)
        verdict = judge(self.history, self.cfg)
        if verdict is not None:
            self.diverge(trainer, step, verdict)

    @torch.no_grad()
    def measure(self, model: LoopedLM, idx: Tensor, with_lipschitz: bool) -> dict[str, float]:
        was_training = model.training
        model.eval()
        e, states = model.loop_states(idx, self.loops)
        norms = [h.float().norm(dim=-1).mean().item() for h in states]
        metrics = {f"state_norm_{t + 1}": n for t, n in enumerate(norms)}
        metrics["state_norm_last"] = norms[-1]
        metrics["state_ratio"] = norms[-1] / max(e.float().norm(dim=-1).mean().item(), 1e-12)
        metrics["max_state_norm"] = max(norms)
        last = states[-1].float()
        if len(states) > 1:
            residual = (last - states[-2].float()).norm(dim=-1).mean().item()
            metrics["residual"] = residual
            metrics["rel_residual"] = residual / max(norms[-1], 1e-12)
            metrics["state_growth"] = (math.log(max(norms[-1], 1e-30))
                                       - math.log(max(norms[0], 1e-30))) / (len(norms) - 1)
        metrics["token_correlation"] = token_correlation(last)
        if all(torch.isfinite(p).all() for p in model.injection.parameters()):
            metrics.update(model.injection.spectra())  # eigenvalues of NaN weights raise
        metrics["sigma_C"] = torch.linalg.matrix_norm(model.C.weight.float(), 2).item()
        if with_lipschitz and model.cfg.looped:
            metrics["lipschitz"] = lipschitz(model, idx, self.loops, self.cfg.power_iters)
        model.train(was_training)
        return metrics

    def summary(self) -> dict[str, float | int | str | None]:
        """The run-table stability columns, from the whole history."""
        def last(key: str) -> float | None:
            return next((h[key] for h in reversed(self.history) if key in h), None)

        def most(key: str) -> float | None:
            return max((h[key] for h in self.history if not math.isnan(h[key])), default=None)

        return {
            "max_state_norm": most("max_state_norm"),
            "max_state_ratio": most("state_ratio"),
            "final_rel_residual": last("rel_residual"),
            "rho_A": last("rho_A"),
            "lipschitz": last("lipschitz"),
            "token_correlation": last("token_correlation"),
            "final_train_loss": statistics.fmean(self.final) if self.final else None,
            "loss_spikes": self.spikes,
            "diverged_step": self.diverged_step,
            "diverged_rule": self.verdict.rule if self.verdict else None,
            "diverged_reason": self.verdict.reason if self.verdict else None,
        }
