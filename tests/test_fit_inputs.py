"""Bad and foreign inputs for ``python -m parcae.fit``: clear messages, exit 2 only when
nothing could be fitted; the spec file shipped equals the built-in defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from parcae.config import ConfigError, to_dict
from parcae.fit import load, load_spec
from parcae.fit.spec import FitSpec
from parcae.fit.synthetic import write

REPO = Path(__file__).resolve().parents[1]
FAST = ["--set", "bootstrap.n=8", "--set", "test_time.bootstrap=4", "--workers", "1"]


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "parcae.fit", *map(str, args), *FAST],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def published(n: int, seed: int = 0) -> list[dict]:
    """Chinchilla-style rows: only params, tokens and val_loss."""
    rng = np.random.default_rng(seed)
    n_params = np.exp(rng.uniform(np.log(5e7), np.log(5e9), n))
    tokens = np.exp(rng.uniform(np.log(1e9), np.log(5e11), n))
    loss = 1.69 + 406.4 * n_params ** -0.34 + 410.7 * tokens ** -0.28
    return [{"params": p, "tokens": d, "val_loss": float(v * np.exp(rng.normal(0, 0.002)))}
            for p, d, v in zip(n_params, tokens, loss, strict=True)]


def test_shipped_default_spec_equals_built_in() -> None:
    shipped = yaml.safe_load((REPO / "fits" / "default.yaml").read_text())
    assert shipped == to_dict(FitSpec())
    assert load_spec(REPO / "fits" / "default.yaml") == FitSpec()


def test_partial_spec_and_bad_key(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("parametric: {alpha: {init: [0.3]}}\nbootstrap: {n: 5}\n")
    loaded = load_spec(spec)
    assert loaded.parametric.alpha.init == (0.3,) and loaded.parametric.alpha.hi == 5.0
    spec.write_text("compute: {alfa: 1}\n")
    with pytest.raises(ConfigError, match="compute.alfa"):
        load_spec(spec)


def test_published_table_fits_with_only_params_tokens_loss(tmp_path: Path) -> None:
    write(tmp_path / "chinchilla", published(40))
    proc = cli(tmp_path / "chinchilla")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads((tmp_path / "chinchilla" / "fits.json").read_text())
    table = doc["tables"]["chinchilla"]
    assert any("loops = 1" in n for n in table["notes"])
    assert any("6 N D" in n for n in table["notes"])
    p = table["laws"]["parametric"]["all"]["params"]
    assert p["alpha"] == pytest.approx(0.34, rel=0.1) and p["beta"] == pytest.approx(0.28, rel=0.1)
    assert table["laws"]["compute"]["all"]["status"] == "ok"
    assert table["laws"]["isoflop"]["all"]["status"] == "skipped"
    assert (tmp_path / "chinchilla" / "report.md").exists()
    assert (tmp_path / "chinchilla" / "compute.png").exists()


def test_too_few_points_names_law_needed_and_had_and_fits_the_others(tmp_path: Path) -> None:
    write(tmp_path / "small", published(6))
    proc = cli(tmp_path / "small")
    assert proc.returncode == 0, proc.stderr
    assert "parametric law needs at least 8 usable runs, has 6" in proc.stderr
    laws = json.loads((tmp_path / "small" / "fits.json").read_text())["tables"]["small"]["laws"]
    # 6 runs for 3 parameters: fitted, and flagged unless the interval is tight
    assert laws["compute"]["all"]["status"] in ("ok", "flagged")
    assert all(f["message"] for f in laws["compute"]["all"]["flags"])
    assert laws["parametric"]["all"]["status"] == "skipped"


def test_all_diverged_exits_2_with_reason(tmp_path: Path) -> None:
    rows = [r | {"status": "diverged", "diverged_reason": "state norm 1e6"} for r in published(10)]
    write(tmp_path / "boom", rows)
    proc = cli(tmp_path / "boom")
    assert proc.returncode == 2
    assert "no usable runs (10 excluded: 10 diverged)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_nan_and_negative_losses_are_excluded_and_listed(tmp_path: Path) -> None:
    rows = published(14)
    rows[0]["val_loss"] = float("nan")
    rows[1]["val_loss"] = -1.0
    rows[2]["val_loss"] = ""
    rows[3] |= {"status": "failed", "diverged_reason": "CUDA OOM"}
    path = write(tmp_path / "messy", rows)
    table = load(path)
    reasons = {e["run_id"]: e["reason"] for e in table.excluded}
    assert reasons == {"row0": "val_loss is nan", "row1": "val_loss is not positive (-1)",
                       "row2": "val_loss missing or not a number ('')",
                       "row3": "failed: CUDA OOM"}
    proc = cli(tmp_path / "messy")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "messy" / "fits.json").read_text())["tables"]["messy"]
    assert doc["laws"]["parametric"]["all"]["n_points"] == 10
    assert {e["run_id"] for e in doc["laws"]["parametric"]["all"]["excluded"]} == set(reasons)
    assert "failed: CUDA OOM" in (tmp_path / "messy" / "report.md").read_text()


def test_missing_columns(tmp_path: Path) -> None:
    write(tmp_path / "noloss", [{"params": 1e8, "tokens": 1e9}] * 3)
    proc = cli(tmp_path / "noloss")
    assert proc.returncode == 2
    assert "has no 'val_loss' column" in proc.stderr and "noloss/runs.csv" in proc.stderr
    write(tmp_path / "nodata", [{"params": r["params"], "val_loss": r["val_loss"]}
                                for r in published(10)])
    proc = cli(tmp_path / "nodata")
    assert proc.returncode == 2
    assert "compute law needs the column(s) flops" in proc.stderr
    assert "parametric law needs the column(s) tokens" in proc.stderr
    assert "nothing could be fitted" in proc.stderr and "Traceback" not in proc.stderr


def test_unreadable_csv_alone_exits_2_beside_a_good_table_exits_0(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "runs.csv").write_bytes(b"\xff\xfe\x00garbage\x00\x81\n")
    proc = cli(tmp_path / "bad")
    assert proc.returncode == 2
    assert "bad/runs.csv: cannot be read as CSV" in proc.stderr and "Traceback" not in proc.stderr
    write(tmp_path / "good", published(12))
    proc = cli(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cannot be read as CSV" in proc.stderr
    assert (tmp_path / "good" / "fits.json").exists()


def test_missing_path_and_bad_spec_exit_2(tmp_path: Path) -> None:
    proc = cli(tmp_path / "nowhere")
    assert proc.returncode == 2 and "no such file or folder" in proc.stderr
    write(tmp_path / "ok", published(12))
    spec = tmp_path / "s.yaml"
    spec.write_text("solver: {delta: 0}\n")
    proc = cli(tmp_path / "ok", "--spec", spec)
    assert proc.returncode == 2 and "solver.delta" in proc.stderr and "Traceback" not in proc.stderr


def test_text_in_a_numeric_column_is_an_error_naming_the_cell(tmp_path: Path) -> None:
    rows = [{"run_id": f"r{i}", **r} for i, r in enumerate(published(10))]
    rows[3]["flops"] = "lots"
    for r in rows[:3] + rows[4:]:
        r["flops"] = 6 * r["params"] * r["tokens"]
    proc = cli(write(tmp_path / "bad", rows).parent)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "row 5 (run r3), column 'flops': 'lots' is not a number" in proc.stderr
