"""Fit specs: frozen dataclasses one-to-one with ``fits/*.yaml``.

The defaults here *are* the shipped ``fits/default.yaml`` (a test keeps the two equal), so
the command behaves the same with no ``--spec`` as with the default file.

Laws are fitted in log-space coordinates (``log_E`` for E = exp(log_E), ...), the
parameterisation of the best replications: every law is then a log-sum-exp of terms linear
in its coordinates, which keeps the optimizer well behaved. Initial grids and bounds are
given in those coordinates, except the floor (``E``, ``L_inf``): its starts and bounds are
fractions of the smallest loss the fitted points reach, so they suit any unit of loss.
fits.json reports the natural parameters (E, A, alpha, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from parcae.config import ConfigError, build, check, load_yaml, set_dotted, to_dict


@dataclass(frozen=True)
class Coord:
    """One optimizer coordinate: its starting values and box bounds."""

    init: tuple[float, ...]
    """Starting values; the start grid is the product over all coordinates of a law."""
    lo: float | None = None
    """Lower bound (L-BFGS-B box); empty for none. Log coefficients (log_A, ...) take none."""
    hi: float | None = None
    """Upper bound; empty for none."""

    def __post_init__(self) -> None:
        check(len(self.init) > 0, "init", "needs at least one starting value")
        lo = -math.inf if self.lo is None else self.lo
        hi = math.inf if self.hi is None else self.hi
        check(lo < hi, "lo", f"must be below hi ({self.hi})")
        check(all(lo <= v <= hi for v in self.init), "init",
              f"starting values must lie within [lo, hi] = [{self.lo}, {self.hi}]")


_FLOOR = (0.2, 0.5, 0.8, 0.95)
_FLOOR_LO = 1e-3  # E >= 0 in effect: a floor this low means the curve has not bent yet
_LOG_COEF = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
_EXPONENT = (0.1, 0.3, 0.6, 1.0)


@dataclass(frozen=True)
class ComputeSpec:
    """L(C) = E + A * C^(-alpha), per loop count and over all runs."""

    enabled: bool = True
    """Fit this law."""
    per_loops: bool = True
    """Also fit one curve per distinct ``loops`` value."""
    frontier: bool = False
    """Also fit the compute frontier: the lowest loss at each FLOP budget (subset ``frontier``)."""
    min_points: int = 5
    """Fewest usable runs a curve needs (3 parameters plus 2 degrees of freedom)."""
    E: Coord = Coord(_FLOOR, _FLOOR_LO, 1.0)
    """Irreducible loss E as a fraction of the smallest fitted loss (E stays below it)."""
    log_A: Coord = Coord(_LOG_COEF)
    """log of the compute coefficient A."""
    alpha: Coord = Coord((0.05, 0.1, 0.2, 0.4, 0.8), 0.0, 5.0)
    """Compute exponent."""


@dataclass(frozen=True)
class ParametricSpec:
    """L(N, D) = E + A * N^(-alpha) + B * D^(-beta)."""

    enabled: bool = True
    """Fit this law."""
    params_column: Literal["auto", "params", "params_unrolled"] = "auto"
    """N: ``auto`` takes ``params_unrolled`` when loops vary across runs, else ``params``."""
    min_points: int = 8
    """Fewest usable runs the fit needs (5 parameters plus 3 degrees of freedom)."""
    E: Coord = Coord(_FLOOR, _FLOOR_LO, 1.0)
    """E as a fraction of the smallest fitted loss."""
    log_A: Coord = Coord(_LOG_COEF)
    """log A (weakly identified; trust alpha, beta and E first)."""
    alpha: Coord = Coord(_EXPONENT, 0.0, 5.0)
    """Parameter exponent."""
    log_B: Coord = Coord(_LOG_COEF)
    """log B (weakly identified)."""
    beta: Coord = Coord(_EXPONENT, 0.0, 5.0)
    """Data exponent."""


@dataclass(frozen=True)
class IsoflopSpec:
    """Per-budget parabolas of loss in log <axis>; power laws <axis>* = k C^x of the minima."""

    enabled: bool = True
    """Fit this analysis."""
    axes: tuple[str, ...] = ("loops", "tokens")
    """Run-table columns whose optimum per budget is found (``params`` gives Chinchilla's
    approach 2, N* = k C^a). An axis that does not vary within budgets is skipped with a reason."""
    min_budgets: int = 3
    """Fewest FLOP budgets with a usable parabola (regression intervals need 3)."""
    min_points_per_budget: int = 3
    """Fewest runs with distinct axis values a budget needs for its parabola."""
    window: float = 1.5
    """Half-width, in natural-log units of the axis, of the window around a budget's lowest
    loss in which the parabola is fitted (the 3 nearest points when fewer fall inside)."""
    require_interior_minimum: bool = True
    """Drop a budget whose lowest loss is at the edge of its sampled axis range, or whose
    parabola minimum lies outside it (listed with the reason)."""

    def __post_init__(self) -> None:
        check(len(self.axes) > 0, "axes", "needs at least one column")
        check(self.window > 0, "window", "must be positive")


@dataclass(frozen=True)
class TestTimeSpec:
    """L(T) = L_inf + Z * exp(-z * T) per trained model, over its test-time curve."""

    __test__ = False  # not a pytest class despite the name

    enabled: bool = True
    """Fit this law."""
    metric: str = "val_loss"
    """Column of test_time.csv fitted (e.g. ``val_accuracy``); lower must be better after
    ``transform``."""
    transform: Literal["none", "one_minus", "hundred_minus"] = "none"
    """Turn an accuracy-like metric into an error: ``one_minus`` 1 - acc (fractions),
    ``hundred_minus`` 100 - acc (percentages)."""
    min_points: int = 4
    """Fewest curve points a model needs (3 parameters plus 1)."""
    exclude_overthinking: bool = True
    """Leave out points past the curve's minimum that rise above it (always listed)."""
    overthinking_tol: float = 0.01
    """Relative rise over the curve's minimum that counts as overthinking."""
    saturation_tol: float = 0.002
    """Flag ``not_saturated`` when the last step of T still lowers the loss by more than this
    fraction (L_inf is then an extrapolation)."""
    monotone_tol: float = 0.005
    """Flag ``non_monotone`` when a fitted point is worse than an earlier one by more than this
    fraction plus three robust standard deviations of the fit's log residuals (noise)."""
    bootstrap: int = 200
    """Bootstrap replicates per model (curve points are resampled; one fit per model)."""
    refine: int = 2
    """Grid starts L-BFGS-B runs from per model (overrides solver.refine: 3 parameters)."""
    L_inf: Coord = Coord((0.5, 0.8, 0.95, 1.0), _FLOOR_LO, 1.05)
    """Loss with unbounded test-time loops, as a fraction of the curve's smallest loss (the
    upper bound is also capped at the curve's largest loss: L_inf stays in its range)."""
    log_Z: Coord = Coord((-3.0, -1.5, 0.0, 1.0))
    """log of the test-time gain Z."""
    z: Coord = Coord((0.05, 0.2, 0.5, 1.0, 2.0), 0.0, 20.0)
    """Decay rate per test-time loop."""


@dataclass(frozen=True)
class UnifiedSpec:
    """L(mu, D, T) = E + A * N^(-alpha) + B * D^(-beta) + Z * exp(-z * T / mu) across models."""

    enabled: bool = True
    """Fit this law (needs test_time.csv)."""
    min_runs: int = 8
    """Fewest models with test-time curves the fit needs."""
    E: Coord = Coord((0.3, 0.6, 0.9), _FLOOR_LO, 1.0)
    """E as a fraction of the smallest fitted loss."""
    log_A: Coord = Coord((0.0, 5.0, 10.0, 15.0, 20.0))
    """log A."""
    alpha: Coord = Coord((0.2, 0.4, 0.8), 0.0, 5.0)
    """Parameter exponent."""
    log_B: Coord = Coord((0.0, 5.0, 10.0, 15.0, 20.0))
    """log B."""
    beta: Coord = Coord((0.2, 0.4, 0.8), 0.0, 5.0)
    """Data exponent."""
    log_Z: Coord = Coord((-2.0, 0.0))
    """log Z."""
    z: Coord = Coord((0.3, 1.0, 3.0), 0.0, 50.0)
    """Decay rate per test-time loop relative to the training loop count mu."""


@dataclass(frozen=True)
class SolverSpec:
    """Huber loss on log residuals, multi-start L-BFGS-B run to convergence."""

    loss: Literal["huber"] = "huber"
    """Loss on log-space residuals log(L_pred) - log(L_obs)."""
    delta: float = 1e-3
    """Huber delta on log residuals."""
    refine: int = 8
    """Grid starts (lowest objective first) that L-BFGS-B runs from; the best result is kept."""
    ftol: float = 1e-14
    """L-BFGS-B relative objective tolerance (tight: an early stop returns the start point)."""
    gtol: float = 1e-10
    """L-BFGS-B projected-gradient tolerance."""
    maxiter: int = 20000
    """L-BFGS-B iteration cap (hitting it is reported as not converged)."""

    def __post_init__(self) -> None:
        check(self.delta > 0, "delta", "must be positive")
        check(self.refine >= 1, "refine", "must be at least 1")


@dataclass(frozen=True)
class BootstrapSpec:
    """Percentile bootstrap over runs for 95% confidence intervals."""

    n: int = 200
    """Replicates per fit (test_time has its own count). Replicates are kept in
    ``bootstrap.npz`` beside fits.json."""
    seed: int = 0
    """Base seed; replicate i of a fit uses a seed derived from it, so results repeat."""
    workers: int = 2
    """Worker processes; 1 runs the replicates in this process."""

    def __post_init__(self) -> None:
        check(self.n >= 0, "n", "must be 0 (no intervals) or more")
        check(self.workers >= 1, "workers", "must be at least 1")


@dataclass(frozen=True)
class HeldoutSpec:
    """Extrapolation check: refit without the largest budget and predict it."""

    rule: Literal["largest_budget", "none"] = "largest_budget"
    """``largest_budget``: hold out the largest FLOP budget (the largest T for test time)."""
    budget_rel_tol: float = 0.05
    """Runs whose FLOPs differ by less than this fraction share a budget."""
    min_runs: int = 3
    """Fewest runs the held-out budget needs; with fewer the check is skipped with a reason."""


@dataclass(frozen=True)
class FlagSpec:
    """When a fitted law counts as identified; each failed check is a flag on the record."""

    bound_tol: float = 1e-3
    """A coordinate this close to a bound (log units for E, A, ...; raw for exponents) is
    ``at_bound``."""
    wide_ci_factor: float = 3.0
    """``wide_ci`` when an exponent's, E's or L_inf's interval has hi / lo above this factor
    (or reaches zero or a bound)."""
    min_r2: float = 0.0
    """``poor_fit`` when R² is at most this (no better than a constant)."""
    degenerate_tol: float = 1e-3
    """``degenerate`` when a term changes the loss by less than this fraction of the mean loss
    over the fitted points (z or Z ~ 0: the curve is a constant)."""
    wide_ci_abs: float = 0.05
    """Width a signed exponent's interval may always have (an isoFLOP exponent near 0)."""
    min_dof: int = 2
    """``few_points`` when points minus parameters is below this."""
    wide_coef_factor: float = 1.0e4
    """``wide_ci`` when a coefficient's (A, B, Z) interval has hi / lo above this factor or
    reaches zero: coefficients are weakly identified by nature, so only intervals spanning
    orders of magnitude are flagged."""


@dataclass(frozen=True)
class RunsSpec:
    """Which rows of runs.csv enter the laws."""

    include_not_learned: bool = False
    """Fit runs with ``learned = false`` (loss not below the baseline predictor's)."""
    include_collapsed: bool = False
    """Fit runs with ``status = collapsed`` (trained, but the state collapsed to one token)."""
    duplicates: Literal["error", "last"] = "error"
    """Repeated run_ids: ``error`` names them; ``last`` keeps each id's last row (a message
    lists the ids)."""


@dataclass(frozen=True)
class OutlierSpec:
    """An explicit rule for dropping runs from the run-level laws (listed by run id)."""

    rule: Literal["none", "highest_loss", "residual"] = "none"
    """``highest_loss``: drop the ``k`` highest losses of each fit; ``residual``: refit without
    runs whose log residual is more than ``threshold`` robust deviations (MAD) from the median."""
    k: int = 1
    """Runs dropped by ``highest_loss``."""
    threshold: float = 4.0
    """Robust deviations beyond which ``residual`` drops a run."""


@dataclass(frozen=True)
class FitSpec:
    """Everything ``python -m parcae.fit`` does, as in ``fits/default.yaml``."""

    solver: SolverSpec = SolverSpec()
    """How each law is minimised."""
    bootstrap: BootstrapSpec = BootstrapSpec()
    """Confidence intervals."""
    heldout: HeldoutSpec = HeldoutSpec()
    """Extrapolation check."""
    compute: ComputeSpec = ComputeSpec()
    """Compute law."""
    parametric: ParametricSpec = ParametricSpec()
    """Parametric law."""
    isoflop: IsoflopSpec = IsoflopSpec()
    """IsoFLOP analysis."""
    test_time: TestTimeSpec = TestTimeSpec()
    """Test-time law per model."""
    unified: UnifiedSpec = UnifiedSpec()
    """Unified train/test-time law."""
    flags: FlagSpec = FlagSpec()
    """Identification checks."""
    runs: RunsSpec = RunsSpec()
    """Rows that enter the laws."""
    outliers: OutlierSpec = OutlierSpec()
    """Outlier rule."""
    group_by: Literal["auto", "none"] | tuple[str, ...] = "auto"
    """Like-with-like groups: ``auto`` fits each law per combination of the setting columns
    that vary in the table and are not the law's own variables (seeds are replicates; the
    untied ``baseline`` injection is its own group); ``none`` pools all runs; or a list of
    columns."""
    budgets: tuple[float, ...] = ()
    """FLOP budgets for derived optima (parametric N_opt, D_opt, D/N; isoFLOP axis optima);
    empty: the table's largest budget and 10x and 100x it."""


def load_spec(path: Path | None, overrides: dict | None = None) -> FitSpec:
    """The spec in ``path`` (defaults when None) with dotted-key ``overrides`` applied."""
    # Merging onto the defaults lets a spec name only what it changes, down to one bound.
    data = to_dict(FitSpec())
    _merge(data, load_yaml(path) if path is not None else {})
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    try:
        return build(FitSpec, data)
    except ConfigError as exc:
        raise exc.within("", str(path) if path else None) from None


def _merge(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
