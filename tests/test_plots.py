"""The paper's figures: each has axis labels with units, a legend and a title, and draws the
data it claims (steps on the stability x axis, fits dashed when flagged, bands from the
bootstrap replicates); a figure that cannot be drawn is listed with its reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from test_findings import curve_table, depth_runs, stability_runs, write_table

from parcae.fit import plots, report, views
from parcae.fit.laws import LAWS
from parcae.fit.pipeline import TableFit
from parcae.fit.study import load
from parcae.fit.table import load as load_table


def labelled(fig: Figure) -> list:
    """The figure's data axes, after checking each has both labels and a legend."""
    axes = [ax for ax in fig.axes if ax.has_data()]
    assert axes and fig.get_suptitle() or all(ax.get_title() for ax in axes)
    for ax in axes:
        assert ax.get_legend() is not None and ax.get_legend().get_texts()
    assert all(ax.get_ylabel() for ax in axes)
    assert any(ax.get_xlabel() for ax in axes)
    return axes


def traces() -> dict[str, list[dict]]:
    out = {}
    for run in stability_runs():
        steps = np.arange(0, 130 if run["status"] == "diverged" else 400, 10)
        grow = run["status"] == "diverged"
        out[run["trial"]] = [{"step": int(s), "state_norm_last": 5 * np.exp(s / 15) if grow
                              else 5 + s / 100, "state_ratio": 1 + s / 50,
                              "rho_A": run["rho_A"]} for s in steps]
    return out


def test_stability_over_training_steps(tmp_path: Path) -> None:
    study = load(write_table(tmp_path, stability_runs(), traces=traces()))
    fig = views.stability(study)
    axes = labelled(fig)
    assert len(axes) == 9  # three variants x (‖h_T‖, ‖h_T‖/‖e‖, rho)
    assert {ax.get_title() for ax in axes} >= {"diagonal", "linear", "add"}
    assert {ax.get_xlabel() for ax in axes} == {"", "training step"}
    linear = [ax for ax in axes if ax.get_title() == "linear"][0]
    texts = [t.get_text() for t in linear.get_legend().get_texts()]
    assert texts[:2] == ["lr 0.001", "lr 0.01"] and "diverged (stopped)" in texts
    longest = max((line.get_xdata() for line in linear.get_lines()), key=len)
    assert list(longest) == list(range(0, 400, 10))  # steps, not row numbers
    rho = [ax for ax in axes if ax.get_ylabel() == "ρ(W₁)"]
    assert rho and any(list(line.get_ydata()) == [1.0, 1.0] for line in rho[0].get_lines())


def test_test_time_curves_coloured_by_mu_with_fits(tmp_path: Path) -> None:
    study = load(curve_table(tmp_path))
    laws = {"test_time": {
        "diagonal-0": {"status": "ok", "params": {"L_inf": 2.2, "Z": 2.0, "z": 0.8}},
        "none-0": {"status": "flagged", "params": {"L_inf": 2.3, "Z": 1.5, "z": 0.5},
                   "flags": [{"code": "non_monotone", "message": "rises past T = 4"}]}}}
    fig = views.test_time(study, laws)
    axes = labelled(fig)
    for ax in axes:
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "trained μ = 4" in texts
        assert ax.get_ylabel() == "val loss (nats/byte)"
    styles = {ax.get_title(): {line.get_linestyle() for line in ax.get_lines()
                               if len(line.get_xdata()) == 100} for ax in axes}
    assert styles == {"diagonal": {"-"}, "none": {"--"}}


def test_accuracy_fits_are_drawn_back_in_accuracy(tmp_path: Path) -> None:
    runs = [{"run_id": "a", "trial": "a", "status": "ok", "source": "phop",
             "injection": "diagonal", "loops": 4, "flops": 1e12, "val_loss": 1.0}]
    curves = [{"run_id": "a", "T": t, "val_loss": 2 / t, "val_accuracy": 1 - 0.5 ** t}
              for t in (1, 2, 4, 8)]
    laws = {"test_time": {"a": {"status": "ok", "metric": "1 - val_accuracy",
                                "params": {"L_inf": 0.01, "Z": 1.0, "z": 0.7}}}}
    fig = views.test_time(load(write_table(tmp_path, runs, curves)), laws)
    loss, acc = labelled(fig)
    assert (loss.get_ylabel(), acc.get_ylabel()) == ("val loss (nats/token)", "answer accuracy")
    assert not [line for line in loss.get_lines() if len(line.get_xdata()) == 100]
    [fit] = [line for line in acc.get_lines() if len(line.get_xdata()) == 100]
    assert fit.get_ydata()[0] == pytest.approx(1 - (0.01 + np.exp(-0.7)))


def test_depth_comparison_with_seed_error_bars(tmp_path: Path) -> None:
    fig = views.depth(load(write_table(tmp_path, depth_runs())))
    [ax] = labelled(fig)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["looped k⊗L", "iso-parameter k⊗1", "iso-FLOP kL⊗1"]
    assert ax.get_ylabel() == "answer accuracy" and "effective depth" in ax.get_xlabel()
    assert len(ax.containers) == 3  # one errorbar series per role


def _compute_fit(tmp_path: Path) -> TableFit:
    flops = np.geomspace(1e13, 1e15, 6)
    runs = [{"run_id": f"r{i}", "status": "ok", "source": "austen", "injection": "diagonal",
             "loops": 2, "params": 1e5, "tokens": c / 6e5, "flops": c,
             "val_loss": 1.5 + 30 * c ** -0.12} for i, c in enumerate(flops)]
    result = TableFit(load_table(write_table(tmp_path, runs)))
    result.laws["compute"] = {"all": {"status": "ok", "params": {"E": 1.5, "A": 30.0,
                                                                  "alpha": 0.12}}}
    return result


def test_compute_with_and_without_bootstrap_bands(tmp_path: Path) -> None:
    result = _compute_fit(tmp_path)
    study = load(result.table.source)
    result.samples = {}
    fig = plots.compute(result, study)
    [ax] = labelled(fig)
    assert "no bootstrap band" in fig.get_suptitle()
    assert ax.get_xlabel() == "training compute C (FLOPs)"
    assert ax.get_ylabel() == "val loss (nats/byte)"
    assert not any(isinstance(c, PolyCollection) for c in ax.collections)
    rng = np.random.default_rng(0)
    names = LAWS["compute"].param_names
    truth = np.array([{"E": 1.5, "A": 30.0, "alpha": 0.12}[n] for n in names])
    result.samples = {("compute", "all"): (names, truth * rng.normal(1, 0.02, (50, 3)))}
    fig = plots.compute(result, study)
    [ax] = labelled(fig)
    assert any(isinstance(c, PolyCollection) for c in ax.collections)
    assert "95% bootstrap band" in fig.get_suptitle()


@pytest.mark.parametrize("with_traces", [True, False])
def test_draw_all_lists_what_it_cannot_draw(tmp_path: Path, with_traces: bool) -> None:
    result = TableFit(load_table(write_table(tmp_path / "t", stability_runs(),
                                             traces=traces() if with_traces else None)))
    figures = plots.draw_all(result, tmp_path)
    drawn = {name for _, name in figures}
    assert ("stability.png" in drawn) == with_traces
    assert all((tmp_path / name).stat().st_size > 0 for name in drawn)
    missing = dict(figures.missing)
    assert "Depth, not parameters" in missing and "Test-time depth" in missing
    if not with_traces:
        assert "no stability traces" in missing["Stability over training"]
    report.write_markdown(tmp_path / "report.md", result, figures, "test")
    text = (tmp_path / "report.md").read_text()
    assert "- Not drawn, test-time depth: no test-time curves" in text
