"""Sweep grids: the ``metadata.parcae`` block of a Ray cluster-launcher YAML, and its trials.

A grid file is a valid Ray cluster config (so ``ray submit --start`` accepts it); the sweep
itself lives under ``metadata.parcae``, the one free-form key Ray's schema allows. ``load_grid``
builds the frozen :class:`GridConfig`; ``expand`` crosses its axes, applies the rules and plans
every point through ``parcae.run.plan`` (so FLOP budgets become tokens by the same compute
accounting as a single run, and a budget too small for one step is caught before Ray starts).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from parcae.config import ConfigError, build, check, flatten, load_yaml, set_dotted
from parcae.data import DataSource
from parcae.model.config import Injection
from parcae.run import Plan, RunConfig, data_source, plan, resolve

#: Where the sweep lives inside a grid file.
PREFIX = "metadata.parcae"

#: Axis name -> the run-config key it sets (``parcae.train`` config keys).
AXIS_KEYS: dict[str, str] = {
    "preset": "model.preset",
    "d_model": "model.d_model",
    "n_heads": "model.n_heads",
    "prelude_layers": "model.prelude_layers",
    "core_layers": "model.core_layers",
    "coda_layers": "model.coda_layers",
    "injection": "model.injection",
    "loops": "model.loops",
    "backprop_depth": "model.backprop_depth",
    "depth_sampling": "model.depth_sampling",
    "lr": "train.lr",
    "warmup": "train.warmup",
    "grad_clip": "train.grad_clip",
    "seed": "train.seed",
    "tokens": "train.tokens",
    "flops": "train.flops",
    "batch_size": "data.batch_size",
    "seq_len": "data.seq_len",
}


@dataclass(frozen=True)
class Axes:
    """Values to cross, one list per axis; also the shape of an exclude/include/override match.

    The grid is the Cartesian product of the axes given, in this field order (the first axis
    varies slowest). ``tokens`` and ``flops`` are the data axis: token counts D, or FLOP budgets
    C from which each point's D is derived (isoFLOP).
    """

    preset: tuple[str, ...] | None = None
    """Model shape presets (tiny, small, 140m-shape, 370m-shape, 770m-shape, 1.3b-shape)."""
    d_model: tuple[int, ...] | None = None
    """Residual widths."""
    n_heads: tuple[int, ...] | None = None
    """Attention head counts."""
    prelude_layers: tuple[int, ...] | None = None
    """Prelude depths."""
    core_layers: tuple[int, ...] | None = None
    """Recurrent-core depths k."""
    coda_layers: tuple[int, ...] | None = None
    """Coda depths."""
    injection: tuple[Injection, ...] | None = None
    """Injection variants (diagonal, linear, add, none, baseline)."""
    loops: tuple[int, ...] | None = None
    """Mean training recurrences mu_rec."""
    backprop_depth: tuple[int, ...] | None = None
    """Loop steps with gradient mu_bwd."""
    depth_sampling: tuple[Literal["poisson", "fixed"], ...] | None = None
    """Training depth sampling: poisson (T ~ Poisson(loops)) or fixed (T = loops)."""
    lr: tuple[float, ...] | None = None
    """Peak learning rates."""
    warmup: tuple[float, ...] | None = None
    """Warmup fractions of the steps (0 = none): warmup decides whether some injections
    survive high learning rates."""
    grad_clip: tuple[float, ...] | None = None
    """Gradient-norm clips (0 = off)."""
    seed: tuple[int, ...] | None = None
    """Seeds."""
    tokens: tuple[int, ...] | None = None
    """Training token budgets D."""
    flops: tuple[float, ...] | None = None
    """Training FLOP budgets C (tokens derived per point)."""
    batch_size: tuple[int, ...] | None = None
    """Sequences per batch."""
    seq_len: tuple[int, ...] | None = None
    """Tokens per sequence."""

    def __post_init__(self) -> None:
        for name, values in self.items():
            check(len(values) > 0, name, "is empty; give at least one value")
            check(len(set(values)) == len(values), name, f"repeats a value: {list(values)}")
        check(self.tokens is None or self.flops is None, "tokens",
              "give the data axis as tokens or as flops, not both")

    def items(self) -> list[tuple[str, tuple[Any, ...]]]:
        """The axes given, in crossing order."""
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None]

    def matches(self, point: dict[str, Any]) -> bool:
        """True when every axis named here holds one of the listed values at ``point``."""
        return all(point.get(name) in values for name, values in self.items())


@dataclass(frozen=True)
class Override:
    """Settings for the points a match selects (e.g. a smaller lr for the baseline)."""

    match: Axes = field(default_factory=Axes)
    """Axis values selecting the points (every axis named must match)."""
    set: Any = None
    """Mapping of run-config keys (dotted or nested, as in ``base``) to values."""


@dataclass(frozen=True)
class Resources:
    """What one trial holds while it runs."""

    cpus: float = 1.0
    """CPUs per trial; also the trial's torch threads (rounded up)."""
    gpus: float = 0.0
    """GPUs per trial; fractions let small models share a GPU (0.25 = four per GPU); 2 or more
    train each trial on that many GPUs with DDP (``train.devices``)."""

    def __post_init__(self) -> None:
        check(self.cpus > 0, "cpus", "must be positive")
        check(self.gpus >= 0, "gpus", "must be 0 or more")
        check(self.gpus <= 1 or self.gpus == int(self.gpus), "gpus",
              f"above 1 a trial trains on whole GPUs (DDP); got {self.gpus}")

    @property
    def threads(self) -> int:
        return max(1, int(-(-self.cpus // 1)))

    @property
    def devices(self) -> int:
        """GPUs one trial trains on (1 for a share of one GPU, or none)."""
        return max(1, int(self.gpus))


@dataclass(frozen=True)
class StopRule:
    """When the Tune stopper ends a trial as diverged.

    A trial whose stability monitors declare divergence is always stopped; these limits add
    sweep-wide thresholds on the metrics each trial reports (every ``monitor.every`` steps).
    """

    max_loss: float | None = None
    """Stop a trial whose training loss exceeds this."""
    max_state_norm: float | None = None
    """Stop a trial whose mean loop-state norm exceeds this."""

    def __post_init__(self) -> None:
        check(self.max_loss is None or self.max_loss > 0, "max_loss", "must be positive")
        check(self.max_state_norm is None or self.max_state_norm > 0, "max_state_norm",
              "must be positive")


@dataclass(frozen=True)
class GridConfig:
    """A sweep: one-to-one with the ``metadata.parcae`` block of a grid file."""

    name: str = ""
    """Sweep name (required): the reports folder ``reports/<name>/`` and the MLflow parent run."""
    base: Any = None
    """Run config shared by every point (same keys as a ``parcae.train`` config)."""
    axes: Axes = field(default_factory=Axes)
    """Lists to cross; each point of the product is one trial."""
    exclude: tuple[Axes, ...] = ()
    """Drop the points matching any of these (each axis named must match)."""
    include: tuple[Axes, ...] = ()
    """If given, keep only the points matching at least one of these."""
    overrides: tuple[Override, ...] = ()
    """Extra settings for the points each match selects, applied in order after ``base``."""
    resources: Resources = field(default_factory=Resources)
    """CPUs and GPUs per trial."""
    concurrency: int | None = None
    """Most trials running at once; default as many as the cluster's resources fit."""
    retries: int = 1
    """Times a crashed trial is retried before it is recorded as failed."""
    stop: StopRule = field(default_factory=StopRule)
    """Stopping rule for diverging trials."""

    def __post_init__(self) -> None:
        check(bool(self.name), "name", "required: the sweep's name (its reports folder and "
              "MLflow parent run)")
        check(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name)), "name",
              f"{self.name!r} must be a folder name: letters, digits, '.', '_', '-'")
        check(self.base is None or isinstance(self.base, dict), "base",
              "expected a mapping of run settings (as in a parcae.train config)")
        check(self.concurrency is None or self.concurrency >= 1, "concurrency",
              "must be at least 1")
        check(self.retries >= 0, "retries", "must be 0 or more")
        given = [name for name, _ in self.axes.items()]
        rules = [(f"exclude[{i}]", r) for i, r in enumerate(self.exclude)]
        rules += [(f"include[{i}]", r) for i, r in enumerate(self.include)]
        rules += [(f"overrides[{i}].match", o.match) for i, o in enumerate(self.overrides)]
        for where, rule in rules:
            for name, _ in rule.items():
                check(name in given, f"{where}.{name}",
                      f"not an axis of this grid; axes: {', '.join(given) or '(none)'}")
        for i, o in enumerate(self.overrides):
            check(isinstance(o.set, dict) and bool(o.set), f"overrides[{i}].set",
                  "expected a mapping of run-config keys to values")


@dataclass(frozen=True)
class Trial:
    """One grid point, resolved and planned."""

    key: str
    """Stable name of the point, e.g. ``loops=4,flops=1e12`` (resume matches on it)."""
    point: dict[str, Any]
    """Axis name -> value at this point."""
    plan: Plan
    """The point's run config, model shape and budget (N, D, C, steps)."""

    @property
    def cfg(self) -> RunConfig:
        return self.plan.cfg


def _listify(rules: Any) -> Any:
    """Let a rule write ``loops: 1`` for ``loops: [1]``."""
    if not isinstance(rules, list):
        return rules
    return [{k: v if isinstance(v, list) else [v] for k, v in r.items()}
            if isinstance(r, dict) else r for r in rules]


def _check_placement(data: dict[str, Any], block: dict[str, Any], source: str | None) -> None:
    """A sweep key outside ``metadata.parcae`` (e.g. ``axes`` one level too high) would be
    ignored and run another sweep than meant: refuse it, and an ``axes`` left empty."""
    sweep_keys = {f.name for f in dataclasses.fields(GridConfig)}
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    for where, mapping in (("", data), ("metadata.", metadata)):
        for key in mapping:
            if key in sweep_keys:
                raise ConfigError(f"{where}{key}", f"a sweep setting outside {PREFIX}, where it "
                                  f"would be ignored; move it under {PREFIX}", source)
    if "axes" in block and not block["axes"]:
        raise ConfigError(f"{PREFIX}.axes", "given but empty; list the axes under it (indented), "
                          "or leave it out for a grid of one run", source)


def parse_grid(data: Any, source: str | None = None) -> GridConfig:
    """Build a GridConfig from a whole grid file's mapping (checking its ``base`` too)."""
    block = (data.get("metadata") or {}).get("parcae") if isinstance(data, dict) else None
    if not isinstance(block, dict):
        raise ConfigError(PREFIX, "missing: a grid file keeps its sweep (name, base, axes, ...) "
                          "under metadata.parcae", source)
    _check_placement(data, block, source)
    block = dict(block)
    for key in ("exclude", "include"):
        block[key] = _listify(block.get(key, []))
    if isinstance(block.get("overrides"), list):
        block["overrides"] = [{**o, "match": _listify([o["match"]])[0]}
                              if isinstance(o, dict) and isinstance(o.get("match"), dict)
                              else o for o in block["overrides"]]
    try:
        grid = build(GridConfig, block)
    except ConfigError as exc:
        raise exc.within(PREFIX, source) from None
    try:
        resolve(grid.base)
    except ConfigError as exc:
        raise exc.within(f"{PREFIX}.base", source) from None
    return grid


def load_grid(path: Path) -> GridConfig:
    return parse_grid(load_yaml(path), str(path))


def fmt_value(value: Any) -> str:
    """Shortest exact text of a value: 4e9, not 4000000000.0 (keys are names people read)."""
    if not isinstance(value, float):
        return str(value)
    plain = repr(value).removesuffix(".0")
    text = next(t for p in range(1, 18) if float(t := f"{value:.{p}g}") == value)
    mantissa, _, exponent = text.partition("e")
    short = f"{mantissa}e{int(exponent)}" if exponent else text
    return short if len(short) < len(plain) else plain


def axis_tags(point: dict[str, Any]) -> dict[str, str]:
    """A point's axis values as text, as in its key (MLflow tags, tables)."""
    return {k: fmt_value(v) for k, v in point.items()}


#: Axis -> prefix of its value in a run's short name (``mu4·C1.2e12``); axes whose values are
#: words (preset, injection, depth_sampling) show the word alone.
SHORT: dict[str, str] = {
    "preset": "", "d_model": "d", "n_heads": "h", "prelude_layers": "pre", "core_layers": "k",
    "coda_layers": "coda", "injection": "", "loops": "mu", "backprop_depth": "bwd",
    "depth_sampling": "", "lr": "lr", "warmup": "wu", "grad_clip": "clip", "seed": "s",
    "tokens": "D", "flops": "C", "batch_size": "B", "seq_len": "L",
}


def run_name(point: dict[str, Any]) -> str:
    """A point's short name for the MLflow runs table: ``mu4·C1.2e12``, ``diagonal·s1``;
    empty for a grid without axes."""
    return "·".join(f"{SHORT[k]}{v}" for k, v in axis_tags(point).items())


def trial_key(point: dict[str, Any]) -> str:
    """``axis=value`` pairs in crossing order; ``base`` for a grid without axes."""
    return ",".join(f"{k}={v}" for k, v in axis_tags(point).items()) or "base"


def points(grid: GridConfig) -> list[dict[str, Any]]:
    """The crossed axes after exclude/include, as axis -> value mappings."""
    names = [name for name, _ in grid.axes.items()]
    crossed = [dict(zip(names, values, strict=True))
               for values in itertools.product(*(v for _, v in grid.axes.items()))]
    kept = [p for p in crossed if not any(r.matches(p) for r in grid.exclude)]
    if grid.include:
        kept = [p for p in kept if any(r.matches(p) for r in grid.include)]
    return kept


def _absolute_data_path(mapping: dict[str, Any]) -> None:
    """A relative ``data.path`` names a place under the folder the sweep starts in; trials run
    in folders of their own, so they get (and record) the absolute path."""
    data = mapping.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str) and data["path"]:
        data["path"] = os.path.abspath(data["path"])


def expand(grid: GridConfig, source: str | None = None) -> list[Trial]:
    """Every trial of the grid, planned; bad points raise ConfigError naming the axis."""
    found = points(grid)
    if not found:
        raise ConfigError(f"{PREFIX}.exclude", "the rules leave no point to run", source)
    sources: dict[Any, DataSource] = {}
    trials = []
    for point in found:
        key = trial_key(point)
        mapping = copy.deepcopy(grid.base or {})
        applied: dict[str, int] = {}  # run-config key -> the override that set it last
        try:
            for i, o in enumerate(grid.overrides):
                if o.match.matches(point):
                    for dotted, value in o.set.items():
                        set_dotted(mapping, dotted, copy.deepcopy(value))
                    applied.update({k: i for k in flatten(o.set)})
            for name, value in point.items():
                set_dotted(mapping, AXIS_KEYS[name], value)
            mapping["name"] = f"{grid.name}/{key}"
            _absolute_data_path(mapping)
            cfg = resolve(mapping)
            if cfg.data not in sources:
                sources[cfg.data] = data_source(cfg)
            trials.append(Trial(key, point, plan(cfg, sources[cfg.data])))
        except ConfigError as exc:
            axis = next((n for n, k in AXIS_KEYS.items() if k == exc.key and n in point), None)
            setter = next((i for k, i in applied.items()
                           if exc.key == k or exc.key.startswith(f"{k}.")
                           or k.startswith(f"{exc.key}.")), None)
            where = (f"{PREFIX}.axes.{axis}" if axis else
                     f"{PREFIX}.overrides[{setter}].set.{exc.key}" if setter is not None else
                     f"{PREFIX}.base.{exc.key}")
            raise ConfigError(where, f"at point {key}: {exc.message}", source) from None
    return trials


def describe(trials: list[Trial]) -> list[dict[str, Any]]:
    """The expanded trial table: key, axes, N, unrolled N, D, mu, C (dry runs, MLflow)."""
    rows = []
    for t in trials:
        m = t.plan.model
        rows.append({"trial": t.key, **axis_tags(t.point),
                     "params": t.plan.accounting.params,
                     "params_unrolled": t.plan.accounting.params_unrolled,
                     "tokens": t.plan.tokens, "loops": m.loops if m.looped else 1,
                     "flops": t.plan.flops, "steps": t.plan.steps, "epochs": t.plan.epochs})
    return rows
