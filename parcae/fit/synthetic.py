"""Run tables drawn from known laws with noise: for recovery tests, the benchmark and demos.

Loss noise is multiplicative (log-normal with standard deviation ``noise`` in log space),
matching the fits' log-space residuals.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parcae.fit.table import RUNS_FILE, TEST_TIME_FILE
from parcae.runtable import COLUMNS, TEST_TIME_COLUMNS


@dataclass(frozen=True)
class Truth:
    """Parameters of the laws a synthetic sweep is drawn from (Chinchilla-like values)."""

    E: float = 1.8
    A: float = 406.4
    alpha: float = 0.34
    B: float = 410.7
    beta: float = 0.28
    Z: float = 0.6
    """Test-time gain: loss at T is L_train + Z exp(-z T / loops)."""
    z: float = 1.5
    core_params: float = 2e7
    """Parameters of the shared core; unrolled N = other + loops * core."""
    other_params: float = 1e7


def parametric_loss(n: np.ndarray, d: np.ndarray, t: Truth) -> np.ndarray:
    return t.E + t.A * n ** -t.alpha + t.B * d ** -t.beta


def _noisy(loss: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    return loss * np.exp(rng.normal(0.0, noise, np.shape(loss)))


def sweep(rng: np.random.Generator, budgets: np.ndarray, loops: tuple[float, ...], seeds: int,
          noise: float, truth: Truth = Truth(), test_time: tuple[float, ...] = ()
          ) -> tuple[list[dict], list[dict]]:
    """A loop-vs-data sweep: every (budget, loops, seed) trains N_unrolled on D = C / 6N.

    Loss follows the unified law; ``val_loss`` is taken at T = loops. With ``test_time``
    each run also gets a curve at those T (test_time.csv rows).
    """
    runs, curves = [], []
    for c in budgets:
        for mu in loops:
            n = truth.other_params + mu * truth.core_params
            d = c / (6 * n)
            train = parametric_loss(n, d, truth)
            for seed in range(seeds):
                run_id = f"c{c:.3g}-mu{mu:g}-s{seed}"
                runs.append({
                    "run_id": run_id, "status": "ok", "seed": seed,
                    "params": truth.other_params + truth.core_params,
                    "params_unrolled": n, "loops": mu, "tokens": d, "flops": c,
                    "val_loss": float(_noisy(train + truth.Z * np.exp(-truth.z), noise, rng)),
                    "max_state_norm": float(rng.uniform(1, 10)),
                    "rho_A": float(rng.uniform(0.3, 0.6)),
                })
                ts = np.array(test_time, dtype=float)
                losses = _noisy(train + truth.Z * np.exp(-truth.z * ts / mu), noise, rng)
                curves += [{"run_id": run_id, "T": int(t), "val_loss": float(v)}
                           for t, v in zip(ts, losses, strict=True)]
    return runs, curves


def isoflop_sweep(rng: np.random.Generator, budgets: np.ndarray, loops: tuple[float, ...],
                  loops_exponent: float, loops_at_1e18: float, params: float, noise: float,
                  curvature: float = 0.05) -> list[dict]:
    """Loss exactly parabolic in log loops at each budget, minimum at mu* = k C^x.

    With N fixed, D = C / (6 N mu), so D* = C / (6 N mu*) scales as C^(1 - x).
    """
    runs = []
    for c in budgets:
        best = loops_at_1e18 * (c / 1e18) ** loops_exponent
        for mu in loops:
            loss = 2.0 + 40 * c ** -0.1 + curvature * np.log(mu / best) ** 2
            runs.append({"run_id": f"c{c:.3g}-mu{mu:g}", "status": "ok", "params": params,
                         "params_unrolled": params * mu, "loops": mu,
                         "tokens": c / (6 * params * mu), "flops": c,
                         "val_loss": float(_noisy(loss, noise, rng))})
    return runs


def compute_optimal_params(c: float, t: Truth = Truth()) -> float:
    """N_opt(C) of the parametric law with C = 6 N D (Hoffmann et al., 2022)."""
    a = t.beta / (t.alpha + t.beta)
    g = (t.alpha * t.A / (t.beta * t.B)) ** (1 / (t.alpha + t.beta))
    return g * (c / 6) ** a


def isoflop_published(rng: np.random.Generator, budgets: np.ndarray, per_budget: int,
                      noise: float, truth: Truth = Truth(), spread: float = 1.5) -> list[dict]:
    """A published-style isoFLOP table: only ``params, tokens, val_loss``.

    At each budget, ``per_budget`` sizes spaced evenly in log N within ``spread`` (natural
    log) of N_opt, trained on D = C / 6N; loss from the parametric law with noise.
    """
    runs = []
    for c in budgets:
        for n in compute_optimal_params(c, truth) * np.exp(np.linspace(-spread, spread,
                                                                       per_budget)):
            d = c / (6 * n)
            runs.append({"params": float(n), "tokens": float(d), "val_loss": float(
                _noisy(parametric_loss(n, d, truth), noise, rng))})
    return runs


def write(folder: Path, runs: list[dict], curves: list[dict] | None = None) -> Path:
    """Write runs.csv (columns in run-table order, only those present) and test_time.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    present = {k for r in runs for k in r}
    header = [c for c in COLUMNS if c in present] + sorted(present - set(COLUMNS))
    with (folder / RUNS_FILE).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(runs)
    if curves:
        extra = sorted({k for r in curves for k in r} - set(TEST_TIME_COLUMNS))
        with (folder / TEST_TIME_FILE).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=[*TEST_TIME_COLUMNS, *extra])
            writer.writeheader()
            writer.writerows(curves)
    return folder / RUNS_FILE
