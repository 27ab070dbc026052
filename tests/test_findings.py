"""The findings: each comparison in one sentence, a difference called only beyond the seed
spread, and a sentence saying why when the table cannot support a finding."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from parcae.fit import findings, outcomes, report, summary
from parcae.fit.pipeline import TableFit
from parcae.fit.spec import FitSpec
from parcae.fit.study import Stat, compare, load
from parcae.fit.table import load as load_table


def write_table(folder: Path, runs: list[dict], curves: list[dict] | None = None,
                traces: dict[str, list[dict]] | None = None) -> Path:
    """runs.csv (+ test_time.csv, stability/<trial>.csv) in the contract's format."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("runs.csv", runs), ("test_time.csv", curves or []),
                       *((f"stability/{k}.csv", v) for k, v in (traces or {}).items())):
        if not rows:
            continue
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        header = list(dict.fromkeys(k for r in rows for k in r))
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
    return folder / "runs.csv"


def depth_runs(iso_flop: tuple[float, ...] = (0.93, 0.95)) -> list[dict]:
    """phop accuracy: looped 2⊗4, iso-parameter 2⊗1 (learned nothing), iso-FLOP 8⊗1."""
    runs = []
    arms = (("diagonal", 4, 8, (0.92, 0.94)), ("diagonal", 1, 2, (0.40, 0.44)),
            ("baseline", 1, 8, iso_flop))
    for injection, loops, depth, accs in arms:
        for seed, acc in enumerate(accs):
            runs.append({"run_id": f"{injection}-{loops}-{depth}-{seed}",
                         "trial": f"{injection}-L{loops}-d{depth}-s{seed}", "status": "ok",
                         "seed": seed, "source": "phop", "injection": injection,
                         "core_layers": 2, "loops": loops, "effective_depth": depth,
                         "tokens": 1e6, "flops": 1e12 * depth, "lr": 1e-3,
                         "val_loss": 2 - acc, "val_accuracy": acc, "baseline_loss": 1.9,
                         "learned": "false" if acc < 0.5 else "true"})
    return runs


def test_depth_calls_a_difference_only_beyond_the_seed_spread(tmp_path: Path) -> None:
    [f] = findings.depth(load(write_table(tmp_path, depth_runs())).runs)
    assert f.kind == "depth" and f.numbers["effective_depth"] == 8
    assert f.numbers["looped_vs_iso-parameter"] == "better"
    assert f.numbers["looped_vs_iso-FLOP"] == "within"
    for part in ("looped 2⊗4 reaches 0.93 ± 0.014 answer accuracy", "iso-parameter 2⊗1 0.42",
                 "iso-FLOP 8⊗1 0.94 ± 0.014", "mean ± std over 2 seeds",
                 "matches iso-FLOP within the seed spread",
                 "iso-parameter 2 of 2 runs learned nothing"):
        assert part in f.sentence, (part, f.sentence)
    # a clearly better iso-FLOP model is called as such
    [f] = findings.depth(load(write_table(tmp_path / "b", depth_runs((0.98, 0.99)))).runs)
    assert f.numbers["looped_vs_iso-FLOP"] == "worse"
    assert "falls short of iso-FLOP beyond the seed spread" in f.sentence


def test_a_looped_injection_without_its_own_single_pass_runs_names_the_stand_in(
        tmp_path: Path) -> None:
    runs = depth_runs()
    runs += [{**r, "run_id": r["run_id"] + "-none", "trial": r["trial"] + "-none",
              "injection": "none"} for r in runs if r["injection"] == "diagonal"
             and r["loops"] == 4]
    found = {f.numbers["injection"]: f for f in findings.depth(load(write_table(tmp_path,
                                                                                runs)).runs)}
    assert "iso-parameter 2⊗1 0.42" in found["diagonal"].sentence
    assert found["diagonal"].numbers["iso-parameter"]["injection"] == "diagonal"
    assert "iso-parameter 2⊗1 (diagonal) 0.42" in found["none"].sentence
    assert found["none"].numbers["iso-parameter"]["label"] == "2⊗1 (diagonal)"


def test_one_seed_calls_nothing() -> None:
    assert compare(Stat.of([0.9]), Stat.of([0.1]), True) == "unjudged"
    assert compare(Stat.of([0.9, 0.92]), Stat.of([0.1, 0.12]), True) == "better"
    assert compare(Stat.of([0.9, 0.92]), Stat.of([0.91, 0.95]), True) == "within"


def test_unsupported_findings_say_why_and_never_crash(tmp_path: Path) -> None:
    # a foreign table: only params, tokens and val_loss
    runs = [{"params": 1e6 * (i + 1), "tokens": 1e8, "val_loss": 3 - 0.1 * i} for i in range(4)]
    found = findings.of_study(load(write_table(tmp_path, runs)), {})
    assert {f.kind for f in found} == set(findings.KINDS)
    unsupported = [f for f in found if f.numbers.get("available") is False]
    assert {f.kind for f in unsupported} == set(findings.KINDS)
    assert all(f.sentence.startswith("Not computed: ") for f in unsupported)
    assert "no values in injection, loops, core_layers, effective_depth" in found[0].sentence


def stability_runs() -> list[dict]:
    base = {"source": "austen", "core_layers": 2, "loops": 8, "effective_depth": 16,
            "baseline_loss": 3.08, "seed": 0}
    return [
        {**base, "trial": "diag-1", "injection": "diagonal", "lr": 1e-3, "status": "ok",
         "val_loss": 2.25, "learned": "true", "max_state_norm": 8.1, "rho_A": 0.7},
        {**base, "trial": "diag-2", "injection": "diagonal", "lr": 1e-2, "status": "ok",
         "val_loss": 2.27, "learned": "true", "max_state_norm": 8.3, "rho_A": 0.72},
        {**base, "trial": "lin-1", "injection": "linear", "lr": 1e-3, "status": "ok",
         "val_loss": 3.05, "learned": "false", "max_state_norm": 9.0, "rho_A": 0.9},
        {**base, "trial": "lin-2", "injection": "linear", "lr": 1e-2, "status": "diverged",
         "diverged_step": 120, "diverged_rule": "geometric_growth", "final_train_loss": 5.2,
         "max_state_norm": 1.2e4, "rho_A": 2.4},
        {**base, "trial": "add-2", "injection": "add", "lr": 1e-2, "status": "collapsed",
         "val_loss": 3.07, "learned": "false", "token_correlation": 0.998,
         "max_state_norm": 40.0, "rho_A": 1.0},
    ]


def test_stability_table_names_each_outcome(tmp_path: Path) -> None:
    [f] = outcomes.stability(load(write_table(tmp_path, stability_runs())).runs)
    cells = {(c["injection"], c["lr"]): c for c in f.numbers["rows"]}
    assert cells[("linear", 1e-2)]["outcome"] == "diverged at step 120 by geometric_growth"
    assert cells[("linear", 1e-3)]["outcome"] == "learned nothing"
    assert cells[("add", 1e-2)]["outcome"] == "collapsed (token correlation 0.998)"
    assert cells[("linear", 1e-2)]["loss_column"] == "final_train_loss"
    assert cells[("linear", 1e-2)]["max_state_norm"] == 1.2e4
    assert "diagonal trained at all 2" in f.sentence
    assert "linear trained at 0 of 2" in f.sentence
    lines = summary.markdown([f])
    assert "| injection | lr | outcome | final loss (nats/byte) | max ‖h_T‖ | final ρ |" in lines
    assert any("| linear | 0.01 | diverged at step 120 by geometric_growth | 5.2 (train) |" in x
               for x in lines)
    # one learning rate: no table, and the reason
    one = [r for r in stability_runs() if r["lr"] == 1e-3]
    [f] = outcomes.stability(load(write_table(tmp_path / "one", one)).runs)
    assert f.numbers["available"] is False and "one learning rate (0.001)" in f.sentence


def curve_table(tmp_path: Path) -> Path:
    """diagonal and none trained at μ = 4, two seeds; none rises past μ, diagonal stays."""
    runs, curves = [], []
    shape = {"diagonal": {1: 3.0, 2: 2.5, 4: 2.2, 8: 2.2, 16: 2.21},
             "none": {1: 3.0, 2: 2.6, 4: 2.3, 8: 2.45, 16: 2.7}}
    for injection, points in shape.items():
        for seed in (0, 1):
            run = f"{injection}-{seed}"
            runs.append({"run_id": run, "trial": run, "status": "ok", "seed": seed,
                         "source": "austen", "injection": injection, "core_layers": 2,
                         "loops": 4, "effective_depth": 8, "flops": 1e13, "val_loss": 2.2})
            curves += [{"run_id": run, "T": t, "val_loss": v + 0.01 * seed}
                       for t, v in points.items()]
    return write_table(tmp_path, runs, curves)


def test_test_time_saturation_and_overthinking(tmp_path: Path) -> None:
    found = {f.numbers["injection"]: f for f in
             findings.test_time(load(curve_table(tmp_path)).runs, load(curve_table(
                 tmp_path)).curves)}
    diag, none = found["diagonal"], found["none"]
    assert diag.numbers["saturates_at"] == 4 and diag.numbers["past_mu"] == "within"
    assert none.numbers["past_mu"] == "worse"
    assert "overthinks: worse at T = 16 than at T = μ beyond the spread" in none.sentence
    assert "val loss (nats/byte) 3 ± 0.0071 at T = 1, 2.3 ± 0.0071 at T = μ = 4" in none.sentence


def compute_runs() -> list[dict]:
    runs = []
    for c, losses in ((1e13, {1: 3.0, 2: 2.9, 4: 2.95}), (1e14, {1: 2.7, 2: 2.6, 4: 2.55})):
        for mu, loss in losses.items():
            for seed in (0, 1):
                runs.append({"run_id": f"{c:g}-{mu}-{seed}", "status": "ok", "seed": seed,
                             "source": "austen", "injection": "diagonal", "loops": mu,
                             "flops": c * (1 + 0.01 * seed), "val_loss": loss + 0.004 * seed})
    return runs


def test_compute_optimal_loops_and_only_ok_laws_cited(tmp_path: Path) -> None:
    laws = {"compute": {
        "all": {"status": "ok", "params": {"E": 1.5, "A": 30.0, "alpha": 0.12},
                "ci95": {"alpha": [0.1, 0.15], "E": [1.2, 1.7]}, "flags": []},
        "loops=4": {"status": "flagged", "params": {"E": 0.05, "A": 3.0, "alpha": 0.01},
                    "flags": [{"code": "at_bound", "message": "E hit its lower bound 0.0498"}]},
        "loops=1": {"status": "skipped", "reason": "needs 5 runs, has 2"}}}
    found = findings.compute(load(write_table(tmp_path, compute_runs())).runs, laws)
    sentences = " ".join(f.sentence for f in found)
    assert "1e+13 FLOPs: μ = 2 (2.9 ± 0.0028)" in sentences  # 1% apart flops are one budget
    assert "1e+14 FLOPs: μ = 4 (2.55 ± 0.0028)" in sentences
    assert "falls beyond the seed spread from 2.9 ± 0.0028 nats/byte" in sentences
    assert "all: alpha = 0.12 [0.1, 0.15], E = 1.5 [1.2, 1.7]" in sentences
    assert "Flagged, so not cited: compute law loops=4 (E hit its lower bound 0.0498)" in sentences
    assert "The compute law was skipped for loops=1: needs 5 runs, has 2." in sentences
    assert "alpha = 0.01" not in sentences  # a flagged fit's numbers are not cited


def test_flagged_runs_give_reasons(tmp_path: Path) -> None:
    found = outcomes.flagged_runs(load(write_table(tmp_path, stability_runs())).runs)
    text = " ".join(f.sentence for f in found)
    assert "1 of 5 runs learned nothing" in text and "lin-1 (3.05 vs baseline 3.08" in text
    assert "1 of 5 runs collapsed" in text and "add-2 (collapsed" in text
    assert "1 of 5 runs diverged" in text


@pytest.fixture
def fitless(tmp_path: Path) -> TableFit:
    """A table and its findings with no law fitted (the fits are tested elsewhere)."""
    return TableFit(load_table(write_table(tmp_path / "depth", depth_runs())))


def test_findings_open_the_report_and_fill_fits_json(tmp_path: Path, fitless: TableFit) -> None:
    report.write_json(tmp_path / "fits.json", report.fits_document([fitless], FitSpec()))
    entry = json.loads((tmp_path / "fits.json").read_text())["tables"]["depth"]["findings"]
    assert [f["kind"] for f in entry][:2] == ["depth", "stability"]
    assert entry[0]["numbers"]["iso-FLOP"]["label"] == "8⊗1"
    assert entry[0]["sentence"] == findings.of_fit(fitless)[0].sentence
    report.write_markdown(tmp_path / "report.md", fitless, [], "test")
    text = (tmp_path / "report.md").read_text()
    assert text.index("## Findings") < text.index("looped 2⊗4") < text.index("## ") + 200
    term = summary.terminal("depth", findings.of_fit(fitless))
    assert term.startswith("Findings: depth") and "looped 2⊗4 reaches" in term


def test_the_command_prints_the_findings_and_writes_them(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    from parcae.fit.__main__ import main

    folder = tmp_path / "depth"
    write_table(folder, depth_runs())
    main([str(folder), "--set", "bootstrap.n=4", "--set", "test_time.bootstrap=2",
          "--workers", "1"])
    printed = capsys.readouterr().out
    assert printed.startswith("Findings: depth") and "iso-FLOP 8⊗1 0.94 ± 0.014" in printed
    doc = json.loads((folder / "fits.json").read_text())
    assert doc["tables"]["depth"]["findings"][0]["numbers"]["looped_vs_iso-parameter"] == "better"
    assert (folder / "depth.png").exists() and "![Depth, not parameters](depth.png)" in (
        folder / "report.md").read_text()
