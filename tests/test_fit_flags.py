"""Identification: tables drawn from known laws come back identified with the truth inside
the intervals; tables that cannot identify a law come back flagged (never ``ok``) with the
reason in words; like-with-like groups; published-style isoFLOP tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parcae.fit import Workers, fit_table, load, load_spec
from parcae.fit.synthetic import Truth, compute_optimal_params, isoflop_published, sweep, write

LAWS = ("compute", "parametric", "isoflop", "test_time", "unified")
REPO = Path(__file__).resolve().parents[1]


def only(law: str, n_boot: int = 100, **extra: object):
    overrides = {f"{name}.enabled": name == law for name in LAWS}
    return load_spec(None, overrides | {"bootstrap.n": n_boot, "test_time.bootstrap": n_boot,
                                        **extra})


@pytest.fixture(scope="module")
def workers():
    with Workers(2) as pool:
        yield pool


def codes(record: dict) -> set[str]:
    return {f["code"] for f in record["flags"]}


def _compute_rows(loss_of, n: int = 20, noise: float = 0.003, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    flops = np.geomspace(1e17, 1e21, n)
    return [{"run_id": f"r{i}", "status": "ok", "params": 1e8, "tokens": c / 6e8, "flops": c,
             "loops": 1, "val_loss": float(loss_of(c) * np.exp(rng.normal(0, noise)))}
            for i, c in enumerate(flops)]


def test_identified_fit_has_bounds_from_the_data_and_params_inside(tmp_path: Path,
                                                                  workers: Workers) -> None:
    rows = _compute_rows(lambda c: 1.7 + 2.0e3 * c ** -0.2)
    record = fit_table(load(write(tmp_path / "ok", rows)), only("compute"), workers
                       ).laws["compute"]["all"]
    assert record["status"] == "ok" and record["flags"] == [] and record["group"] == {}
    smallest = min(r["val_loss"] for r in rows)
    lo, hi = record["bounds"]["E"]
    assert 0 < lo < 0.01 * smallest and hi == pytest.approx(smallest)
    for name, value in record["params"].items():
        a, b = record["bounds"][name]
        assert (a is None or a <= value) and (b is None or value <= b), name
        ci = record["ci95"][name]
        assert np.isfinite(ci).all() and ci[0] < ci[1], name
    assert record["ci95"]["E"][0] <= 1.7 <= record["ci95"]["E"][1]


def test_flat_curve_is_flagged(tmp_path: Path, workers: Workers) -> None:
    record = fit_table(load(write(tmp_path / "flat", _compute_rows(lambda c: 2.0))),
                       only("compute"), workers).laws["compute"]["all"]
    assert record["status"] == "flagged"
    assert codes(record) & {"poor_fit", "degenerate", "at_bound"}, record["flags"]
    assert all(f["message"] for f in record["flags"])


def test_curve_still_falling_is_flagged(tmp_path: Path, workers: Workers) -> None:
    # A pure power law (E = 0) over the whole range: the floor is not identified.
    record = fit_table(load(write(tmp_path / "falling", _compute_rows(
        lambda c: 40.0 * c ** -0.08))), only("compute"), workers).laws["compute"]["all"]
    assert record["status"] == "flagged"
    assert codes(record) & {"at_bound", "wide_ci"}, record["flags"]
    messages = " ".join(f["message"] for f in record["flags"])
    assert "E" in messages


def _curve(run: str, l_inf: float, gain: float, z: float, ts: np.ndarray,
           rng: np.random.Generator, noise: float = 0.001) -> list[dict]:
    loss = (l_inf + gain * np.exp(-z * ts)) * np.exp(rng.normal(0, noise, len(ts)))
    return [{"run_id": run, "T": int(t), "val_loss": float(v)} for t, v in zip(ts, loss,
                                                                           strict=True)]


def _curve_table(tmp: Path, curves: list[dict]) -> Path:
    runs = [{"run_id": r, "status": "ok", "val_loss": 3.0, "loops": 4}
            for r in dict.fromkeys(c["run_id"] for c in curves)]
    return write(tmp, runs, curves)


def test_test_time_curves_unidentified_are_flagged(tmp_path: Path, workers: Workers) -> None:
    rng = np.random.default_rng(0)
    ts = np.arange(1, 13)
    curves = (_curve("good", 2.5, 0.8, 0.6, ts, rng)
              + _curve("falling", 2.5, 0.8, 0.05, ts, rng)  # still falling at T = 12
              + _curve("flat", 2.5, 0.0, 0.5, ts, rng))     # no test-time gain at all
    bumpy = _curve("bumpy", 2.5, 0.8, 0.6, ts, rng)
    for row in bumpy[4:7]:
        row["val_loss"] *= 1.06  # a bump well above the noise, then down again
    path = _curve_table(tmp_path / "curves", curves + bumpy)
    laws = fit_table(load(path), only("test_time"), workers).laws["test_time"]
    assert laws["good"]["status"] == "ok", laws["good"]["flags"]
    assert "not_saturated" in codes(laws["falling"])
    assert laws["flat"]["status"] == "flagged"
    assert codes(laws["flat"]) & {"degenerate", "poor_fit", "at_bound", "wide_ci"}
    assert "non_monotone" in codes(laws["bumpy"])
    lo, hi = laws["good"]["bounds"]["L_inf"]
    observed = [c["val_loss"] for c in curves if c["run_id"] == "good"]
    assert lo > 0 and hi <= max(observed)


def test_too_few_budgets_flagged_or_skipped(tmp_path: Path, workers: Workers) -> None:
    rng = np.random.default_rng(1)
    spec = only("isoflop", **{"isoflop.axes": ["params"]})
    three = isoflop_published(rng, np.geomspace(1e19, 1e21, 3), 9, 0.002)
    record = fit_table(load(write(tmp_path / "three", three)), spec, workers
                       ).laws["isoflop"]["all"]
    assert record["status"] == "flagged" and "few_points" in codes(record)
    two = isoflop_published(rng, np.geomspace(1e19, 1e21, 2), 9, 0.002)
    record = fit_table(load(write(tmp_path / "two", two)), spec, workers).laws["isoflop"]["all"]
    assert record["status"] == "skipped" and "has 2" in record["reason"]


def test_published_isoflop_table_gives_n_star_exponent_and_parametric_a(tmp_path: Path) -> None:
    """Only params, tokens, val_loss: Chinchilla's approaches 2 and 3, no renaming."""
    t = Truth()
    a_true = t.beta / (t.alpha + t.beta)
    runs = isoflop_published(np.random.default_rng(2), np.geomspace(1e19, 1e22, 6), 9, 0.002)
    write(tmp_path / "chin", runs)
    proc = subprocess.run(
        [sys.executable, "-m", "parcae.fit", str(tmp_path / "chin"), "--set",
         "isoflop.axes=[params]", "--set", "bootstrap.n=200", "--set", "test_time.enabled=false",
         "--set", "unified.enabled=false", "--set", "budgets=[1e23]"],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    laws = json.loads((tmp_path / "chin" / "fits.json").read_text())["tables"]["chin"]["laws"]
    iso = laws["isoflop"]["all"]
    lo, hi = iso["ci95"]["params_exponent"]
    assert lo < a_true < hi and hi - lo < 0.1, iso["ci95"]
    assert iso["status"] == "ok", iso["flags"]
    n_opt = iso["derived"]["at_budgets"][0]["params_opt"]
    assert n_opt["ci95"][0] < compute_optimal_params(1e23) < n_opt["ci95"][1]
    par = laws["parametric"]["all"]
    a = par["derived"]["a"]
    assert a["ci95"][0] < a_true < a["ci95"][1] and a["value"] == pytest.approx(a_true, abs=0.03)
    assert (tmp_path / "chin" / "bootstrap.npz").stat().st_size > 0
    with np.load(tmp_path / "chin" / "bootstrap.npz") as npz:
        names = list(npz["isoflop|all|names"])
        draws = npz["isoflop|all"]
    assert names == ["params_exponent", "params_coefficient"] and draws.shape[0] >= 150
    assert np.percentile(draws[:, 0], 2.5) == pytest.approx(lo)


def test_groups_keep_unlike_runs_apart(tmp_path: Path, workers: Workers) -> None:
    rng = np.random.default_rng(3)
    runs = []
    for injection, shift in (("diagonal", 0.0), ("add", 0.3), ("baseline", 0.1)):
        part, _ = sweep(rng, np.geomspace(1e18, 1e20, 5), (1, 2, 4, 8), 1, 0.002,
                        Truth(E=1.8 + shift))
        for r in part:
            r |= {"run_id": f"{injection}-{r['run_id']}", "injection": injection, "seed": 0}
        runs += part
    laws = fit_table(load(write(tmp_path / "mixed", runs)), only("parametric", 30),
                     workers).laws["parametric"]
    assert set(laws) == {"injection=diagonal", "injection=add", "injection=baseline"}
    for name, record in laws.items():
        assert record["group"] == {"injection": name.split("=")[1]}
        assert record["n_points"] == 20
    pooled = fit_table(load(write(tmp_path / "mixed2", runs)),
                       only("parametric", 0, group_by=["seed"]), workers).laws["parametric"]
    # Even when asked to group by something else, baseline is never pooled with looped runs.
    assert {r["group"]["injection"] for r in pooled.values()} == {"diagonal", "add", "baseline"}


def test_settings_that_only_follow_loops_are_not_groups(tmp_path: Path) -> None:
    from parcae.fit import groups

    def table(sampling_of):
        runs = [{"run_id": f"r{i}", "status": "ok", "params": 1e6, "tokens": 1e6 * (i + 1),
                 "flops": 6e12 * (i + 1), "loops": lp, "val_loss": 3.0 - 0.1 * i,
                 "depth_sampling": sampling_of(lp, i)} for i, lp in enumerate((1, 2, 4, 1, 2, 4))]
        return load(write(tmp_path / f"t{len(list(tmp_path.iterdir()))}", runs))

    # loops = 1 is always fixed: depth_sampling follows loops and must not split the law
    follows = table(lambda lp, i: "fixed" if lp == 1 else "poisson")
    assert groups.columns(follows, "compute", follows.usable, "auto") == ()
    # varied on its own (both schemes at one loop count) it is a setting to group by
    varied = table(lambda lp, i: "fixed" if lp == 1 or i < 3 else "poisson")
    assert groups.columns(varied, "compute", varied.usable, "auto") == ("depth_sampling",)
