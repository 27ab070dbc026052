"""Robust inputs and outputs of ``parcae.fit``: duplicate and orphan rows, runs that did not
learn, curves alone in any unit, files replaced atomically, workers that die with the
command, an unreachable tracking server, and the batched bootstrap refit."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from parcae.fit import TableError, files, fit_path, load, load_spec
from parcae.fit.batch import refit
from parcae.fit.bootstrap import resample_groups
from parcae.fit.laws import LAWS
from parcae.fit.solver import fit as solve
from parcae.fit.spec import FitSpec
from parcae.fit.synthetic import sweep, write

FAST = {"bootstrap.n": 20, "test_time.bootstrap": 20, "bootstrap.workers": 1}


def _runs(n_budgets: int = 4) -> tuple[list[dict], list[dict]]:
    return sweep(np.random.default_rng(0), np.geomspace(1e18, 1e20, n_budgets), (1, 2, 4, 8),
                 1, 0.002, test_time=(1, 2, 4, 8, 16))


def test_duplicate_run_ids_error_or_keep_last(tmp_path: Path) -> None:
    runs, _ = _runs()
    path = write(tmp_path / "dup", runs + [dict(runs[0], val_loss=9.0)])
    with pytest.raises(TableError, match=re.escape(runs[0]["run_id"])):
        load(path)
    table = load(path, load_spec(None, {"runs.duplicates": "last"}))
    assert len(table.run_id) == len(runs)
    assert table.columns["val_loss"][list(table.run_id).index(runs[0]["run_id"])] == 9.0
    assert any("repeated run_id" in n and runs[0]["run_id"] in n for n in table.notes)


def test_orphan_curve_rows_ignored_with_a_note(tmp_path: Path) -> None:
    runs, curves = _runs()
    path = write(tmp_path / "orphan", runs, curves + [{"run_id": "ghost", "T": 1,
                                                       "val_loss": 3.0}])
    table = load(path)
    assert "ghost" not in set(table.test_time.run_id)
    assert any("not in runs.csv" in n and "ghost" in n for n in table.notes)
    assert {"run_id": "ghost", "T": "1", "reason": "run not in runs.csv"} in \
        table.test_time.excluded


def test_unlearned_and_collapsed_runs_excluded_unless_asked(tmp_path: Path) -> None:
    runs, _ = _runs()
    runs[0] |= {"learned": "false", "baseline_loss": 3.2}
    runs[1] |= {"status": "collapsed"}
    path = write(tmp_path / "learn", runs)
    reasons = {e["run_id"]: e["reason"] for e in load(path).excluded}
    assert reasons[runs[0]["run_id"]].startswith("not learned")
    assert reasons[runs[1]["run_id"]].startswith("collapsed")
    both = load_spec(None, {"runs.include_not_learned": True, "runs.include_collapsed": True})
    assert load(path, both).usable.all()


def test_test_time_csv_alone_with_accuracy_as_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "acc"
    folder.mkdir()
    rows = ["run_id,T,val_accuracy"]
    for run, z in (("a", 0.8), ("b", 0.6)):
        for t in range(1, 17):
            error = 0.1 + 0.6 * np.exp(-z * t) * np.exp(rng.normal(0, 0.002))
            rows.append(f"{run},{t},{100 * (1 - error):.5f}")
    (folder / "test_time.csv").write_text("\n".join(rows) + "\n")
    spec = load_spec(None, FAST | {"test_time.metric": "val_accuracy",
                                   "test_time.transform": "hundred_minus"})
    [outcome] = fit_path(folder, spec, say=lambda _: None)
    laws = outcome.result.laws
    assert laws["compute"]["all"]["status"] == "skipped"
    for run in ("a", "b"):
        record = laws["test_time"][run]
        assert record["status"] == "ok", record["flags"]
        assert record["params"]["L_inf"] == pytest.approx(10.0, rel=0.02)  # 100 - 90 %
        assert record["metric"] == "100 - val_accuracy"
    assert (folder / "fits.json").exists() and (folder / "bootstrap.npz").exists()


def test_files_are_replaced_never_truncated(tmp_path: Path) -> None:
    path = tmp_path / "fits.json"
    files.write_text(path, "old\n")

    def dies(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.write_with(path, dies)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["fits.json"]


def test_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    script = tmp_path / "pool.py"
    script.write_text(
        "import os, time\n"
        "from parcae.fit.bootstrap import Workers\n"
        "def pid(_):\n"
        "    time.sleep(0.2)\n"
        "    return os.getpid()\n"
        "if __name__ == '__main__':\n"
        "    with Workers(2) as pool:\n"
        "        print(*sorted(set(pool.map(pid, [0] * 8))), flush=True)\n"
        "        time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert workers and proc.pid not in workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers)
    finally:
        if proc.poll() is None:
            proc.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split()[2] == "Z")


def test_unreachable_tracking_server_fails_fast_and_files_are_written(tmp_path: Path) -> None:
    runs, curves = _runs()
    folder = tmp_path / "tracked"
    write(folder, runs, curves)
    (folder / "sweep.json").write_text(json.dumps(
        {"name": "tracked", "parent_run_id": "abc", "tracking_uri": "http://127.0.0.1:9"}))
    said: list[str] = []
    start = time.monotonic()
    fit_path(folder, load_spec(None, FAST), say=said.append)
    assert time.monotonic() - start < 60
    lines = [s for s in said if "cannot be reached" in s]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert (folder / "fits.json").stat().st_size > 0 and (folder / "report.md").exists()


def test_batched_refit_matches_lbfgs_on_resamples() -> None:
    law = LAWS["compute"]
    rng = np.random.default_rng(0)
    log_c = np.log(np.geomspace(1e17, 1e21, 16))
    log_y = np.log(1.7 + 2e3 * np.exp(log_c) ** -0.2) + rng.normal(0, 0.003, 16)
    x = log_c[None]
    lo, hi = np.array([np.log(1e-3 * 1.7), -np.inf, 0.0]), np.array([np.log(1.7), np.inf, 5.0])
    start = solve(law, x, log_y, np.array([[0.3, 8.0, 0.2]]), (lo, hi), FitSpec().solver).theta
    groups = np.arange(16)
    picks = [resample_groups(groups, np.random.default_rng([1, i])) for i in range(20)]
    weights = np.array([np.bincount(p, minlength=16) for p in picks], dtype=float)
    batch, done = refit(law, x, log_y, weights, start, (lo, hi), FitSpec().solver.delta)
    assert done.mean() > 0.9
    for p, theta, ok in zip(picks, batch, done, strict=True):
        if ok:
            one = solve(law, x[:, p], log_y[p], start[None], (lo, hi), FitSpec().solver).theta
            np.testing.assert_allclose(law.natural(theta)[[0, 2]], law.natural(one)[[0, 2]],
                                       rtol=1e-3)
